"""`tuner ui`: MLflow's UI on a study's tracking store, and the link that opens a study's runs.

MLflow 3.17's UI opens an experiment in its "GenAI" mode whatever its `mlflow.experimentKind`
tag says; the link's `workflowType=machine_learning` opens the "Model training" runs table. That
table shows no metric or param column unless told: the link names a shared view
(`viewStateShareKey`), an experiment tag as MLflow's Share button writes, which `save_view` fills.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, NoReturn

from tuner.errors import UserError
from tuner.redact import redact

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5000
VIEW_KEY = "tuner"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
MODEL_SECTION = "Model metrics"  # MLflow's charts section of the metrics without a prefix
START_TIMEOUT_S = 120  # `mlflow server` answers in 5-10 s on 2 busy cores
STOP_GRACE_S = 10
TAIL_LINES = 20
# The Host names MLflow's server accepts by default, and the origins it takes POSTs from
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class ServerFailed(Exception):
    """`mlflow server` did not start, or exited on its own; `tail` holds its last lines."""

    def __init__(self, message: str, tail: list[str]):
        super().__init__(message)
        self.tail = tail


def runs_url(base_url: str, experiment_id: str) -> str:
    """The page of MLflow's UI at `base_url` with the experiment's runs ranked by best_val_loss
    (the view `save_view` stored), in the "Model training" mode."""
    query = urllib.parse.urlencode({"workflowType": "machine_learning",
                                    "viewStateShareKey": VIEW_KEY})
    return f"{base_url.rstrip('/')}/#/experiments/{urllib.parse.quote(experiment_id)}/runs?{query}"


def experiments_url(base_url: str) -> str:
    """The list of experiments in MLflow's UI at `base_url`."""
    return f"{base_url.rstrip('/')}/#/experiments"


def local_url(host: str, port: int) -> str:
    """The address a browser on this machine opens for a server listening on `host`."""
    return f"http://{_url_host(host)}:{port}"


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):  # every interface: this machine's through its loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def study_experiments(client: Any, study: str | None) -> dict[str, str]:
    """The experiment id of `study`, or with None of every study in the store, by study name;
    UserError for an unknown study."""
    from tuner.inspect import runs
    from tuner.search.mlflow_layout import ROLE_TAG, STUDY_TAG

    if study is not None:
        return {study: runs.study_parent(client, study).info.experiment_id}
    parents = client.search_runs(runs.experiment_ids(client), max_results=1000,
                                 filter_string=f"tags.`{ROLE_TAG}` = 'study'")
    return dict(sorted((r.data.tags[STUDY_TAG], r.info.experiment_id) for r in parents))


def save_view(client: Any, experiment_id: str) -> None:
    """Store on the experiment the view `runs_url` opens: its runs ranked by best_val_loss, with
    val_loss, every searched param and tuner.status as columns, every run in the charts."""
    from tuner.search.mlflow_layout import ROLE_TAG, SEARCHED_TAG, STATUS_TAG

    trials = client.search_runs([experiment_id], max_results=1000,
                                filter_string=f"tags.`{ROLE_TAG}` = 'trial'")
    searched = sorted({name for run in trials
                       for name in run.data.tags.get(SEARCHED_TAG, "").split(",") if name})
    columns = ["metrics.`best_val_loss`", "metrics.`val_loss`",
               *(f"params.`{name}`" for name in searched), f"tags.`{STATUS_TAG}`"]
    # MLflow nests trials under their parent only in a table sorted by start time, collapsed;
    # its charts draw the first 10 runs unless told to draw all
    view = {"orderByKey": "metrics.`best_val_loss`", "orderByAsc": True,
            "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL", **_charts()}
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view))


def _charts() -> dict[str, Any]:
    """The charts of the view: the trials' curves first, val_loss leading (MLflow would sort
    sections and charts by name, the study's `study/` section first), then the study's. MLflow
    adds a chart for each metric not listed, at the end of its section."""
    from tuner.search.mlflow_layout import METRICS, STUDY_PREFIX

    sections = {"tuner-trials": MODEL_SECTION, "tuner-study": STUDY_PREFIX.rstrip("/")}
    trial_metrics = dict.fromkeys(["val_loss", "best_val_loss", *METRICS, "tokens_trained"])
    charts = [{"uuid": f"tuner-{metric}", "type": "LINE", "metricSectionId": "tuner-trials",
               "metricKey": metric, "selectedMetricKeys": [metric], "displayName": metric,
               "isGenerated": True, "deleted": False, "runsCountToCompare": 10,
               "xAxisKey": "step", "selectedXAxisMetricKey": "", "xAxisScaleType": "linear",
               "scaleType": "linear", "yAxisKey": "metric", "yAxisExpressions": [], "range": {},
               "lineSmoothness": 0, "ignoreOutliers": False, "useGlobalXaxisKey": True,
               "useGlobalLineSmoothing": True} for metric in trial_metrics]
    return {"compareRunCharts": charts, "isAccordionReordered": True, "compareRunSections": [
        {"uuid": uuid, "name": name, "display": True, "isReordered": uuid == "tuner-trials"}
        for uuid, name in sections.items()]}


def check_port(host: str, port: int) -> None:
    """UserError unless a server could listen on `host`:`port` now."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise UserError(f"--host {host}: {err.strerror}") from None
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"--port {port}: port {port} of {host} is in use (another "
                                "server?); pick a free one with --port") from None
            raise UserError(f"--host {host} --port {port}: cannot listen there "
                            f"({err.strerror})") from None


def serve(tracking_uri: str, host: str, port: int, ready: Callable[[str], None]) -> NoReturn:
    """Run `mlflow server` on the store until Ctrl-C (its KeyboardInterrupt is raised once the
    server has stopped); `ready(base url)` once it answers. ServerFailed when it does not start
    or exits on its own."""
    base = local_url(host, port)
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": tracking_uri,  # not on its command line
           **_security_settings(_url_host(host), port)}
    # Its job runner (GenAI scorers, trace archival: 8 processes) has nothing to do here
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
         "--workers", "1"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    reader = threading.Thread(target=tail.extend, args=(server.stdout,), daemon=True)
    reader.start()

    def failed(message: str) -> ServerFailed:
        reader.join(timeout=2)
        return ServerFailed(message, [redact(line.rstrip()) for line in tail])

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(base):
            if server.poll() is not None:
                raise failed(f"mlflow server exited with code {server.returncode} before it "
                             "answered")
            if time.monotonic() > deadline:
                raise failed(f"mlflow server did not answer at {base}/health within "
                             f"{START_TIMEOUT_S} s")
            time.sleep(0.25)
        ready(base)
        code = server.wait()
        raise failed(f"mlflow server exited with code {code}")
    finally:
        _stop(server)


def _answers(base: str) -> bool:
    """Whether the server at `base` answers its health check (through no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _security_settings(url_host: str, port: int) -> dict[str, str]:
    """MLflow's server takes requests addressed to localhost or a private address only, and POSTs
    from a localhost page only, its own included: one that listens on another address is told
    that address too, or its UI could not list the runs."""
    if url_host in LOCAL_HOSTS:
        return {}
    from mlflow.server.security_utils import get_default_allowed_hosts

    hosts = os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS") or ",".join(get_default_allowed_hosts())
    origins = os.environ.get("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS")
    origin = f"http://{url_host}:{port}"
    return {"MLFLOW_SERVER_ALLOWED_HOSTS": f"{hosts},{url_host}:{port}",
            "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": f"{origins},{origin}" if origins else origin}


def _stop(server: subprocess.Popen) -> None:
    """Stop the server's process group (uvicorn and its worker with it): SIGTERM, then SIGKILL
    after a grace period, or at once on another Ctrl-C."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
        try:
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline:
                server.poll()  # reaps the group's leader once it exits
                os.killpg(server.pid, 0)  # ProcessLookupError: every process of it has exited
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()
