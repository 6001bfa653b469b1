"""Killed studies resumed, damaged state refused (search/state/recovery.py, tune_state.py,
state.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from studies import (
    ENV,
    _assert_stopped_by,
    _assert_tokens_counted_once,
    _cut_short_as_tune_copies_it,
    _descendants,
    _tokens,
    _wait_until,
    fresh_store,
    mlflow_runs,
    resume_to_the_end,
    run_tuner,
    sigkill_driver,
    start_search,
    tune_trials,
    write_space,
)


@pytest.mark.slow
def test_a_trial_the_os_kills_past_its_retries_fails_unscored(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """With no retries left, Tune fails a trial whose process was killed: its run is failed in
    the process, which its searcher was never told a value of, so a warm start leaves it out.
    A resume does not run it again, and MLflow logs no checkpoint of it: none is kept."""
    from tuner.search.searchers import history

    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "lost", dataset, budget={"tokens": 245760, "eval_interval": 20},
                        hparams={"lr_max": {"loguniform": [1e-3, 1e-2]}},
                        search={"algorithm": "tpe", "scheduler": "none", "num_samples": 1,
                                "max_failures": 0})
    driver = start_search(space, uri, tmp_path / "ray", tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        # the third evaluation: the first two checkpoints are registered
        _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) >= 61440,
                    study="lost")
        for pid, cmd in _descendants(driver.pid):
            if cmd.startswith("ray::ImplicitFunc"):
                os.kill(pid, signal.SIGKILL)
        assert driver.wait(timeout=120) == 1  # no trial to replay
    finally:
        driver.kill()
    assert not list((tmp_path / "ray" / "lost").glob("*/checkpoint_*"))
    _, parent, [run] = mlflow_runs(uri, "lost")
    assert (run.info.status, run.data.tags["tuner.status"]) == ("FAILED", "failed")
    assert run.data.tags["tuner.failed_in"] == "process"
    assert parent.data.metrics["study/trials_failed"] == 1
    assert history.earlier_study("lost", uri)[1] == []


@pytest.mark.slow
def test_os_kill_retries_and_driver_sigkill_resumes(tmp_path: Path, dataset: Path,
                                                    mlflow_store_template: Path) -> None:
    """A trial process killed by the OS is retried from its checkpoint; a study whose driver is
    killed with SIGKILL resumes with the same runs, rerunning nothing that had finished, even when
    the kill cut Tune's state short. Its local Ray listens on 127.0.0.1 only."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "killed", dataset,
                        hparams={"lr_max": {"loguniform": [1e-3, 1e-2]}},
                        budget={"tokens": 122880, "eval_interval": 20},
                        # a checkpoint at each evaluation: Tune's named ones are what it repairs
                        search={"algorithm": "tpe", "scheduler": "none", "num_samples": 6,
                                "checkpoint_interval_s": 0})
    storage = tmp_path / "ray"
    driver = start_search(space, uri, storage, tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) >= 20480)
        local_ray = _descendants(driver.pid)
        listening = _listen_addresses({driver.pid, *(pid for pid, _ in local_ray)})
        assert listening and listening <= LOOPBACK, listening  # servers bind 127.0.0.1 only
        workers = [pid for pid, cmd in local_ray if cmd.startswith("ray::ImplicitFunc")]
        assert workers
        for pid in workers:  # what the OS's OOM killer would do
            os.kill(pid, signal.SIGKILL)
        _wait_until(uri, driver, _killable_with_a_trial_to_resume(storage / "killed", 122880,
                                                                  10240))
    finally:
        sigkill_driver(driver)
    client, _, before = mlflow_runs(uri, "killed")
    finished_before = {r.info.run_id: r for r in before if r.info.status == "FINISHED"}
    assert finished_before and len(finished_before) < 6
    retried = [r for r in before if r.data.tags.get("tuner.retries") == "1"]
    assert len(retried) == len(workers)
    unfinished = max((r for r in before if r.info.status == "RUNNING"),
                     key=lambda r: _tokens(client, r))
    trial_dir = storage / "killed" / f"trial_{unfinished.data.tags['tuner.trial_id']}"
    _refused_with_no_whole_checkpoint(trial_dir, uri, tmp_path)
    _lose_named_checkpoint(trial_dir)
    # A driver killed inside a trial's end leaves its status tag written and its run RUNNING.
    client.set_tag(unfinished.info.run_id, "tuner.status", "completed")
    _cut_short_as_tune_copies_it(storage / "killed")

    proc = run_tuner(["search", "--resume", "--name", "killed", "--storage", str(storage)],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "was part-written (its driver was killed while Tune copied it)" in " ".join(
        (proc.stdout + proc.stderr).split())
    assert "Traceback" not in proc.stdout + proc.stderr
    client, parent, after = mlflow_runs(uri, "killed")
    assert parent.info.status == "FINISHED"
    assert len(after) == 6 and len({r.data.tags["tuner.trial_id"] for r in after}) == 6
    assert {r.info.status for r in after} == {"FINISHED"}
    assert {r.data.tags["tuner.status"] for r in after} == {"completed"}
    assert set(finished_before) <= {r.info.run_id for r in after}  # the same runs, not new ones
    # TPE went on where it was: a new one, seeded alike, would suggest the first trial again
    assert len(before) < 6 and len({r.data.params["lr_max"] for r in after}) == 6
    frame = proc.stderr[proc.stderr.index("study killed  tpe + none"):]
    assert "6 completed" in frame.splitlines()[0] and "interrupted" not in frame
    for run in after:  # its last and its best val_loss, for trials finished before the resume too
        row = rf"^{run.data.tags['tuner.trial_id']} +completed +122,880 +\d\.\d{{4}} +\d\.\d{{4}} "
        assert re.search(row, frame, re.MULTILINE), row
    for run in after:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert steps == [10240 * k for k in range(1, 13)], steps  # no gap, no repeat
        if run.info.run_id in finished_before:  # finished trials are not rerun
            assert run.info.end_time == finished_before[run.info.run_id].info.end_time


def _killable_with_a_trial_to_resume(study_dir: Path, budget: int, interval: int) -> Any:
    """`_wait_until`'s condition for the driver's SIGKILL: a trial finished; Tune's newest saved
    state (every 3 s) holds every trial run, as one started after it is lost, not resumed; the
    running trial furthest on is 3 evaluations (of `interval` tokens) in, with the checkpoint that
    state names; and none is within 2 of its end, so no trial starts before the kill."""
    def ready(runs: list[Any], tokens: dict[str, int]) -> bool:
        running = [r for r in runs if r.info.status == "RUNNING"]
        if not running or not any(r.info.status == "FINISHED" for r in runs):
            return False
        try:
            saved = tune_trials(study_dir)
        except ValueError:  # none saved yet, or caught mid-write
            return False
        furthest = max(running, key=lambda r: tokens[r.info.run_id])
        trial_id = furthest.data.tags["tuner.trial_id"]
        named = (saved.get(trial_id) or {}).get("checkpoint_dir_name")
        return (all(r.data.tags["tuner.trial_id"] in saved for r in runs)
                and tokens[furthest.info.run_id] >= 3 * interval and named is not None
                and (study_dir / f"trial_{trial_id}" / named).is_dir()
                and all(tokens[r.info.run_id] <= budget - 2 * interval for r in running))
    return ready


def _asha_rungs(state: dict) -> dict[int, set[str]]:
    """Rung (tokens) → the trials ASHA recorded there."""
    return {milestone: set(results) for bracket in state["_brackets"]
            for milestone, results in bracket._rungs}


def _median_results(state: dict) -> dict[str, list[int]]:
    """Trial id → the evaluations (tokens) the median rule recorded for it."""
    return {trial_id: [r["tokens"] for r in results]
            for trial_id, results in state["results"].items()}


def _saved_scheduler(storage: Path) -> Any:
    """What the driver saved of the scheduler's state beside Tune's (StateBackup)."""
    import pickle

    return pickle.loads((storage / "killed" / "scheduler-state.pkl").read_bytes())


@pytest.mark.slow
def test_median_rule_stops_trials_and_keeps_its_state_across_a_resume(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """The median rule stops trials. Tune saves no scheduler state: the driver saves the rule's
    with Tune's and puts it back, so a study resumed after a SIGKILL still judges trials against
    every result recorded before it, and an evaluation trained again is recorded once."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "killed", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 0.1]}},
                        budget={"tokens": 122880, "eval_interval": 20},
                        search={"algorithm": "random", "scheduler": "median", "num_samples": 6,
                                "median": {"grace_period": 20480}})
    storage = tmp_path / "ray"
    _run_then_sigkill(space, uri, storage, tmp_path, lambda runs, tokens: sum(
        r.info.status == "FINISHED" for r in runs) >= 2)
    before = _median_results(_saved_scheduler(storage))
    assert any(before.values())
    proc = run_tuner(["search", "--resume", "--name", "killed", "--storage", str(storage)],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = _median_results(_saved_scheduler(storage))
    assert all(after[trial][:len(times)] == times for trial, times in before.items())
    assert all(times == sorted(set(times)) for times in after.values()), after
    _, parent, children = mlflow_runs(uri, "killed")
    assert parent.data.tags["tuner.scheduler"] == "median" and len(children) == 6
    _assert_stopped_by(uri, children, "the median rule", budget=122880)


@pytest.mark.slow
def test_a_trial_stopped_just_before_the_kill_is_stopped_again(tmp_path: Path, dataset: Path,
                                                               mlflow_store_template: Path) -> None:
    """A driver killed between ASHA stopping a trial and Tune's next save resumes the trial from
    the checkpoint that save names, the one before its latest: it trains that evaluation again and
    ASHA stops it again, rather than training on from the latest to the end. Tune saves no
    scheduler state: the driver saves ASHA's with Tune's and puts it back, so the resumed study
    judges trials against every rung result recorded before the kill."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "killed", dataset,
                        hparams={"lr_max": {"loguniform": [1e-4, 1e-2]}},
                        budget={"tokens": 122880, "eval_interval": 20},
                        search={"algorithm": "random", "scheduler": "asha", "num_samples": 6,
                                "max_concurrent": 1,
                                "asha": {"grace_period": 20480, "reduction_factor": 2}})
    storage = tmp_path / "ray"
    _run_then_sigkill(space, uri, storage, tmp_path, lambda runs, tokens: any(
        r.data.tags.get("tuner.status") == "stopped" for r in runs))
    _, _, before = mlflow_runs(uri, "killed")
    stopped = {r.info.run_id: r for r in before if r.data.tags.get("tuner.status") == "stopped"}
    rungs = _asha_rungs(_saved_scheduler(storage))
    assert any(rungs.values())
    proc = run_tuner(["search", "--resume", "--name", "killed", "--storage", str(storage)],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rungs_after = _asha_rungs(_saved_scheduler(storage))
    assert all(rungs[rung] <= rungs_after[rung] for rung in rungs), (rungs, rungs_after)
    _, _, after = mlflow_runs(uri, "killed")
    for run in (r for r in after if r.info.run_id in stopped):
        assert run.data.tags["tuner.status"] == "stopped", run.data.tags.get("tuner.status_detail")
        assert run.data.tags["tuner.status_detail"] == stopped[
            run.info.run_id].data.tags["tuner.status_detail"]
    # (a trial the killed driver started after Tune's last save left a folder outside the study)
    _, parent, _ = mlflow_runs(uri, "killed")
    best = parent.data.tags["tuner.best_trial_id"]
    kept = {r.data.tags["tuner.trial_id"]: len(list((storage / "killed").glob(
        f"trial_{r.data.tags['tuner.trial_id']}/checkpoint_*"))) for r in after}
    assert kept == {trial_id: int(trial_id == best) for trial_id in kept}  # the best's latest


@pytest.mark.slow
def test_pbt_study_killed_and_resumed_logs_no_evaluation_twice(tmp_path: Path, dataset: Path,
                                                               mlflow_store_template: Path) -> None:
    """A PBT study whose driver is killed with SIGKILL resumes from Tune's last snapshot, which
    lags what MLflow holds: the evaluations trained again are not logged a second time. A trial
    run the kill left bare (killed just after making it) gets its params and artifacts."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "killed", dataset,
                        hparams={"lr_max": {"loguniform": [1e-3, 1e-2]}},
                        budget={"tokens": 122880, "eval_interval": 5},
                        search={"scheduler": "pbt", "num_samples": 2,
                                "pbt": {"perturbation_interval": 20480}})
    storage = tmp_path / "ray"
    _run_then_sigkill(space, uri, storage, tmp_path, lambda runs, tokens: min(
        tokens.values(), default=0) >= 40960 and len(runs) == 2)
    client, _, (bare, *before) = mlflow_runs(uri, "killed")
    logged = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_loss"))
              for r in before}
    keep = ("mlflow.parentRunId", "tuner.study", "tuner.role", "tuner.trial_id", "tuner.status")
    client.create_run(bare.info.experiment_id, run_name=bare.info.run_name,
                      tags={k: bare.data.tags[k] for k in keep})
    client.delete_run(bare.info.run_id)
    _, runs = resume_to_the_end("killed", storage, tmp_path, uri, completed=2)
    remade = next(r for r in runs if r.data.tags["tuner.trial_id"] == bare.data.tags[
        "tuner.trial_id"])
    def unperturbed(params: dict[str, str]) -> dict[str, str]:
        # PBT may have changed α_max, and with it α_min (0.1·α_max by default)
        return {k: v for k, v in params.items() if k not in ("lr_max", "lr_min")}

    assert "lr_max" in remade.data.params and remade.data.tags["tuner.searched"] == "lr_max"
    assert unperturbed(remade.data.params) == unperturbed(bare.data.params)
    assert {a.path for a in client.list_artifacts(remade.info.run_id)} >= {
        "searched.json", "trial_config.json"}
    for run in before:
        history = client.get_metric_history(run.info.run_id, "val_loss")
        pairs = Counter((m.step, m.value) for m in history)
        assert len(history) > logged[run.info.run_id]
        assert max(pairs.values()) == 1, [pair for pair, n in pairs.items() if n > 1]
    _, parent, runs = mlflow_runs(uri, "killed")
    _assert_tokens_counted_once(client, parent, runs, interval=2560)


@pytest.mark.slow
def test_a_second_driver_of_a_running_study_is_refused(tmp_path: Path, dataset: Path,
                                                       mlflow_store_template: Path) -> None:
    """`--resume` while the study's driver still runs would run its trials twice into the same
    runs: exit 2 before its Ray starts, naming the running driver, and the study goes on
    untouched."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "busy", dataset, budget={"tokens": 983040},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 4})
    storage = tmp_path / "ray"
    driver = start_search(space, uri, storage, tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        _wait_until(uri, driver, lambda runs, tokens: any(tokens.values()), study="busy")
        # where the second driver's Ray would start (short: Ray's sockets live in it)
        second_ray = Path(tempfile.mkdtemp(prefix="ray-"))
        second = run_tuner(["search", "--resume", "--name", "busy", "--storage", str(storage)],
                           cwd=tmp_path, env={**ENV, "RAY_TMPDIR": str(second_ray)})
        assert driver.poll() is None
        _, parent, runs = mlflow_runs(uri, "busy")
    finally:
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=120)
    assert second.returncode == 2, second.stdout + second.stderr
    assert (f"error: study 'busy' is running: another `tuner search` (pid {driver.pid} on "
            f"{socket.gethostname()}) drives it") in " ".join(second.stderr.split())
    assert not list(second_ray.iterdir())
    second_ray.rmdir()
    assert parent.info.status == "RUNNING"
    trials = [r.data.tags["tuner.trial_id"] for r in runs]
    assert len(trials) == len(set(trials)) <= 4


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listen_addresses(pids: set[int]) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* spells them) of the TCP sockets `pids` listen
    on: 127.0.0.1, ::ffff:127.0.0.1 and ::1 are LOOPBACK."""
    sockets = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        sockets |= {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}
    addresses = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in sockets:  # state 0A is LISTEN
                addresses.add(fields[1].rsplit(":", 1)[0])
    return addresses


def _run_then_sigkill(space: Path, uri: str, storage: Path, cwd: Path, ready: Any) -> None:
    """Run study `space`, SIGKILL its driver once `ready(runs, tokens)` holds (see `_wait_until`),
    and wait for its trial processes, which checkpoint a second or two longer, to exit."""
    driver = start_search(space, uri, storage, cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        _wait_until(uri, driver, ready)
    finally:
        sigkill_driver(driver)


def _lose_named_checkpoint(trial_dir: Path) -> None:
    """What a driver killed between Tune registering a checkpoint and saving its state leaves:
    the checkpoint the state names deleted (`num_to_keep`), the next one kept. Each folder moves
    up one number, so whichever one the state names is lost and its content comes next; the
    first number is left with a copy of its content whose bytes are damaged (a disk's fault)."""
    folders = sorted(trial_dir.glob("checkpoint_*"), reverse=True)
    for folder in folders:
        folder.rename(trial_dir / f"checkpoint_{int(folder.name.split('_')[1]) + 1:06d}")
    first = folders[-1]
    shutil.copytree(min(trial_dir.glob("checkpoint_*")), first)
    _damage_bytes(first / "checkpoint.pt")


def _damage_bytes(path: Path) -> None:
    """Flip 64 bytes in the middle of a checkpoint (its tensors): it still opens as a zip."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _refused_with_no_whole_checkpoint(trial_dir: Path, uri: str, cwd: Path) -> None:
    """With every checkpoint of an unfinished trial damaged, --resume names the one Tune's state
    names, exits 2, and changes nothing (nor starts Ray); the files are put back after."""
    study = trial_dir.parent

    def files() -> dict[Path, bytes]:  # but the driver's lock, which names the last to take it
        return {path: path.read_bytes() for path in study.rglob("*")
                if path.is_file() and path.name != "driver.lock"}

    before, runs_before = files(), mlflow_runs(uri, study.name)[2]
    for checkpoint in trial_dir.glob("checkpoint_*/checkpoint.pt"):
        _damage_bytes(checkpoint)
    damaged = files()
    proc = run_tuner(["search", "--resume", "--name", study.name, "--storage", str(study.parent)],
                     cwd=cwd, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message, trial_id = " ".join(proc.stderr.split()), trial_dir.name.removeprefix("trial_")
    # the checkpoint it names may also be gone: deleted by Tune just before the kill (recovery.py)
    assert re.search(rf"{trial_dir}/checkpoint_\d{{6}}/checkpoint.pt: (is damaged: (its entry \S+ "
                     rf"fails its checksum|an entry's header is unreadable \(\w+\))|checkpoint not "
                     rf"found)\. Trial "
                     rf"{trial_id} would resume from it, .* put back a "
                     rf"whole copy, or start a new study with another --name \(--warm-start "
                     rf"{study.name} builds on this one's finished trials\)", message), message
    assert "Traceback" not in proc.stderr and "ray" not in proc.stdout.lower()
    assert files() == damaged
    assert [(r.info.run_id, r.info.status) for r in mlflow_runs(uri, study.name)[2]] == [
        (r.info.run_id, r.info.status) for r in runs_before]
    for path, data in before.items():
        path.write_bytes(data)


def test_repair_puts_back_a_lost_checkpoint_from_the_next_whole_one(tmp_path: Path) -> None:
    """A checkpoint Tune's state names but `num_to_keep` deleted, or one cut short, comes back as
    the next whole one."""
    import zipfile

    from tuner.search.state.recovery import repair

    def write(index: int, content: bytes) -> Path:
        (tmp_path / f"checkpoint_{index:06d}").mkdir(exist_ok=True)
        with zipfile.ZipFile(tmp_path / f"checkpoint_{index:06d}" / "checkpoint.pt", "w") as z:
            z.writestr("archive/data.pkl", content)
        return tmp_path / f"checkpoint_{index:06d}" / "checkpoint.pt"

    def content(index: int) -> bytes:
        with zipfile.ZipFile(tmp_path / f"checkpoint_{index:06d}" / "checkpoint.pt") as z:
            return z.read("archive/data.pkl")

    write(3, b"fourth report")
    write(4, b"fifth, never registered")
    named = tmp_path / "checkpoint_000002"
    assert repair(named)
    assert content(2) == b"fourth report"
    assert not repair(named)  # whole: left alone
    assert not repair(tmp_path / "checkpoint_000009")  # nothing after it
    assert not (tmp_path / "checkpoint_000009").exists()
    # a kill inside Tune's deletion leaves a folder without its checkpoint: gone as well, and no
    # folder without one is taken for the next; nor one cut short
    (tmp_path / "checkpoint_000000").mkdir()
    (tmp_path / "checkpoint_000001").mkdir()
    cut = write(2, b"third report")
    cut.write_bytes(cut.read_bytes()[:-10])
    assert repair(tmp_path / "checkpoint_000000")
    assert content(0) == b"fourth report"
    assert repair(tmp_path / "checkpoint_000002")  # cut short: replaced
    assert content(2) == b"fourth report"
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"checkpoint_{index:06d}" for index in range(5)]


def test_resume_puts_back_tunes_state_kept_whole(tmp_path: Path) -> None:
    """Tune's state as a killed driver may leave it (a file cut short, or whole files from two
    saves, or a newer session's files) is replaced by the copy kept whole; a state equal to the
    copy is left alone; a file cut short with no copy kept is a UserError naming it."""
    import pickle
    import zipfile

    from tuner.errors import UserError
    from tuner.search.state.tune_state import BACKUP, restore_whole_state

    old, new = pickle.dumps({"trials": 1}), pickle.dumps({"trials": 2})
    kept = {"experiment_state-2026-01-01_00-00-00.json": b'{"trial_data": [1, 2]}',
            "searcher-state-2026-01-01_00-00-00.pkl": new}
    with zipfile.ZipFile(tmp_path / BACKUP, "w") as bundle:
        for name, data in kept.items():
            bundle.writestr(name, data)

    def state() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.name != BACKUP}

    for name, data in kept.items():
        (tmp_path / name).write_bytes(data)
    assert not restore_whole_state(tmp_path) and state() == kept
    (tmp_path / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(old)  # two saves
    (tmp_path / "experiment_state-2026-01-02_00-00-00.json").write_text("{}")  # a later session
    assert restore_whole_state(tmp_path) and state() == kept
    (tmp_path / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(new[:5])  # cut short
    assert restore_whole_state(tmp_path) and state() == kept

    (tmp_path / BACKUP).unlink()
    assert not restore_whole_state(tmp_path) and state() == kept  # whole: Tune reads it
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_bytes(b'{"trial_da')
    with pytest.raises(UserError, match=r"experiment_state-2026-01-01_00-00-00\.json: cut short"):
        restore_whole_state(tmp_path)


def test_resume_of_unknown_study_fails_naming_those_there(tmp_path: Path, dataset: Path) -> None:
    """A mistyped name is refused with the studies its storage holds; the name defaults to the
    --space file's, as for a new study."""
    import pickle

    from tuner.search.state.state import STATE_FILE, TUNE_STATE

    storage = tmp_path / "ray"
    for started in ("known", "other"):
        (storage / started).mkdir(parents=True)
        (storage / started / STATE_FILE).write_text("{}")
        (storage / started / TUNE_STATE).write_bytes(pickle.dumps({}))
    space = write_space(tmp_path, "nothing", dataset)
    for name in (["--name", "nothing"], ["--space", str(space)]):
        proc = run_tuner(["search", "--resume", *name, "--storage", str(storage)],
                         cwd=tmp_path, timeout=120)
        assert proc.returncode == 2
        assert (f"no study 'nothing' to resume in {storage} (studies there: known, other)"
                in " ".join(proc.stderr.split())), proc.stderr
    # a study whose own files are lost: each named, with nothing started
    known = storage / "known"
    (known / "trial_1").mkdir()
    for lose, found in ((lambda: (known / TUNE_STATE).write_bytes(pickle.dumps({})[:-1]),
                         f"{known / TUNE_STATE}: cut short"),
                        (lambda: (known / TUNE_STATE).unlink(),
                         f"{known / TUNE_STATE}: missing (Tune writes it as the study starts)"),
                        (lambda: (known / STATE_FILE).unlink(),
                         f"{known / STATE_FILE}: missing (it records the study's space file")):
        lose()
        proc = run_tuner(["search", "--resume", "--name", "known", "--storage", str(storage)],
                         cwd=tmp_path, timeout=120)
        assert proc.returncode == 2
        assert found in " ".join(proc.stderr.split()), proc.stderr
        (known / TUNE_STATE).write_bytes(pickle.dumps({}))


def test_resume_reads_no_study_outside_its_storage(tmp_path: Path) -> None:
    """--name names a folder under --storage: a path that leaves it is refused, not read."""
    outside, storage = tmp_path / "outside", tmp_path / "runs"
    outside.mkdir()
    storage.mkdir()
    (outside / "tuner.pkl").write_bytes(b"")
    (outside / "tuner_study.json").write_text(json.dumps({"space": str(tmp_path / "read.yaml")}))
    for name in ("../outside", str(outside)):
        proc = run_tuner(["search", "--resume", "--name", name, "--storage", str(storage)],
                         cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and f"--name {name!r} must start with a letter" in " ".join(
            proc.stderr.split()), proc.stderr


def test_a_checkpoint_that_does_not_load_is_named_where_tune_keeps_it(tmp_path: Path) -> None:
    """A resumed trial's checkpoint cut short (or emptied) fails the trial naming Tune's file,
    not the scratch copy the trainable made of it (deleted by then)."""
    from ray import tune

    from model.config import ConfigError
    from tuner.search.trial.trainable import restore

    kept = tmp_path / "trial_a" / "checkpoint_000001"
    kept.mkdir(parents=True)
    (kept / "checkpoint.pt").write_bytes(b"")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(ConfigError) as err:
        restore(tune.Checkpoint.from_directory(str(kept)), scratch)
    assert str(err.value) == f"{kept}/checkpoint.pt: not a loadable checkpoint (the file is empty)"
    assert restore(None, scratch) == (None, 0)


def test_trained_tokens_count_each_trial_from_its_restore() -> None:
    """Tokens trained per trial from its reports: a restore (Tune's iterations_since_restore back
    at 1) starts the trainable's count again, from a checkpoint behind or ahead of where it was."""
    from tuner.search.trial.trainable import SINCE_RESTORE, TrainedTokens

    counter = TrainedTokens()

    def report(trial: str, iteration: int, since_restore: int) -> int:
        return counter.add(trial, {"iterations_since_restore": iteration,
                                   SINCE_RESTORE: since_restore})

    assert [report("a", 1, 100), report("a", 2, 200), report("b", 1, 100)] == [100, 100, 100]
    assert report("a", 1, 100) == 100  # a PBT clone: from its donor's checkpoint, 100 more
    assert report("a", 1, 0) == 0  # restored at its end: trained nothing
    assert [report("b", 2, 300), report("b", 3, 300)] == [200, 0]

