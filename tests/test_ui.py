"""`tuner ui`: MLflow's UI served on a recorded study's store, the link to its runs, a clean stop
on Ctrl-C or SIGTERM, and bad input refused with exit code 2 before anything starts."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from inspect_study import TRIALS, RecordedStudy, log_study, tuner
from mlflow import MlflowClient

from tuner.store.layout import ROLE_TAG, STUDY_TAG
from tuner.store.uri import server_address
from tuner.store.view import VIEW_TAG, runs_url

LINK = re.compile(r"(http://\S+)/#/experiments/(\d+)/runs\?\S+")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, byte_dataset: Path,
          mlflow_store_template: Path) -> RecordedStudy:
    """A study of two trials, recorded to a store of its own."""
    return log_study(tmp_path_factory.mktemp("ui_study"), "uistudy", byte_dataset,
                     mlflow_store_template, trials=TRIALS[:2])


@pytest.fixture
def store(study: RecordedStudy, tmp_path: Path) -> str:
    """A copy of the study's store, for a test that writes to it."""
    shutil.copy(study.uri.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def left_running(port: int) -> list[int]:
    """The processes (a zombie has no command line) started with `--port PORT`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a == b"--port" and b == str(port).encode() for a, b in zip(args, args[1:])):
            found.append(int(proc.name))
    return found


def ignore_sigint() -> None:
    """As a shell script starts a command in the background (`tuner ui &`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Ui:
    """`python -m tuner ui ARGS` in `cwd`, its stdout read line by line; `background`: started
    with SIGINT ignored, as a script's background job."""

    def __init__(self, cwd: Path, *args: str, background: bool = False):
        self.proc = subprocess.Popen([sys.executable, "-m", "tuner", "ui", *args], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=ignore_sigint if background else None)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def output_until(self, pattern: re.Pattern, timeout: float = 180) -> str:
        """Its stdout up to the first line that holds `pattern`."""
        out = ""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                pytest.fail(f"tuner ui exited ({self.proc.wait()}): {out!r} "
                            f"{self.proc.stderr.read()!r}")
            out += line
            if pattern.search(line):
                return out

    def stop(self, signum: int) -> tuple[int, str]:
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=60)
        return code, self.proc.stderr.read()

    def close(self, port: int) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in left_running(port):
            os.kill(pid, signal.SIGKILL)


def api(base: str, path: str, body: dict | None = None, **headers: str) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                     headers={"Content-Type": "application/json", **headers})
    with NO_PROXY.open(request, timeout=30) as response:
        return json.loads(response.read())


def test_links_are_on_the_runs_table_without_credentials():
    assert runs_url("http://host:5000/", "7") == (
        "http://host:5000/#/experiments/7/runs?workflowType=machine_learning"
        "&viewStateShareKey=tuner")
    assert server_address("https://user:pa%40ss@host:8443/mlflow/?token=abc") == \
        "https://host:8443/mlflow"


@pytest.mark.slow
def test_ui_serves_the_study_until_ctrl_c(study, store, tmp_path):
    port = free_port()
    ui = Ui(tmp_path, "--study", study.name, "--tracking-uri", store, "--port", str(port))
    try:
        out = ui.output_until(LINK)
        base, experiment_id = LINK.search(out).groups()
        assert base == f"http://127.0.0.1:{port}" and "Ctrl-C stops it" in out
        experiment = api(base, f"experiments/get?experiment_id={experiment_id}")["experiment"]
        assert experiment["name"] == study.name
        view = json.loads(next(t["value"] for t in experiment["tags"] if t["key"] == VIEW_TAG))
        assert view["orderByKey"] == "metrics.`best_val_loss`" and view["orderByAsc"] is True
        assert {"params.`lr_max`", "params.`batch_size`", "metrics.`val_loss`",
                "tags.`tuner.status`"} <= set(view["selectedColumns"])
        assert view["runsHiddenMode"] == "SHOW_ALL"  # MLflow's charts draw the first 10 else
        # the trials' curves first, val_loss leading; the study's below (MLflow sorts by name)
        assert [s["name"] for s in view["compareRunSections"]] == ["Model metrics", "study"]
        assert view["compareRunCharts"][0]["metricKey"] == "val_loss"
        found = api(base, "runs/search", {"experiment_ids": [experiment_id]})["runs"]
        assert {r["info"]["run_id"] for r in found} == {study.parent_id, *study.run_ids}
        # the artifacts under the store's folder are served as they were recorded
        trial = study.run_ids[0]
        with NO_PROXY.open(f"{base}/get-artifact?path=searched.json&run_uuid={trial}") as got:
            assert json.loads(got.read()) == TRIALS[0][0]
        # on an `mlflow server` store, the link is printed and nothing is started
        code, printed = tuner("ui", "--study", study.name, "--tracking-uri", base)
        assert code == 0 and runs_url(base, experiment_id) in printed
        assert "Ctrl-C" not in printed

        code, err = ui.stop(signal.SIGINT)
        assert code == 130, err
        assert "stopped MLflow's UI" in err
        assert not listening("127.0.0.1", port) and not left_running(port)
        assert not (tmp_path / "mlartifacts").exists() and not (tmp_path / "mlruns").exists()
    finally:
        ui.close(port)


@pytest.mark.slow
def test_ui_on_another_address_lists_each_study_and_stops_on_sigterm(study, store, tmp_path):
    """Bound to an address MLflow does not trust by default, its UI can still list runs (a POST
    from its own page); without --study, a store of two studies gets a link to each. Started in
    the background by a script (SIGINT ignored), SIGTERM still stops it."""
    client = MlflowClient(tracking_uri=store)
    other = client.create_experiment("other")
    client.create_run(other, run_name="other", tags={STUDY_TAG: "other", ROLE_TAG: "study"})
    host, port = "127.0.0.2", free_port("127.0.0.2")
    ui = Ui(tmp_path, "--tracking-uri", store, "--host", host, "--port", str(port),
            background=True)
    try:
        out = ui.output_until(re.compile(r"study uistudy, .*runs\?"))
        base = f"http://{host}:{port}"
        assert f"{base}/#/experiments " in out
        assert f"study other, its runs ranked by best_val_loss: {runs_url(base, other)}" in out
        found = api(base, "runs/search", {"experiment_ids": [other]}, Origin=base)["runs"]
        assert [r["info"]["run_name"] for r in found] == ["other"]

        code, err = ui.stop(signal.SIGTERM)
        assert code == 130, err
        assert not listening(host, port) and not left_running(port)
    finally:
        ui.close(port)


def test_a_port_in_use_exits_2_naming_it_with_nothing_started(study, store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = tuner("ui", "--study", study.name, "--tracking-uri", store, "--port",
                          str(port))
        assert code == 2, out
        assert f"--port {port}" in out and "in use" in out
        assert left_running(port) == []
    experiment = MlflowClient(tracking_uri=store).get_experiment_by_name(study.name)
    assert VIEW_TAG not in experiment.tags  # nothing written either


def test_an_unknown_study_exits_2_naming_it(study):
    code, out = tuner("ui", "--study", "nosuch", "--tracking-uri", study.uri)
    assert code == 2, out
    assert "no study 'nosuch'" in out and study.name in out  # the studies there


def test_a_missing_store_exits_2_and_is_not_created(tmp_path):
    code, out = tuner("ui", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert code == 2, out
    assert "none.db" in out
    assert not (tmp_path / "none.db").exists()
