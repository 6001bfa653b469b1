"""Stopping a study (search/faults/stopping.py): Ctrl-C, SIGTERM, SIGHUP, its terminal closed,
twice."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from studies import (
    ENV,
    REPO,
    TUNER,
    UV,
    _descendants,
    _wait_exited,
    _wait_until,
    fresh_store,
    mlflow_runs,
    resume_to_the_end,
    run_tuner,
    start_search,
    write_space,
)


@pytest.mark.slow
def test_sigterm_stops_the_study_as_ctrl_c_does(tmp_path: Path, dataset: Path,
                                                mlflow_store_template: Path) -> None:
    """`kill` and `docker stop` send SIGTERM: the driver stops the study as Ctrl-C does (exit
    130, runs ended, the --resume command printed, under `uv run` as uv started it) rather than
    dying in Ray's handler; a SIGINT right after is the same stop again (`uv run` passes on a
    signal sent to its process group), not a second one."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "termed", dataset, budget={"tokens": 122880},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 3})
    storage = tmp_path / "ray"
    driver = start_search(space, uri, storage, tmp_path,
                          env={**ENV, "UV_RUN_RECURSION_DEPTH": "1"})  # as `uv run` starts it
    try:
        _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) >= 20480,
                    study="termed")
    finally:
        driver.send_signal(signal.SIGTERM)  # and at once, as `uv run` passes it on
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, out + err
    assert "SIGTERM received" not in err  # Ray's stack dump
    assert (f"continue it with: uv run tuner search --resume --name termed --storage {storage}"
            in out)
    _, parent, before = mlflow_runs(uri, "termed")
    assert parent.info.status == "KILLED" and before
    assert "RUNNING" not in {r.info.status for r in before}
    assert "interrupted" in {r.data.tags["tuner.status"] for r in before}
    halfway = [r for r in before if r.data.tags["tuner.status"] == "interrupted"]
    assert parent.data.tags["tuner.best_run_id"] in {r.info.run_id for r in halfway}
    assert {r.data.tags["mlflow.note.content"].split("**")[1] for r in halfway} == {"interrupted"}
    assert parent.data.tags["mlflow.note.content"].startswith(
        f"**Best: trial {parent.data.tags['tuner.best_trial_id']}**")
    assert not [r for r in halfway if "tuner.checkpoint_sha256" in r.data.tags]  # not final
    assert f"best trial so far {parent.data.tags['tuner.best_trial_id']}: " in out, out
    assert "reproduce it as far as it trained with:" in out  # not its result at the end
    assert f"  uv run tuner replay {parent.data.tags['tuner.best_run_id']} " in out

    proc = run_tuner(["search", "--resume", "--name", "termed", "--storage", str(storage)],
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, parent, after = mlflow_runs(uri, "termed")
    assert parent.info.status == "FINISHED" and len(after) == 3
    assert {r.data.tags["tuner.status"] for r in after} == {"completed"}
    assert {r.data.tags["mlflow.note.content"].split(" (")[0] for r in after} == {"**completed"}
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in after}


class Terminal:
    """A pseudo-terminal the driver runs in as its session's controlling terminal, its output
    read (or it would block once the terminal's buffer is full) until `close`, which hangs it
    up as closing a terminal window or an SSH session does."""

    def __init__(self) -> None:
        import threading

        self.master, self.slave = os.openpty()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def controlling(self) -> None:
        """preexec_fn: make the terminal the controlling one of the new session."""
        import fcntl
        import termios

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def _read(self) -> None:
        import select

        while not self._stop.is_set():
            if select.select([self.master], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):
                    os.read(self.master, 65536)
        os.close(self.master)

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._reader.join()


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM to the group", "SIGHUP to the group",
                                  "Ctrl-C in its terminal", "SIGHUP to the driver",
                                  "its terminal closed"])
def test_every_stop_ends_the_study_at_once_and_resumes(tmp_path: Path, dataset: Path,
                                                       mlflow_store_template: Path,
                                                       stop: str) -> None:
    """Started in a session of its own (`setsid`, as a batch job or a terminal's shell starts
    it), the driver takes SIGTERM and SIGHUP, to itself or its whole process group, and a
    closed terminal, as it takes Ctrl-C: its trials' runs end interrupted, the parent KILLED, it
    exits 130 printing the --resume command, and no Ray process outlives it. Ray's own processes
    run in sessions of their own: a signal to the driver's group stopped them first, and the
    driver waited a minute for them and exited 1 with its runs RUNNING; a closed terminal
    left the command exiting 129, its runs RUNNING."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "stopped", dataset, budget={"tokens": 163840},
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2})
    storage = tmp_path / "ray"
    terminal = Terminal() if stop == "its terminal closed" else None
    out_to = {"stdin": terminal.slave, "stdout": terminal.slave, "stderr": terminal.slave,
              "preexec_fn": terminal.controlling} if terminal else \
        {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    driver = subprocess.Popen([str(TUNER), "search", "--space", str(space), "--tracking-uri", uri,
                               "--storage", str(storage)], cwd=tmp_path, env=ENV, text=True,
                              start_new_session=True, **out_to)
    try:
        if terminal:
            os.close(terminal.slave)
        _wait_until(uri, driver, lambda runs, tokens: max(tokens.values(), default=0) >= 10240,
                    study="stopped")
        ray_processes = [pid for pid, _ in _descendants(driver.pid)]
        if terminal:
            terminal.close()
        else:
            signum = getattr(signal, stop.split()[0].replace("Ctrl-C", "SIGINT"))
            if stop.endswith("driver"):
                driver.send_signal(signum)
            else:  # as Ctrl-C in a terminal reaches its whole foreground group
                os.killpg(driver.pid, signum)
        try:  # the driver that waited for Ray's stopped servers took about a minute
            out, _ = driver.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{stop}: the driver still ran 45 s later")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        if terminal:
            terminal.close()
    assert driver.returncode == 130
    if not terminal:  # a closed terminal shows nothing
        assert f"continue it with: tuner search --resume --name stopped --storage {storage}" \
            in out, out
    _wait_exited(ray_processes)
    _, parent, runs = mlflow_runs(uri, "stopped")
    assert parent.info.status == "KILLED"
    assert [(r.info.status, r.data.tags["tuner.status"]) for r in runs] == \
        [("KILLED", "interrupted")] * 2
    if stop == "SIGTERM to the group":
        resume_to_the_end("stopped", storage, tmp_path, uri, completed=2)


@pytest.mark.slow
def test_stop_before_the_first_trial_then_resume(tmp_path: Path, dataset: Path,
                                                 mlflow_store_template: Path) -> None:
    """SIGTERM while the study is set up, before Tune listens: held until Tune takes it, so the
    study stops resumable; its resume (Tune cannot restore a state without trials) starts it."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "early", dataset,
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 3})
    storage = tmp_path / "ray"
    driver = start_search(space, uri, storage, tmp_path)
    deadline = time.monotonic() + 120
    while not (storage / "early").exists() and driver.poll() is None:  # the study's state, saved
        assert time.monotonic() < deadline
        time.sleep(0.005)
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, out + err
    assert "study early interrupted: no trial finished" in out
    assert f"continue it with: tuner search --resume --name early --storage {storage}" in out
    assert not list((storage / "early").glob("trial_*"))

    resume_to_the_end("early", storage, tmp_path, uri, completed=3)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_ray_starts_aborts_and_leaves_no_ray_process(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path, stop: signal.Signals) -> None:
    """Ctrl-C while the local Ray starts is held until Ray is up (a start cut short left Ray's
    agents running for ever); nothing is saved yet, so the command then aborts. A SIGTERM there
    meets Ray's own handler, which stops what Ray started: the command aborts alike (it exited
    15, saying nothing)."""
    uri = fresh_store(tmp_path, mlflow_store_template)
    space = write_space(tmp_path, "cut", dataset)
    storage = tmp_path / "ray"
    with open(tmp_path / "stderr.txt", "w") as err:
        driver = start_search(space, uri, storage, tmp_path, stdout=subprocess.DEVNULL,
                              stderr=err)
        deadline = time.monotonic() + 120
        ray_processes: set[int] = set()
        while not any("raylet" in cmd for _, cmd in _descendants(driver.pid)):
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        driver.send_signal(stop)
        while driver.poll() is None:
            ray_processes |= {pid for pid, _ in _descendants(driver.pid)}
            time.sleep(0.01)
    said = (tmp_path / "stderr.txt").read_text()
    assert driver.returncode == 130 and said.splitlines()[-1] == "aborted", said
    assert not storage.exists()
    _wait_exited(sorted(ray_processes))


# `tuner search`, but the SIGTERM sent from inside a garbage collection's callback at its
# STOP_AT-th collection: the handler's KeyboardInterrupt is raised there, and Python drops it
DROPPED_STOP = """import gc, os, signal, sys
from tuner.cli import main
at, seen = int(os.environ["STOP_AT"]), []
def stop(phase, info):
    seen.append(phase)
    if len(seen) == at:
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))  # the handler runs here
gc.callbacks.append(stop)
main()
"""


@pytest.mark.slow
def test_a_stop_python_dropped_during_start_up_still_stops_the_study(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """A stop's KeyboardInterrupt raised while a finalizer or weakref callback runs (SQLAlchemy's
    run often as MLflow loads) is only printed by Python: the study ran to its end, exit 0. The
    stop is recorded as well, and honoured before Ray starts."""
    space = write_space(tmp_path, "dropped", dataset,
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2})
    for at in (20, 200, 500):  # from the imports to the checks before Ray (about 800 here)
        folder = tmp_path / str(at)
        uri = fresh_store(folder, mlflow_store_template)
        proc = subprocess.run(
            [sys.executable, "-c", DROPPED_STOP, "search", "--space", str(space),
             "--tracking-uri", uri, "--storage", str(folder / "ray")], check=False, cwd=folder,
            env={**ENV, "STOP_AT": str(at)}, capture_output=True, text=True, timeout=300)
        assert "KeyboardInterrupt" in proc.stderr  # dropped, as Python does
        assert proc.returncode == 130, proc.stdout + proc.stderr
        assert proc.stderr.splitlines()[-1] == "aborted"
        assert not (folder / "ray").exists()


@pytest.mark.slow
def test_a_stop_at_any_moment_of_the_start_up_stops_the_study(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """SIGTERM or SIGUSR1 at moments spread over the start-up (imports, checks, the store, Ray,
    Tune's set-up, the first trials): exit 130 each time, aborted or resumable. One was lost
    (exit 0, the study run to its end)."""
    space = write_space(tmp_path, "early", dataset,
                        search={"algorithm": "random", "scheduler": "none", "num_samples": 2})
    markers = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, "raylet", "folder"]
    for i, when in enumerate(markers):
        folder = tmp_path / str(i)
        uri = fresh_store(folder, mlflow_store_template)
        storage = folder / "ray"
        driver = start_search(space, uri, storage, folder, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        if isinstance(when, float):
            time.sleep(when)
        while when == "raylet" and not any("raylet" in c for _, c in _descendants(driver.pid)) \
                or when == "folder" and not (storage / "early").exists():
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        driver.send_signal(signal.SIGUSR1 if i % 2 else signal.SIGTERM)
        err = driver.communicate(timeout=120)[1]
        assert driver.returncode == 130, (when, err)


def _catches_sigterm(pid: int) -> bool:
    """Whether process `pid` has a handler for SIGTERM (tuner's are set): its SigCgt mask."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


def test_a_ctrl_c_under_uv_run_at_any_moment_of_the_start_up_aborts_in_a_word(
        tmp_path: Path, dataset: Path, mlflow_store_template: Path) -> None:
    """Ctrl-C (SIGINT to the process group: uv, then uv's own copy 0.2 s later) while `uv run
    tuner search` imports what it needs and checks its input, from tuner's first line on:
    "aborted", exit 130, never a traceback (a copy that came while "aborted" was being said
    printed one)."""
    if UV is None:
        pytest.skip("uv is not installed")
    space = write_space(tmp_path, "early", dataset)
    for i, when in enumerate((0.0, 0.2, 0.5, 1.0)):  # after tuner's first line
        folder = tmp_path / str(i)
        uri = fresh_store(folder, mlflow_store_template)
        driver = subprocess.Popen(
            [UV, "run", "--no-sync", "--project", str(REPO), "tuner", "search", "--space",
             str(space), "--tracking-uri", uri, "--storage", str(folder / "ray")], cwd=folder,
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while not any(_catches_sigterm(pid) for pid, _ in _descendants(driver.pid)):
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(when)
        os.killpg(driver.pid, signal.SIGINT)
        err = driver.communicate(timeout=120)[1]
        assert driver.returncode == 130, (when, err)
        assert err.splitlines()[-1:] == ["aborted"] and "Traceback" not in err, (when, err)


# The `tuner` command (its console script), Ctrl-C'd as the command line's first import starts,
# and its copy 0.2 s later (as `uv run` passes one on)
STOPPED_IN_AN_IMPORT = """import os, runpy, signal, sys, threading
class StopAtTyper:
    def find_spec(self, name, path=None, target=None):
        if name == "typer":
            sys.meta_path.remove(self)
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, StopAtTyper())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_ctrl_c_during_the_command_lines_imports_aborts_in_a_word(tmp_path: Path) -> None:
    """The console script imported the whole command line (typer, rich, …) before it set the
    stops' handlers: a Ctrl-C then printed the import's traceback."""
    proc = subprocess.run([sys.executable, "-c", STOPPED_IN_AN_IMPORT, str(TUNER), "--help"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=ENV,
                          check=False)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines() == ["aborted"], proc.stderr


STOPPED_IN_A_VALIDATOR = """
import enum, os, signal, sys
from pydantic_core import SchemaValidator, core_schema
import tuner.cli as cli

class Picked(enum.Enum):
    a = 1
    def __getattribute__(self, name):
        if name == "value":  # read by pydantic-core as it builds the validator: the stop lands there
            os.kill(os.getpid(), signal.SIGTERM)
        return super().__getattribute__(name)

@cli.app.command("build")
def build() -> None:
    SchemaValidator(core_schema.enum_schema(Picked, list(Picked), sub_type="int"))

sys.argv = ["tuner", "build"]
cli.main()
"""


def test_a_stop_a_library_wrapped_in_its_own_error_aborts_in_a_word(tmp_path: Path) -> None:
    """A SIGTERM while pydantic-core built a validator (a study's start-up, 3 s in) came back as
    its SchemaError naming the KeyboardInterrupt: the command printed a traceback and exited 1."""
    proc = subprocess.run([sys.executable, "-c", STOPPED_IN_A_VALIDATOR], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path, env=ENV, check=False)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines() == ["aborted"], proc.stderr


@pytest.mark.parametrize(("given", "seen"), [(None, "60"), ("5", "5")])
def test_a_reused_actor_waits_for_its_last_trial_to_unwind(given: str | None, seen: str) -> None:
    """Tune's 2 s for a stopped trial's thread to end was too short on a busy machine (the next
    trial failed unrecorded, holding a slot): a study sets 60 s, unless the user set a value."""
    env = {k: v for k, v in ENV.items() if k != "TUNE_FUNCTION_THREAD_TIMEOUT_S"}
    if given is not None:
        env["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = given
    code = ("import os; from tuner.search import environment; environment.configure(local=True);"
            " print(os.environ['TUNE_FUNCTION_THREAD_TIMEOUT_S'])")
    out = subprocess.run([sys.executable, "-c", code],
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == seen


def test_a_second_stop_is_told_apart_from_the_first_delivered_again() -> None:
    """Once Tune took a stop, the same stop again within ECHO_S is dropped (`uv run` passes on
    a Ctrl-C its process group got too); a later one ends the driver, noted as such, so that
    `tuner search` answers with the --resume command rather than a bare "aborted"."""
    from model import shell
    from tuner.search.faults import stopping

    before = signal.getsignal(signal.SIGINT)
    with stopping.stops_held():
        signal.raise_signal(signal.SIGINT)  # the stop, held until Tune takes it
        stopping._held.update(tune_listens=True, taken_at=time.monotonic())
        signal.raise_signal(signal.SIGINT)  # the echo: nothing happens
        assert not stopping.stopped_at_once()
        shell._arrivals["counted"] -= 2 * shell.ECHO_S  # the stop came a second ago
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert stopping.stopped_at_once()
    assert signal.getsignal(signal.SIGINT) is before
    with stopping.stops_held():  # the next study starts afresh
        assert not stopping.stopped_at_once()


def test_a_copy_of_a_stop_is_the_same_stop_however_late_its_handler_runs() -> None:
    """Python runs a handler only once the main thread is back in Python: inside Ray's calls,
    up to a second after the signal came. The copy `uv run` sends 0.2 s after a stop's was then
    handled a second after it, and taken for a second stop (no grace checkpoint, the runs left
    RUNNING). When each arrived decides, not when it was handled."""
    import hashlib
    import threading

    from model import shell
    from tuner.search.faults import stopping

    def busy_in_c(seconds: float) -> None:
        """Hash for about `seconds` in one call, which runs no handler until it returns."""
        began = time.perf_counter()
        hashlib.pbkdf2_hmac("sha256", b"p", b"s", 10_000)
        rate = 10_000 / (time.perf_counter() - began)
        hashlib.pbkdf2_hmac("sha256", b"p", b"s", int(rate * seconds))

    with stopping.stops_held():
        signal.raise_signal(signal.SIGINT)  # the stop, handled at once
        stopping._held.update(tune_listens=True, taken_at=time.monotonic())
        copy = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
        copy.start()
        busy_in_c(4 * shell.ECHO_S)  # the copy comes in here; its handler runs after
        copy.join()
        assert not stopping.stopped_at_once()
        with pytest.raises(KeyboardInterrupt):  # a stop given now is a second one
            signal.raise_signal(signal.SIGINT)
        assert stopping.stopped_at_once()


def test_a_second_stop_ends_the_runs_unless_they_had_ended(tmp_path: Path, dataset: Path,
                                                           mlflow_store_template: Path) -> None:
    """A second stop left the running trials' runs RUNNING until a resume: they end as a first
    stop ends them (interrupted, KILLED). One that came after the first had ended them (as Ray
    shut down) says so."""
    from mlflow import MlflowClient

    from tuner.search.lifecycle import second_stop
    from tuner.space import load_study

    uri = fresh_store(tmp_path, mlflow_store_template)
    study = load_study(write_space(tmp_path, "twice", dataset, tracking={"uri": uri}))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("twice")
    parent = client.create_run(experiment, run_name="twice", tags={
        "tuner.study": "twice", "tuner.role": "study"}).info.run_id
    trial = client.create_run(experiment, tags={"mlflow.parentRunId": parent,
                                                "tuner.role": "trial"}).info.run_id
    assert second_stop(study) == ("stopped at once (a second stop); its runs ended as "
                                  "interrupted (KILLED)")
    assert [client.get_run(run).info.status for run in (parent, trial)] == ["KILLED"] * 2
    assert client.get_run(trial).data.tags["tuner.status"] == "interrupted"
    assert second_stop(study) == "stopped at once (a second stop), after its runs had ended"
