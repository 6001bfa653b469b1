"""`tuner ui`: MLflow's server on a study's tracking store (the view it opens: tuner.store.view)."""

from __future__ import annotations

import collections
import contextlib
import errno
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
from typing import NoReturn

from tuner.errors import UserError
from tuner.store.redact import redact
from tuner.store.view import local_url, url_host

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
           **_security_settings(url_host(host), port)}
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


def _security_settings(host: str, port: int) -> dict[str, str]:
    """MLflow's server takes requests addressed to localhost or a private address only, and POSTs
    from a localhost page only, its own included: one that listens on another address is told
    that address too, or its UI could not list the runs."""
    if host in LOCAL_HOSTS:
        return {}
    from mlflow.server.security_utils import get_default_allowed_hosts

    hosts = os.environ.get("MLFLOW_SERVER_ALLOWED_HOSTS") or ",".join(get_default_allowed_hosts())
    origins = os.environ.get("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS")
    origin = f"http://{host}:{port}"
    return {"MLFLOW_SERVER_ALLOWED_HOSTS": f"{hosts},{host}:{port}",
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
