"""A fit as JSON (scaling.json) and as a run of MLflow experiment `scaling`: tagged role `scale`
and its name, with the studies, margin and target as params, the exponents, intervals and
prediction as metrics, and scaling.png and scaling.json as artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.scale.fit import FITTED, Interval, Scaling
from tuner.store import runs
from tuner.store.layout import (
    DATASET_TAG,
    NOTE_TAG,
    ROLE_TAG,
    SCALE_EXPERIMENT,
    SCALE_TAG,
)
from tuner.store.write import log_metrics, log_params_tags

SCALING_JSON, SCALING_PNG = "scaling.json", "scaling.png"


def rounded(name: str, value: float) -> float | int:
    """A predicted value as printed and exported: α to four significant digits, B whole."""
    return max(1, round(value)) if name == "batch_size" else float(f"{value:.4g}")


def fit_json(fit: Scaling, name: str) -> dict[str, Any]:
    """The fit as scaling.json holds it: the studies, each law, the target and its prediction."""
    def interval(i: Interval) -> list[float]:
        return [i.lo, i.hi]

    largest = max(fit.studies, key=lambda s: s.compute)
    return {
        "name": name,
        "margin": fit.margin,
        "studies": [{"name": s.name, "params": s.params, "tokens": s.tokens,
                     "compute": s.compute, "dataset_sha256": s.dataset,
                     "searched": sorted(s.searched), "trials": len(s.trials),
                     "near_optimal": [t.run_id for t in fit.near[s.name]],
                     "best_val_loss": s.best.val_loss, "best_run_id": s.best.run_id}
                    for s in fit.studies],
        "laws": {n: None if law is None else {
            "symbol": FITTED[n], "coefficient": law.coefficient,
            "exponent": law.exponent.value, "exponent_interval": interval(law.exponent),
            "points": law.points} for n, law in fit.laws.items()},
        "target": None if fit.target is None else {
            "params": fit.target[0], "tokens": fit.target[1], "compute": fit.target_compute},
        "prediction": {n: {"value": p.value, "interval": interval(p),
                           "exported": rounded(n, p.value)}
                       for n, p in fit.prediction().items()} or None,
        "export": {"study": largest.source or largest.name, "run_id": largest.best.run_id},
    }


def log_fit(client: Any, data: dict[str, Any], files: list[Path]) -> str:
    """Record the fit (`fit_json`'s) as a new run of experiment `scaling`; its run id."""
    name = data["name"]
    tags = {ROLE_TAG: "scale", SCALE_TAG: name, NOTE_TAG: fit_note(data),
            DATASET_TAG: data["studies"][0]["dataset_sha256"] or ""}
    run_id = client.create_run(runs.experiment_id(client, SCALE_EXPERIMENT), run_name=name,
                               tags=tags).info.run_id
    target = data["target"] or {}
    log_params_tags(client, run_id, {"studies": ",".join(s["name"] for s in data["studies"]),
                                     "margin": data["margin"],
                                     "target_params": target.get("params"),
                                     "target_tokens": target.get("tokens")}, {})
    metrics = {}
    for n, law in data["laws"].items():
        if law is not None:
            metrics |= {f"{n}/exponent": law["exponent"], f"{n}/coefficient": law["coefficient"],
                        f"{n}/exponent_lo": law["exponent_interval"][0],
                        f"{n}/exponent_hi": law["exponent_interval"][1]}
    for n, p in (data["prediction"] or {}).items():
        metrics |= {f"{n}/predicted": p["exported"], f"{n}/predicted_lo": p["interval"][0],
                    f"{n}/predicted_hi": p["interval"][1]}
    log_metrics(client, run_id, metrics, 0)
    for path in files:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def fit_note(data: dict[str, Any]) -> str:
    """The run's description: the exponents and the prediction, one line each."""
    lines = [f"Scaling fit of {', '.join(s['name'] for s in data['studies'])} "
             f"(near-optimal: within {data['margin']:.2%} of each study's best val_loss)", ""]
    for n, law in data["laws"].items():
        lines.append(f"- {FITTED[n]}: not searched" if law is None else
                     f"- {FITTED[n]}* = {law['coefficient']:.4g}·C^{law['exponent']:.4f} "
                     f"(exponent 95% interval [{law['exponent_interval'][0]:.4f}, "
                     f"{law['exponent_interval'][1]:.4f}])")
    if data["prediction"]:
        target = data["target"]
        lines += ["", f"At N = {target['params']:,}, D = {target['tokens']:,} "
                  f"(C = {target['compute']:.3g} FLOPs): " + ", ".join(
                      f"{FITTED[n]} = {p['exported']}" for n, p in data["prediction"].items())]
    return "\n".join(lines)


def read_fit(client: Any, run: Any, workdir: Path) -> dict[str, Any]:
    """The scaling.json of a fit's run."""
    return runs.json_artifact(client, run, SCALING_JSON, workdir)
