"""Real services for end-to-end tests, as plain context managers: PostgreSQL, an MLflow tracking
server on it, and a Ray head (with a second node, if asked), each on 127.0.0.1 on a free port,
each torn down on exit.

    from services import ServiceUnavailable, mlflow_server, postgres_server, ray_head

    try:
        with postgres_server() as pg, mlflow_server(pg.uri, artifacts_dir) as tracking_uri:
            ...
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))

They are what docker/compose.yaml runs in containers, started without containers. Nothing here
touches a process that it did not start (no `ray stop`, no `pg_ctl` on another cluster).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_BINARIES = ("initdb", "pg_ctl", "postgres")


class ServiceUnavailable(RuntimeError):
    """A service cannot be started on this machine (not installed, no way to run it): skip."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


# PostgreSQL ---------------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The folder holding initdb, pg_ctl and postgres, or raise ServiceUnavailable."""
    found = shutil.which("pg_ctl")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    # Debian keeps them out of PATH, one folder per major version: take the newest.
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(versions, key=lambda p: int(Path(p).parent.name)
                                           if Path(p).parent.name.isdigit() else 0, reverse=True)]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in PG_BINARIES):
            return folder
    raise ServiceUnavailable(
        "PostgreSQL is not installed (apt-get install postgresql): no initdb/pg_ctl/postgres on "
        "PATH or in /usr/lib/postgresql/*/bin")


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI MLflow takes as --backend-store-uri."""
        # +psycopg2: SQLAlchemy 2.1 would otherwise pick psycopg 3, which is not installed.
        return (f"postgresql+psycopg2://{self.user}:{self.password}"
                f"@{self.host}:{self.port}/{self.database}")


@contextlib.contextmanager
def postgres_server(database: str = "mlflow", user: str = "tuner") -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with password authentication and `database`.

    PostgreSQL refuses to run as root; as root, the server runs as the `postgres` account that
    Debian's package creates (through runuser), in a folder that account owns.
    """
    bindir = postgres_bin_dir()
    try:
        import psycopg2  # the dev group's driver, which MLflow uses too
    except ImportError as exc:  # pragma: no cover - a dev dependency
        raise ServiceUnavailable(f"psycopg2 is not importable: {exc}") from exc

    prefix: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ServiceUnavailable(
                "running as root and there is no `postgres` account to run PostgreSQL as "
                "(Debian's postgresql package creates it)") from exc
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ServiceUnavailable("running as root and runuser (util-linux) is missing")
        prefix = [runuser, "-u", "postgres", "--"]

    # Not under pytest's tmp_path: as root that lies in a 0700 folder the postgres account cannot
    # enter. A short path under /tmp also keeps the Unix socket path within its length limit.
    root = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
    password = secrets.token_hex(16) + " q'\"x"  # a blank and quotes, which tuner must mask too
    pwfile, data, log = root / "pwfile", root / "data", root / "postgres.log"
    pwfile.write_text(password + "\n")
    if owner is not None:
        for path in (root, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()

    def run(*args: str, timeout: float = 60) -> None:
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=root)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}\n{_tail(log)}")

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=scram-sha-256",
            f"--pwfile={pwfile}", "--encoding=UTF8", "--no-instructions")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} "
                   "-c fsync=off -c full_page_writes=off")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
            "-t", "60", "start", timeout=90)
        started = True
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password,
                                dbname="postgres", connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{database}"')
        finally:
            conn.close()
        yield Postgres("127.0.0.1", port, user, password, database)
    finally:
        if started:
            subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


# MLflow -------------------------------------------------------------------------------------


def _stop_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group this module started `proc` in, then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # Children may outlive the leader; the group id is still the leader's pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Wait until GET `url` answers 200, failing early (with the log) if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts_dir: Path | str, timeout: float = 180,
                  port: int | None = None, destination: str | None = None) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 (`port`, else a free one) on `backend_store_uri`, serving
    artifacts from `artifacts_dir` (or from `destination`, an object store's URI, its log still
    beside `artifacts_dir`); yields its http:// tracking URI once /health answers."""
    artifacts = Path(artifacts_dir)
    artifacts.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = artifacts.parent / f"mlflow-server-{port}.log"
    # As docker/compose.yaml runs it: no job runner (its eight processes took 3 s of the start)
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--serve-artifacts", "--artifacts-destination", destination or str(artifacts)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=artifacts.parent, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_http(f"{uri}/health", proc, log, timeout)
        yield uri
    finally:
        _stop_group(proc)


# Ray ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayNode:
    """A node that joined the head: its Ray node id, and its temporary folder (its TMPDIR too)."""

    node_id: str
    temp_dir: Path


@dataclass(frozen=True)
class RayHead:
    address: str  # for ray.init(address=...) and `tuner search --address`
    env: dict[str, str]  # what a driver's environment needs: its token, and no uv hook
    worker: RayNode | None = None
    dashboard: str = ""  # http://127.0.0.1:PORT of its dashboard's job server, where it has one


def _node_id(temp: Path) -> str | None:
    """The id of the node whose temporary folder is `temp`, once it is up (Ray names its port
    files after it)."""
    found = sorted((temp / "session_latest").glob("runtime_env_agent_port_*"))
    return found[0].name.rsplit("_", 1)[1] if found else None


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, worker_cpus: int = 0, timeout: float = 120,
             dashboard: bool = False) -> Iterator[RayHead]:
    """`ray start --head --block` on 127.0.0.1 (a free GCS port, no dashboard, its own temp
    folder, token authentication with a fresh token); yields its address and the environment a
    driver needs: `subprocess.run(..., env={**os.environ, **head.env})`. With `worker_cpus`, a
    second node joins it (`ray start --address`) with that many CPUs and a temporary folder of
    its own, which is also its processes' TMPDIR. With `dashboard`, the head runs Ray's
    dashboard and its job server (`ray[default]`) on free ports of 127.0.0.1.

    The auth mode is explicit because Ray >= 2.59 turns token auth on by itself when
    ~/.ray/auth_token exists, which would make the cluster depend on the machine's history.
    Each node is stopped by signalling its own process group, never with `ray stop`, which would
    end every Ray cluster on the machine.
    """
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        raise ServiceUnavailable(f"no `ray` command beside {sys.executable}")
    port = free_port()
    # RAY_ENABLE_UV_RUN_RUNTIME_ENV as `tuner search` sets it: a driver run under `uv run pytest`
    # would have Ray start each worker through `uv run` again (a minute, or past a timeout)
    head = RayHead(f"127.0.0.1:{port}",
                   {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    env = {**os.environ, **head.env, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-gpus=0", "--disable-usage-stats"]
    served = ["--include-dashboard=false"]
    if dashboard:  # the agent's port too: the default (52365) may be another cluster's
        served = ["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={(web := free_port())}",
                  f"--dashboard-agent-listen-port={free_port()}"]
        head = dataclasses.replace(head, dashboard=f"http://127.0.0.1:{web}")
    with contextlib.ExitStack() as nodes:
        started = nodes.enter_context(_ray_node(
            [str(ray), "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}",
             *served, *common], env))
        deadline = time.monotonic() + timeout
        while subprocess.run([str(ray), "health-check", "--address", head.address],
                             capture_output=True, env=env, timeout=60).returncode != 0:
            _wait_a_second(*started, deadline)
        while dashboard and subprocess.run(
                [str(ray), "job", "list", "--address", head.dashboard], check=False,
                capture_output=True, env=env, timeout=60).returncode != 0:
            _wait_a_second(*started, deadline)
        if worker_cpus:
            started = nodes.enter_context(_ray_node(
                [str(ray), "start", f"--address={head.address}", f"--num-cpus={worker_cpus}",
                 *common], env, own_tmpdir=True))
            while (node_id := _node_id(started[1])) is None:
                _wait_a_second(*started, deadline)
            head = dataclasses.replace(head, worker=RayNode(node_id, started[1]))
        yield head


def _wait_a_second(proc: subprocess.Popen, temp: Path, deadline: float) -> None:
    """Wait a second for a node to come up: raise once past `deadline`, or when its `ray start`
    (`proc`, logging in its temporary folder `temp`) has exited."""
    log = temp / "ray-start.log"
    if proc.poll() is not None:
        raise RuntimeError(f"ray start exited with {proc.returncode}:\n{_tail(log)}")
    if time.monotonic() > deadline:
        raise RuntimeError(f"the Ray node in {temp} did not come up in time:\n{_tail(log)}")
    time.sleep(1)


@contextlib.contextmanager
def _ray_node(cmd: list[str], env: dict[str, str],
              own_tmpdir: bool = False) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`cmd` (a `ray start --block`) with a temporary folder of its own (its TMPDIR too where
    `own_tmpdir`), in a process group of its own, stopped on exit; yields it and the folder."""
    # Ray's Unix socket paths must stay short: a folder directly under /tmp.
    temp = Path(tempfile.mkdtemp(prefix="tuner-ray-", dir="/tmp"))
    env = {**env, "TMPDIR": str(temp)} if own_tmpdir else env
    with open(temp / "ray-start.log", "wb") as out:
        proc = subprocess.Popen([*cmd, f"--temp-dir={temp}"], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc, temp
    finally:
        # `ray start --block` does not exit on SIGTERM itself; its services do, or get SIGKILL.
        _stop_group(proc, grace=5)
        shutil.rmtree(temp, ignore_errors=True)
