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


def dataset_sha256(data_dir: Path) -> str:
    """One hash of the dataset's token files and meta.json (the tokenizer is named by meta.json)."""
    digest = hashlib.sha256()
    for name in ("meta.json", "train.npy", "valid.npy"):
        path = data_dir / name
        if path.is_file():
            digest.update(name.encode())
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def provenance(data_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything the MLflow records name about where a study's numbers came from."""
    return {"git_commit": git_commit(), "versions": package_versions(),
            "dataset_meta": json.loads(json.dumps(meta)),
            "dataset_sha256": dataset_sha256(data_dir),
            "data_dir": str(data_dir)}
