"""`tuner search --resume` rebuilds a study from its file and the state saved when it started:
a study that would not resume as it started (its file edited, or a default a newer tuner changed)
is refused, naming each setting that differs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from tuner.errors import UserError
from tuner.search.state import state
from tuner.space import load_study

SPACE = """name: resumable
data: {source: synthetic}
model: {vocab_size: 512, context_length: 32, d_model: 32, num_layers: 1, num_heads: 2}
hparams:
  lr_max: {loguniform: [1.0e-4, 1.0e-2]}
  lr_min_ratio: 0.1
budget: {total_iters: 200, eval_tokens: 5120}
search: {num_samples: 4}
"""


def saved_study(tmp_path: Path, text: str = SPACE) -> tuple[Path, Path]:
    """A study file and the folder of its saved state, as a started study leaves them."""
    space = tmp_path / "space.yaml"
    space.write_text(text)
    folder = tmp_path / "ray" / "resumable"
    state.save(folder, load_study(space), {})
    (folder / state.TUNE_STATE).write_bytes(pickle.dumps({}))  # Tune writes its Tuner
    return space, folder


def rewrite_saved(folder: Path, section: str, key: str, value: object) -> None:
    path = folder / state.STATE_FILE
    saved = json.loads(path.read_text())
    saved["resolved"][section][key] = value
    path.write_text(json.dumps(saved))


def test_the_study_folder_keeping_the_store_credentials_is_the_owners_only(tmp_path: Path) -> None:
    """Its files (the state, Tune's pickles of the study) keep them, for --resume to reconnect."""
    _, folder = saved_study(tmp_path, SPACE + 'tracking: {uri: "postgresql://u:s3cret@db/m"}\n')
    assert "s3cret" in (folder / state.STATE_FILE).read_text()
    folder.chmod(0o755)  # as an older tuner left it
    with state.driven(folder):
        assert folder.stat().st_mode & 0o777 == 0o700


def test_a_default_changed_since_the_study_started_is_named(tmp_path: Path) -> None:
    """A study started when checkpoints were logged for the best trial only: refused, naming the
    setting, and resumed once the file writes the value it started with."""
    space, folder = saved_study(tmp_path)
    rewrite_saved(folder, "tracking", "log_checkpoints", "best")
    with pytest.raises(UserError) as refused:
        state.load(folder, None)
    assert 'tracking.log_checkpoints was "best", is "completed" now' in str(refused.value)
    space.write_text(SPACE + "tracking: {log_checkpoints: best}\n")
    assert state.load(folder, None).tracking.log_checkpoints == "best"


def test_a_changed_default_the_study_does_not_use_is_ignored(tmp_path: Path) -> None:
    """Momentum under AdamW, the PBT section under ASHA and lr_min beside lr_min_ratio cannot be
    given in the file, so a change of their defaults since the study started does not stop it;
    β2's does."""
    _, folder = saved_study(tmp_path)
    rewrite_saved(folder, "hparams", "momentum", 0.5)
    rewrite_saved(folder, "search", "pbt", {"quantile_fraction": 0.5})
    rewrite_saved(folder, "hparams", "lr_min", 0.5)  # the file gives lr_min_ratio instead
    assert state.load(folder, None).hparams.momentum != 0.5
    rewrite_saved(folder, "hparams", "beta2", 0.5)
    with pytest.raises(UserError) as refused:
        state.load(folder, None)
    assert "hparams.beta2 was 0.5" in str(refused.value) and "momentum" not in str(refused.value)


def test_a_study_saved_before_its_home_paths_were_expanded_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older tuner saved `cache_dir: ~/cache` as written; this one reads it as $HOME/cache,
    which is no edit of the file."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cached = SPACE.replace("data: {source: synthetic}", "data: {source: synthetic, cache_dir: ~/c}")
    _, folder = saved_study(tmp_path, cached)
    rewrite_saved(folder, "data", "cache_dir", "~/c")
    assert state.load(folder, None).data.cache_dir == tmp_path / "c"


def test_a_copy_of_a_nameless_study_file_resumes_the_study_named(tmp_path: Path) -> None:
    """A file without a name gives a study its stem; `--resume --space COPY --name NAME` resumes
    NAME, not a study named after the copy (its name and experiment then "differed")."""
    started = tmp_path / "istudy.yaml"
    started.write_text(SPACE.removeprefix("name: resumable\n"))
    folder = tmp_path / "ray" / "istudy"
    state.save(folder, load_study(started), {})
    (folder / state.TUNE_STATE).write_bytes(pickle.dumps({}))  # Tune writes its Tuner
    copy = tmp_path / "copy.yaml"
    copy.write_text(started.read_text())
    study = state.load(folder, copy)
    assert study.name == "istudy" and study.tracking.experiment == "istudy"


def test_an_edited_study_file_is_refused(tmp_path: Path) -> None:
    space, folder = saved_study(tmp_path)
    space.write_text(SPACE.replace("1.0e-2]", "3.0e-2]"))
    with pytest.raises(UserError) as refused:
        state.load(folder, None)
    assert "hparams.lr_max.loguniform was [0.0001, 0.01], is [0.0001, 0.03] now" in str(
        refused.value)


def test_every_difference_is_counted_and_a_retired_setting_named(tmp_path: Path) -> None:
    _, folder = saved_study(tmp_path)
    for key in ("retired", "a", "b", "c", "d", "e"):
        rewrite_saved(folder, "tracking", key, None)
    with pytest.raises(UserError) as refused:
        state.load(folder, None)
    assert "tracking.retired was null, is no longer a setting;" in str(refused.value)
    assert "(and 1 more)" in str(refused.value)


@pytest.mark.parametrize("then", ["warmup_fraction: {uniform: [0.0, 0.2]}", "warmup_fraction: 0.1"])
def test_a_relative_form_swapped_for_its_twin_is_refused(tmp_path: Path, then: str) -> None:
    """The file gave warmup_fraction when the study started and gives warmup_iters now: the
    warmup changed, though warmup_iters is at the value the study resolved it to."""
    space, folder = saved_study(tmp_path, SPACE.replace("  lr_min_ratio: 0.1\n",
                                                        f"  lr_min_ratio: 0.1\n  {then}\n"))
    space.write_text(SPACE.replace("  lr_min_ratio: 0.1\n", "  lr_min_ratio: 0.1\n"
                                   "  warmup_iters: 0\n"))
    with pytest.raises(UserError, match="hparams.warmup_fraction was"):
        state.load(folder, None)
    if "uniform" in then:  # a state saved before the given forms were recorded
        saved = json.loads((folder / state.STATE_FILE).read_text())
        del saved["relative_forms"]
        (folder / state.STATE_FILE).write_text(json.dumps(saved))
        with pytest.raises(UserError, match="hparams.warmup_fraction was"):
            state.load(folder, None)


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00garbage", "not readable JSON"), (b"[1]", "not a study state"),
    (b"{}", "not a study state"),
    (b'{"space": "s.yaml", "overrides": {"colour": 1}, "resolved": {}}',
     "its overrides do not fit this tuner"),
])
def test_a_damaged_state_file_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    space, folder = saved_study(tmp_path)
    (folder / state.STATE_FILE).write_bytes(content.replace(b"s.yaml", str(space).encode()))
    with pytest.raises(UserError, match=f"{state.STATE_FILE}: {message}"):
        state.load(folder, None)

