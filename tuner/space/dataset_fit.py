"""Whether a study's models fit its dataset folder, checked before any trial starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.config import ConfigError
from model.token_files import check_context, check_vocab
from tuner.datasets import check_dataset, prepare_dataset
from tuner.space.convert import span
from tuner.space.loader import located


def check_study_dataset(study: Any, data_dir: Path) -> dict:
    """`check_dataset`, then a SpaceError at the setting's line when no trial's model fits it
    (each would fail): the trainer's own checks, on the largest vocabulary and the shortest
    context the study can sample. The folder's meta.json."""
    meta = check_dataset(data_dir)
    try:
        check_vocab(meta, int(span(study, "vocab_size")[1]), data_dir / "meta.json")
        for split in ("train", "valid"):
            check_context(meta[f"{split}_tokens"], int(span(study, "context_length")[0]),
                          data_dir / f"{split}.npy")
    except ConfigError as err:  # told at the setting's line in the study file
        raise located(study, err) from None
    return meta


def study_dataset(study: Any) -> tuple[Path, dict[str, Any]]:
    """The dataset folder (data.path, or prepared now from data.source) and its meta.json."""
    if study.data.path:
        data_dir = Path(study.data.path).expanduser().resolve()
    else:
        data_dir = Path(prepare_dataset(**study.data.prepare_kwargs())).resolve()
    return data_dir, check_study_dataset(study, data_dir)
