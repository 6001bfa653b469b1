"""`tuner search --resume` rebuilds a study from its file and the state saved when it started:
an edited file is refused, and a default that a later version of tuner changed keeps the value
the study started with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuner.errors import UserError
from tuner.search import state
from tuner.space import load_study

SPACE = """name: resumable
data: {source: synthetic}
model: {vocab_size: 512, context_length: 32, d_model: 32, num_layers: 1, num_heads: 2}
hparams:
  lr_max: {loguniform: [1.0e-4, 1.0e-2]}
budget: {total_iters: 200, eval_tokens: 5120}
search: {num_samples: 4}
"""


def saved_study(tmp_path: Path, text: str = SPACE) -> tuple[Path, Path]:
    """A study file and the folder of its saved state, as a started study leaves them."""
    space = tmp_path / "space.yaml"
    space.write_text(text)
    folder = tmp_path / "ray" / "resumable"
    state.save(folder, load_study(space), {})
    (folder / state.TUNE_STATE).write_bytes(b"")
    return space, folder


def rewrite_saved(folder: Path, section: str, key: str, value: object) -> None:
    path = folder / state.STATE_FILE
    saved = json.loads(path.read_text())
    saved["resolved"][section][key] = value
    path.write_text(json.dumps(saved))


def test_a_default_changed_since_the_study_started_is_kept(tmp_path: Path) -> None:
    """Studies started when checkpoints were logged for the best trial only resume as they were."""
    _, folder = saved_study(tmp_path)
    rewrite_saved(folder, "tracking", "log_checkpoints", "best")
    assert state.load(folder, None).tracking.log_checkpoints == "best"


def test_an_edited_study_file_is_refused(tmp_path: Path) -> None:
    space, folder = saved_study(tmp_path)
    space.write_text(SPACE.replace("1.0e-2]", "3.0e-2]"))
    with pytest.raises(UserError, match="changed since study 'resumable' started"):
        state.load(folder, None)


def test_a_setting_the_file_gives_is_not_taken_from_the_saved_state(tmp_path: Path) -> None:
    _, folder = saved_study(tmp_path, SPACE + "tracking: {log_checkpoints: completed}\n")
    rewrite_saved(folder, "tracking", "log_checkpoints", "best")
    with pytest.raises(UserError, match="changed since"):
        state.load(folder, None)
