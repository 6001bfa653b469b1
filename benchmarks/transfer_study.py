"""Does the best α carry across widths, measured as transfer studies? Run
search_spaces/transfer.yaml (μP), the same study under SP and under μP with the RMSNorm gains
frozen, the same α grid at every width, and print each width's best α and every α's val_loss
for docs/benchmarks.md.

    uv run python benchmarks/transfer_study.py [--out /tmp/transfer-bench] [--arms NAME ...]

Each arm is one `tuner search` (MLflow in OUT/mlflow.db, Ray's files in OUT/ray_results); then
`tuner report` writes OUT/reports/<study>/transfer.png. The tables cover every arm in the store:
one run with --arms adds to those an earlier run left in OUT.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tuner.inspect.best import top_trials
from tuner.space.params import shown_value
from tuner.store.connect import connect_existing

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "transfer.yaml"
ARMS = {"transfer-mup": {"parametrization": "mup", "mup_norm_gains": "trainable"},
        "transfer-sp": {"parametrization": "sp"},
        "transfer-mup-frozen": {"parametrization": "mup", "mup_norm_gains": "frozen"}}


def run(*args: str, cwd: Path) -> float:
    """Run a `tuner` command in `cwd`; its wall time in seconds."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, check=True)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="transfer-")))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    space = yaml.safe_load(SPACE.read_text())
    space["data"]["input"] = str(ROOT / space["data"]["input"])
    uri = f"sqlite:///{out / 'mlflow.db'}"
    for name in args.arms:
        space["model"] = {k: v for k, v in space["model"].items()
                          if k not in ("parametrization", "mup_norm_gains")} | ARMS[name]
        study = out / f"{name}.yaml"
        study.write_text(yaml.safe_dump(space, allow_unicode=True, sort_keys=False))
        seconds = run("search", "--space", str(study), "--name", name, "--tracking-uri", uri,
                      cwd=out)
        run("report", "--study", name, "--tracking-uri", uri, cwd=out)
        print(f"{name}: {seconds:.0f} s")
    client = connect_existing(uri)
    with tempfile.TemporaryDirectory() as tmp:
        found = {name: top_trials(client, name, 0, Path(tmp))[1] for name in ARMS
                 if client.get_experiment_by_name(name)}
    sizes = next(iter(found.values())).sizes
    print("| d_model | " + " | ".join(f"{a}: best α | its val_loss" for a in found) + " |")
    print("|---|" + "---|---|" * len(found))
    for size in sizes:
        cells = []
        for transfer in found.values():
            best = transfer.best(size)
            cells += [shown_value("lr_max", best.values["lr_max"]), f"{best.loss:.4f}"] if best \
                else ["–", "–"]
        print(f"| {size} | " + " | ".join(cells) + " |")
    for name, transfer in found.items():
        print(f"\n{name}: {transfer.verdict()}\n| α | " + " | ".join(map(str, sizes)) + " |")
        print("|---|" + "---|" * len(sizes))
        for values in transfer.samples():
            losses = [transfer.loss(size, values) for size in sizes]
            print(f"| {shown_value('lr_max', values['lr_max'])} | "
                  + " | ".join("–" if v is None else f"{v:.4f}" for v in losses) + " |")


if __name__ == "__main__":
    main()
