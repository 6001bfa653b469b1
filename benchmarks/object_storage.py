"""What an object store under `--storage` costs a study against a local folder: the quickstart
run to its end on each (moto's S3 server on 127.0.0.1 standing in for the store), its wall time,
the bytes uploaded per trial, and the trials' training-thread seconds on checkpoints (per
checkpoint, and as a share of the trials' time).

    uv run python benchmarks/object_storage.py [--space search_spaces/quickstart.yaml]
        [--repeats 1]

The dataset is prepared once, before either run is timed. Bytes uploaded are the bodies of the
PUT and POST requests the server took (Tune's state, the checkpoints, the driver's own files,
Tune's result files).
The training-thread seconds are the trials' own `checkpoint_s` (their writes and Tune's copy or
upload of each, as the trial reports it), read from Tune's result.json of each trial. Prints a
markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TUNER = Path(sys.executable).with_name("tuner")
BUCKET = "bench"


class Counted:
    """A WSGI app that counts the request bodies of uploads (PUT, POST) to the app it wraps."""

    def __init__(self, app: Any) -> None:
        self.app, self.uploaded = app, 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] in ("PUT", "POST"):
            # pyarrow's S3 client streams a file's body in chunks, its size in this header
            size = environ.get("HTTP_X_AMZ_DECODED_CONTENT_LENGTH") or environ.get(
                "CONTENT_LENGTH")
            with self._lock:
                self.uploaded += int(size or 0)
        return self.app(environ, start_response)


def s3_server() -> tuple[str, Counted]:
    """moto's S3 server on 127.0.0.1 (a free port), with the bucket; its endpoint and counter."""
    import boto3
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    counted = Counted(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counted, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
    return endpoint, counted


def run(space: Path, storage: str, work: Path, env: dict[str, str], name: str) -> float:
    """`tuner search` of `space` as study `name` on `storage`, to its end: its wall seconds."""
    started = time.monotonic()
    proc = subprocess.run([str(TUNER), "search", "--space", str(space), "--name", name,
                           "--storage", storage, "--tracking-uri",
                           f"sqlite:///{work / 'mlflow.db'}"],
                          cwd=work, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.monotonic() - started


def trial_results(storage: str, name: str) -> list[list[dict[str, Any]]]:
    """Each trial's results (Tune's result.json), read where Tune keeps the study."""
    from pyarrow.fs import FileSelector

    from tuner.store.object_store import locate

    where = locate(storage)
    fs, root = (where.filesystem, where.root) if where.remote else (None, str(where.local))
    if fs is None:
        from pyarrow.fs import LocalFileSystem

        fs = LocalFileSystem()
    found = []
    for info in fs.get_file_info(FileSelector(f"{root}/{name}", recursive=True)):
        if info.base_name == "result.json":
            text = fs.open_input_stream(info.path).read().decode()
            found.append([json.loads(line) for line in text.splitlines() if line.strip()])
    return found


def figures(results: list[list[dict[str, Any]]]) -> dict[str, float]:
    """Per trial (its last result): checkpoint seconds, checkpoints, share of its time."""
    last = [rows[-1] for rows in results if rows]
    checkpoints = [sum(1 for r in rows if r.get("checkpoint_dir_name")) for rows in results]
    spent = sum(r.get("checkpoint_s", 0.0) for r in last)
    return {"trials": len(last), "checkpoints": sum(checkpoints),
            "checkpoint_s_each": spent / max(sum(checkpoints), 1),
            "checkpoint_share": spent / sum(r["trial_s"] for r in last)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "quickstart.yaml")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    endpoint, counted = s3_server()
    with tempfile.TemporaryDirectory(prefix="tuner-object-storage-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "AWS_ACCESS_KEY_ID": "bench",
               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": endpoint, "XDG_CACHE_HOME": str(work / "cache"),
               "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"}  # Tune's result.json of each trial
        env.pop("MLFLOW_TRACKING_URI", None)
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                               "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")})
        prepare = ("import sys; from tuner.space import load_study; from tuner.space.dataset_fit "
                   "import study_dataset; study_dataset(load_study(sys.argv[1]))")
        subprocess.run([sys.executable, "-c", prepare, str(args.space)],
                       cwd=work, env=env, check=True)  # prepared once, before the timing
        rows: dict[str, list[dict[str, float]]] = {"local folder": [], "S3 (moto)": []}
        for repeat in range(args.repeats):
            for kind, found_rows in rows.items():
                name = f"bench_{'local' if kind == 'local folder' else 's3'}_{repeat}"
                storage = str(work / "ray") if kind == "local folder" else f"s3://{BUCKET}/st"
                before = counted.uploaded
                wall = run(args.space, storage, work, env, name)
                found = figures(trial_results(storage, name))
                found.update(wall_s=wall, uploaded_mb_each=(counted.uploaded - before) / 1e6
                             / found["trials"])
                found_rows.append(found)
    print("| storage | wall s | trials | MB uploaded per trial | checkpoints | training-thread "
          "ms per checkpoint | share of trial time |")
    print("|---|---|---|---|---|---|---|")
    for kind, found in rows.items():
        def med(key: str, rows: list = found) -> float:
            return statistics.median(r[key] for r in rows)

        print(f"| {kind} | {med('wall_s'):.0f} | {med('trials'):.0f} | "
              f"{med('uploaded_mb_each'):.2f} | {med('checkpoints'):.0f} | "
              f"{1000 * med('checkpoint_s_each'):.1f} | {100 * med('checkpoint_share'):.2f}% |")


if __name__ == "__main__":
    main()
