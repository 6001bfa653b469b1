"""The study's own state beside Tune's (STORAGE/NAME): what `--resume` needs to rebuild it."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tuner.errors import UserError

STATE_FILE = "tuner_study.json"
TUNE_STATE = "tuner.pkl"  # written by Tune when the study's Tuner is created
LOCK_FILE = "driver.lock"  # locked by the driver running the study (the OS unlocks it on death)
SPACE_COPY = "space.yaml"  # a study given as a mapping (tuner.search from Python), for --resume


def started(folder: Path) -> bool:
    """Whether a study ran in `folder` (Tune created its state there)."""
    return (folder / TUNE_STATE).is_file()


def ran_trials(folder: Path) -> bool:
    """Whether Tune started any trial of the study in `folder` (each gets a trial_ID folder)."""
    return any(path.is_dir() for path in folder.glob("trial_*"))


@contextmanager
def driven(folder: Path) -> Iterator[None]:
    """Hold the study in `folder` for this driver; UserError while another driver runs it (two
    drivers would run its trials twice into the same MLflow runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    # Owner-only: its files (this state, Tune's pickles of the study) keep the tracking URI's
    # credentials, which --resume reconnects with.
    folder.chmod(0o700)
    with open(folder / LOCK_FILE, "a+") as lock:
        _lock_or_refuse(lock, folder)
        lock.truncate(0)
        lock.write(f"{os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def check_not_driven(folder: Path) -> None:
    """UserError while another driver runs the study in `folder`: checked before Ray starts,
    then held by `driven`."""
    try:
        lock = open(folder / LOCK_FILE)  # noqa: SIM115 - closed below, which unlocks it
    except OSError:  # no study there (yet), or not readable: what loads the study says so
        return
    with lock:
        _lock_or_refuse(lock, folder)


def _lock_or_refuse(lock: TextIO, folder: Path) -> None:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise UserError(f"study {folder.name!r} is running: another `tuner search` (pid "
                        f"{lock.read().strip() or '?'}) drives it; stop that one first, or "
                        "let it finish") from None


def save(folder: Path, study: Any, overrides: dict[str, Any]) -> None:
    """Record the space file (a study given from Python: its text, written to SPACE_COPY), the
    command-line overrides and the resolved study."""
    folder.mkdir(parents=True, exist_ok=True)
    space = Path(study.source_path).resolve() if study.source_path else folder / SPACE_COPY
    if study.source_path is None:
        space.write_text(study.source_text, encoding="utf-8")
    state = {"space": str(space),
             "overrides": {**overrides, "tracking_uri": study.tracking.uri},
             "resolved": study.resolved(), "relative_forms": _given_forms(study)}
    path, partial = folder / STATE_FILE, folder / f".{STATE_FILE}.partial"
    partial.write_text(json.dumps(state, indent=2, default=str))
    partial.replace(path)  # a driver killed while writing leaves the last whole file


def saved_overrides(folder: Path) -> dict[str, Any]:
    """The overrides the study in `folder` was saved with (after `load` has checked its state)."""
    return _read_state(folder / STATE_FILE)["overrides"]


def load(folder: Path, space: Path | Any | None) -> Any:
    """The study as it started, rebuilt from its space file (or `space`: a file, or a study
    loaded already): every setting must be as it was."""
    from tuner.search.state.tune_state import whole
    from tuner.space import Study, checks, load_study

    path, tuner_state = folder / STATE_FILE, folder / TUNE_STATE
    lost = None
    if started(folder) and not path.is_file():
        lost = f"{path}: missing (it records the study's space file and settings)"
    elif path.is_file() and ran_trials(folder) and not started(folder):
        lost = f"{tuner_state}: missing (Tune writes it as the study starts)"
    elif started(folder) and not whole(tuner_state):
        lost = f"{tuner_state}: cut short"
    if lost:
        raise UserError(f"{lost}; the study cannot be resumed without it: put it back, or start "
                        f"a new study with another --name (--warm-start {folder.name} builds on "
                        "this one's finished trials)")
    if not (path.is_file() and started(folder)):
        there = sorted(f.parent.name for f in folder.parent.glob(f"*/{STATE_FILE}")
                       if started(f.parent))
        raise UserError(f"no study {folder.name!r} to resume in {folder.parent} (studies there: "
                        f"{', '.join(there) or 'none'}); pass the --storage it ran with")
    state = _read_state(path)
    space = space or state["space"]
    try:
        # a file without a name of its own takes the study's (not its stem: another copy's)
        given = space if isinstance(space, Study) else load_study(
            space, state["overrides"].get("name", folder.name))
        study = given.with_overrides(**state["overrides"])
    except TypeError as err:  # an override this tuner does not know
        raise UserError(f"{path}: its overrides do not fit this tuner ({err})") from None
    unused = checks.unused(study) - _twins_given_then(study, state)  # the file may not give
    changed = {where: values for where, values in _differences(
        json.loads(json.dumps(study.resolved(), default=str)), _home_expanded(state["resolved"])
    ).items() if where[:2] not in unused}
    if changed:
        shown = "; ".join(_change(where, *values) for where, values in list(changed.items())[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise UserError(f"study {folder.name!r} would not resume as it started: {shown}{more}. "
                        f"Restore {given.source_path or 'the study given'} if it was edited. If "
                        "not, this tuner's defaults differ from those the study started with: "
                        "give the first values in the file "
                        "where it takes them, or finish the study with the tuner that started it, "
                        "or start a new study with another --name")
    return study


def _read_state(path: Path) -> dict[str, Any]:
    """The saved state; UserError naming the file when it is damaged."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not readable JSON ({err}); the study cannot be resumed from "
                        "it") from None
    kinds = {"space": str, "overrides": dict, "resolved": dict}
    if not isinstance(state, dict) or any(not isinstance(state.get(k), kind)
                                          for k, kind in kinds.items()):
        raise UserError(f"{path}: not a study state (it needs space, overrides and resolved); "
                        "the study cannot be resumed from it")
    return state


def _home_expanded(resolved: dict[str, Any]) -> dict[str, Any]:
    """A study resolved before its data paths' ~ was expanded, as it resolves now."""
    from tuner.space.sections import DATA_PATHS

    data = resolved.get("data")
    if not isinstance(data, dict):
        return resolved
    return {**resolved, "data": {key: os.path.expanduser(v) if key in DATA_PATHS and isinstance(
        v, str) else v for key, v in data.items()}}


def _given_forms(study: Any) -> list[str]:
    """Which of each relative pair (warmup_iters or warmup_fraction, ...) the file gives."""
    from model.config import RELATIVE_FORMS

    given = study.hparams.model_fields_set
    return sorted(name for pair in RELATIVE_FORMS.items() for name in pair if name in given)


def _twins_given_then(study: Any, state: dict[str, Any]) -> set[tuple[str, str]]:
    """The parameters of a relative pair the study started with but the file now leaves to the
    other: those must still compare. A state saved before the forms were recorded shows it for a
    searched one only."""
    from model.config import RELATIVE_FORMS

    now = set(_given_forms(study))
    then = state.get("relative_forms")
    pairs = [*RELATIVE_FORMS.items(), *((n, f) for f, n in RELATIVE_FORMS.items())]
    hparams = state["resolved"].get("hparams", {})
    return {("hparams", one) for one, other in pairs if other in now and one not in now and (
        one in then if then is not None else isinstance(hparams.get(one), dict))}


_GONE = object()  # a setting this version of tuner no longer has


def _change(where: tuple[str, ...], was: Any, now: Any) -> str:
    gone = now is _GONE
    return (f"{'.'.join(where)} was {json.dumps(was)}, "
            + ("is no longer a setting" if gone else f"is {json.dumps(now)} now"))


def _differences(now: Any, saved: Any, where: tuple[str, ...] = ()
                 ) -> dict[tuple[str, ...], tuple[Any, Any]]:
    """Path → (saved, now) of every setting whose value differs (settings new since, aside)."""
    if isinstance(now, dict) and isinstance(saved, dict):
        found: dict[tuple[str, ...], tuple[Any, Any]] = {}
        for key, value in saved.items():
            found |= _differences(now.get(key, _GONE), value, (*where, key))
        return found
    return {} if now == saved else {where: (saved, now)}
