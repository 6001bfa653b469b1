"""What a study ran with: the code's git commit, package versions and the dataset's identity."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("tuner", "torch", "numpy", "ray", "optuna", "mlflow", "pydantic")
_REPO = Path(__file__).resolve().parents[2]


def git_commit(repo: Path = _REPO) -> str:
    """HEAD's commit, with '-dirty' when tracked files differ from it; 'unknown' outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a trial's result depends on."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


PREPARED_WHERE = ("created", "inputs", "tokenizer")  # meta.json's when and from which paths


def dataset_sha256(data_dir: Path) -> str:
    """One hash of the dataset's token files and meta.json but for when and from which paths it
    was prepared (the tokenizer and inputs count by their sha256 there): a folder prepared again
    from the same inputs, anywhere, hashes the same."""
    return dataset_digests(data_dir)[0]


def dataset_digests(data_dir: Path) -> tuple[str, str]:
    """`dataset_sha256`, and the hash of tuner versions before it (meta.json whole), which the
    runs they recorded carry."""
    digests = hashlib.sha256(), hashlib.sha256()
    for name in ("meta.json", "train.npy", "valid.npy"):
        path = data_dir / name
        if not path.is_file():
            continue
        for digest in digests:
            digest.update(name.encode())
        if name == "meta.json":
            raw = path.read_bytes()
            digests[0].update(_content(raw))
            digests[1].update(raw)
            continue
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                for digest in digests:
                    digest.update(chunk)
    return digests[0].hexdigest(), digests[1].hexdigest()


def _content(meta_json: bytes) -> bytes:
    """meta.json without when and where it was prepared, in one canonical form."""
    try:
        meta = json.loads(meta_json)
    except ValueError:
        return meta_json
    if not isinstance(meta, dict):
        return meta_json
    kept = {k: v for k, v in meta.items() if k not in PREPARED_WHERE}
    return json.dumps(kept, sort_keys=True).encode()


def provenance(data_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything the MLflow records name about where a study's numbers came from."""
    return {"git_commit": git_commit(), "versions": package_versions(),
            "dataset_meta": json.loads(json.dumps(meta)),
            "dataset_sha256": dataset_sha256(data_dir),
            "data_dir": str(data_dir)}
