"""Extending a study: `--resume --num-samples M` on a study of N < M samples runs M − N more.

Ray Tune's `Tuner.restore` cannot add trials (its search algorithm saves how many it creates and
stops there), so the resumed study's Tune state is given the larger count before Tune reads it:
the same Tuner then restores its searcher (Optuna's trials: TPE keeps what it learned), ASHA's
rungs (`recovery.StateBackup`), its trials and the recorder's MLflow parent, and goes on creating
trials. The count is saved with the study (`state.save`), and set again at each restore, so an
interrupted extension resumes as one.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.output import count
from tuner.search.state import state
from tuner.search.state.tune_state import SCHEDULER_STATE, TUNE_STATE_FILES, to_put_back

SEARCH_STATE = TUNE_STATE_FILES[1]  # Tune's search algorithm's: how many trials it creates


def extended(study: Any, num_samples: int | None, folder: Path) -> Any:
    """The resumed `study` with `num_samples` samples when that is more than it has (else the
    study as it is); UserError when it is fewer, or when the study cannot take more."""
    have = study.search.num_samples
    if num_samples is None or num_samples == have:
        return study
    if num_samples < have:
        raise UserError(f"--num-samples {num_samples}: study {study.name!r} has "
                        f"{count(have, 'sample')} already, and a study is extended, never cut; "
                        f"leave --num-samples out to resume it as it is")
    _check_extendable(study, num_samples, folder)
    return study.with_overrides(num_samples=num_samples)


def _check_extendable(study: Any, num_samples: int, folder: Path) -> None:
    """UserError when the study's scheduler, searcher or saved state cannot take more samples."""
    name, search, have = study.name, study.search, study.search.num_samples
    more = num_samples - have
    if search.scheduler == "hyperband":
        raise UserError(f"study {name!r} uses HyperBand, whose brackets Ray Tune does not save: "
                        "it can be neither resumed nor extended. Run the samples it lacks as a "
                        f"new study that builds on it: tuner search --space FILE --name NEW "
                        f"--num-samples {more} --warm-start {name}")
    if search.scheduler == "pbt":
        raise UserError(f"study {name!r} uses PBT, whose population is fixed as it starts: its "
                        "members train side by side and take over the better ones' weights, "
                        "and members added to it later would train with none of them. Start a "
                        f"new study with --num-samples {num_samples}")
    if search.algorithm == "grid":
        points = len(study.grid_points())
        if num_samples > points:
            nothing = "every point of it ran: there is nothing to add" if have == points else (
                f"it can be extended to {count(points, 'sample')} at most")
            raise UserError(f"--num-samples {num_samples}: study {name!r} searches a grid of "
                            f"{count(points, 'point')}, each run once; {nothing}")
    lacking = _lacking(study, folder)
    if lacking:
        raise UserError(f"study {name!r} was made by an older tuner, whose saved state lacks "
                        f"{lacking}: it can be resumed as it is, but not extended. Run the "
                        "samples it lacks as a new study that builds on it: tuner search --space "
                        f"FILE --name NEW --num-samples {more} --warm-start {name}")


SAVED_STATE = {"asha": "ASHA's rungs", "pasha": "PASHA's rungs", "median": "the median rule's "
               "results", "topk": "top-K's losses at its budget"}  # what tuner saves of each


def _lacking(study: Any, folder: Path) -> str | None:
    """What an extension needs that the study's saved state lacks (an older tuner's), if any:
    the searcher's count of trials, and ASHA's or the median rule's results, without which the
    new trials would be judged against empty rungs."""
    if not state.ran_trials(folder):
        return None  # it starts again from the beginning (lifecycle.run): nothing to extend
    names = {path.name for path in folder.iterdir()} | set(to_put_back(folder) or {})
    if not any(fnmatch(name, SEARCH_STATE) for name in names):
        return f"Ray Tune's search state ({SEARCH_STATE})"
    which = SAVED_STATE.get(study.search.scheduler)
    if which is not None and SCHEDULER_STATE not in names:
        return f"{which} ({SCHEDULER_STATE}), which its new trials would be judged against"
    return None


def set_trial_limit(folder: Path, trials: int) -> bool:
    """Make Tune's search state in the study's `folder` (the newest save, which a restore reads)
    create `trials` trials in all; whether it changed. Call with Ray importable, before Tune
    restores the study."""
    import ray.cloudpickle as cloudpickle

    saved = max(folder.glob(SEARCH_STATE), default=None)
    if saved is None:  # PBT's generator: its population is never extended
        return False
    search = cloudpickle.loads(saved.read_bytes())
    if search["total_samples"] == trials:
        return False
    # `finished`: Tune's mark of a whole experiment stopped early; more trials are asked for now
    search["total_samples"], search["finished"] = trials, False
    partial = saved.with_name(f".{saved.name}.partial")
    partial.write_bytes(cloudpickle.dumps(search))
    partial.replace(saved)  # a driver killed while writing leaves the last whole file
    return True
