"""The checks of a study's inputs before Ray starts: each problem is one UserError (exit code 2)
that says what to fix."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuner.errors import UserError


def check_kept_settings(study: Any, overrides: dict[str, Any]) -> None:
    """UserError naming each option a resumed study is given with another value than it started
    with; the same value (the interrupted command retyped) is accepted."""
    import json

    from tuner.space.schema import OVERRIDES

    changed = []
    for key, value in overrides.items():
        if key == "name":  # it named the study
            continue
        section, field = OVERRIDES[key]
        was = getattr(getattr(study, section), field)
        if value != was:
            changed.append(f"--{key.replace('_', '-')} was {json.dumps(was)}, is "
                           f"{json.dumps(value)} now")
    if changed:
        raise UserError(f"a resumed study keeps the settings it started with (its searcher's "
                        f"state depends on them): {'; '.join(changed)}. Retype the values it "
                        "started with, or leave the options out; to build on it with other "
                        f"settings, start a new study with --warm-start {study.name}")


def check_same_inputs(parent: Any, made_of: dict[str, Any], data_dir: Path) -> str | None:
    """A resumed study trains on the data it started with (UserError otherwise); other code is
    only warned of (returned) and recorded (tuner.git_commit_resumed)."""
    from tuner.search.record.provenance import dataset_digests

    started_on = parent.data.tags.get("tuner.dataset_sha256")
    # an older tuner recorded the hash of meta.json whole: only then is the folder hashed again
    same = (not started_on or started_on == made_of["dataset_sha256"]
            or started_on in dataset_digests(data_dir))
    if not same:
        raise UserError(f"{data_dir}: the dataset changed since study {parent.info.run_name!r} "
                        f"started (sha256 {made_of['dataset_sha256'][:12]}…, it recorded "
                        f"{started_on[:12]}…): put that dataset back, or start a new study")
    started_with = parent.data.tags.get("tuner.git_commit")
    if started_with and started_with != made_of["git_commit"]:
        return (f"the code is at {made_of['git_commit']}, the study started at {started_with}: "
                "the trials it starts from now run this code")
    return None


def check_name_free(client: Any, study: Any) -> None:
    """UserError when another experiment of the store holds a study of this name: `tuner best`,
    `report` and `replay --study` find a study by its name alone."""
    from tuner.store.runs import study_parents

    taken = study_parents(client, study.name)
    if taken:
        experiment = client.get_experiment(taken[0].info.experiment_id).name
        raise UserError(f"MLflow experiment {experiment!r} at {study.tracking.uri} already holds "
                        f"a study {study.name!r} (the tuner's commands find a study by its name): "
                        "pick another --name")


def check_local_resources(study: Any, warn: Callable[[str], None]) -> None:
    """UserError when a trial needs a GPU where torch sees none, more CPUs or GPUs than this
    machine has, or more memory than it will have (`warn`: some sampled sizes cannot fit):
    before a store or a corpus is made (`capacity_shortage` checks the local Ray's own count
    again once it has started)."""
    need, gpus = study.resources.gpus_per_trial, 0
    if need > 0:
        import torch

        gpus = torch.cuda.device_count()  # the visible ones (CUDA_VISIBLE_DEVICES), as Ray's
        if gpus == 0:
            why = "is a CPU build" if torch.version.cuda is None else "sees no GPU on this machine"
            raise UserError(f"resources.gpus_per_trial: a trial needs {need:g} GPU, but torch "
                            f"{why}; to train on the CPU, set device: cpu and gpus_per_trial: 0")
    if "RAY_OVERRIDE_RESOURCES" in os.environ:  # Ray counts what it says instead
        return
    from ray._private.utils import get_num_cpus  # cgroup limits included, as Ray counts

    from tuner.search.faults.memory_fit import check_memory
    from tuner.search.run.runner import shortage

    cpus = float(get_num_cpus())
    why = shortage(study.resources, [{"CPU": cpus, "GPU": float(gpus)}], None)
    if why:
        raise UserError(why)
    check_memory(study, cpus, warn)


def check_storage(storage: Path) -> None:
    """UserError unless `storage` is, or can be made as, a folder this user can write to."""
    existing = next(folder for folder in (storage, *storage.parents) if folder.exists())
    try:  # made and removed: permissions alone pass root, even in /proc
        os.rmdir(tempfile.mkdtemp(prefix=".tuner-probe-", dir=existing))
    except OSError:
        raise UserError(f"--storage {storage}: {existing} is not a folder this user can write "
                        "to") from None
