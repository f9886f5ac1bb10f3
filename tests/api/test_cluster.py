"""The cluster topology: docker-compose.yml and the Dockerfile checked for structure (no Docker engine runs
here), and the same topology brought up for real as processes by scripts/cluster.sh.

Every structure check is a function of the parsed file; `test_*_checks_catch` breaks the file in the ways
each check exists for and asserts the check then fails.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.api._cluster import REPO, SCRIPT, alive, cluster, free_port, run_script, script_env

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SERVICES = {"postgres", "ray-head", "ray-worker", "api", "tracker"}
APP_SERVICES = SERVICES - {"postgres"}  # the ones built from the Dockerfile
RAY_PORT, API_PORT, TRACKER_PORT = 6380, 8000, 9190

Compose = dict[str, Any]

# ------------------------------------------------------------------------------------------ compose helpers


def interpolate(value: str) -> str:
    """Compose's variable substitution with nothing set: ${VAR:-default} / ${VAR-default} -> default."""
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)
    assert not re.search(r"(?<!\$)\$\{?[A-Za-z_]", value), f"a variable without a default in {value!r}"
    return value.replace("$$", "$")


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def argv(service: dict[str, Any]) -> list[str]:
    """The command's words; a `sh -c "..."` command's script split into words too."""
    command = service.get("command") or []
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    if words[:2] in (["sh", "-c"], ["bash", "-c"]):
        words = words[:2] + shlex.split(words[2])
    return [interpolate(w) for w in words]


def option(words: list[str], name: str) -> list[str]:
    """Every value of `--name=value` / `--name value` in `words`."""
    values = []
    for i, w in enumerate(words):
        if w.startswith(name + "="):
            values.append(w.split("=", 1)[1])
        elif w == name and i + 1 < len(words):
            values.append(words[i + 1])
    return values


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(str(t) for t in test)


def container_ports(service: dict[str, Any]) -> set[int]:
    """The container side of each published port ("8000", "H:8000", "${X:-8000}:8000", long form)."""
    ports = set()
    for p in service.get("ports") or []:
        target = p.get("target") if isinstance(p, dict) else interpolate(str(p)).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


# ------------------------------------------------------------------------------------------- compose checks


def check_services(c: Compose) -> None:
    assert set(c["services"]) == SERVICES


def check_healthchecks(c: Compose) -> None:
    for name, service in c["services"].items():
        hc = service.get("healthcheck") or {}
        test = hc.get("test")
        assert test and not hc.get("disable"), f"{name}: no healthcheck"
        if isinstance(test, list):  # ["NONE"] turns the image's check off
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: healthcheck off: {test!r}"


def check_worker_scalable(c: Compose) -> None:
    worker = c["services"]["ray-worker"]
    assert "container_name" not in worker, "a fixed container_name prevents --scale"
    assert not worker.get("ports"), "a host port prevents --scale"
    assert "hostname" not in worker, "replicas would share one hostname"
    assert "ray-head" in (worker.get("depends_on") or {}), "the worker joins the head: it must wait for it"


def check_api_depends_on_healthy(c: Compose) -> None:
    deps = c["services"]["api"].get("depends_on") or {}
    assert isinstance(deps, dict), "the list form of depends_on waits for nothing but the start"
    for dep in ("postgres", "ray-head"):
        assert deps.get(dep, {}).get("condition") == "service_healthy", f"api must wait for {dep} to be healthy"


def check_one_image(c: Compose) -> None:
    builds, images = set(), set()
    for name in APP_SERVICES:
        service = c["services"][name]
        build = service.get("build")
        assert build is not None, f"{name}: not built from the Dockerfile"
        context, dockerfile = (build, "Dockerfile") if isinstance(build, str) else (
            build.get("context", "."), build.get("dockerfile", "Dockerfile"))
        builds.add((str((COMPOSE.parent / context).resolve()), dockerfile))
        images.add(service.get("image"))
    assert len(builds) == 1 and len(images) == 1, f"more than one image: {builds} {images}"
    (context, dockerfile), = builds
    assert Path(context) == REPO and (Path(context) / dockerfile).resolve() == DOCKERFILE
    postgres = c["services"]["postgres"]
    assert str(postgres.get("image", "")).startswith("postgres:16") and "build" not in postgres
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres.get("volumes") or []), \
        "the database must live in a volume"


def check_env(c: Compose) -> None:
    pg = env_of(c["services"]["postgres"])
    for name in ("api", "ray-head", "ray-worker"):  # jobs run on any Ray node: each sees the same settings
        env = env_of(c["services"][name])
        assert "HWNAS_DB_URL" in env and "HWNAS_RAY_ADDRESS" in env and "HWNAS_HOME" in env, name
        url = urlsplit(env["HWNAS_DB_URL"])
        assert url.scheme.startswith("postgresql") and url.hostname == "postgres", env["HWNAS_DB_URL"]
        assert url.path.lstrip("/") == pg["POSTGRES_DB"], "the API's database is the one postgres creates"
        assert (url.username, url.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
        home = env["HWNAS_HOME"]
        assert any(str(v).split(":")[1:2] == [home] for v in c["services"][name].get("volumes") or []), \
            f"{name}: $HWNAS_HOME ({home}) must be the shared volume"


def check_ray_port(c: Compose) -> None:
    s = c["services"]
    head = argv(s["ray-head"])
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head, head
    assert option(head, "--port") == [str(RAY_PORT)], head
    for name in ("ray-worker", "api"):  # the API's container is a Ray node too (a driver needs one)
        words = argv(s[name])
        assert option(words, "--address") == [f"ray-head:{RAY_PORT}"], f"{name}: {words}"
    assert env_of(s["api"])["HWNAS_RAY_ADDRESS"] == f"ray-head:{RAY_PORT}"
    assert f"127.0.0.1:{RAY_PORT}" in healthcheck_text(s["ray-head"])


def check_api_and_tracker_ports(c: Compose) -> None:
    api, tracker = c["services"]["api"], c["services"]["tracker"]
    words = argv(api)
    serve = words[words.index("hwnas"):] if "hwnas" in words else []
    assert serve[:2] == ["hwnas", "serve"], words
    assert option(serve, "--port") == [str(API_PORT)] and option(serve, "--host") == ["0.0.0.0"]
    assert container_ports(api) == {API_PORT}
    assert f":{API_PORT}/healthz" in healthcheck_text(api)
    words = argv(tracker)
    assert words[:3] == ["python", "-m", "tvm.exec.rpc_tracker"], words
    assert option(words, "--port") == [str(TRACKER_PORT)]
    assert option(words, "--port-end") == [str(TRACKER_PORT + 1)], "the tracker must not move to another port"
    assert container_ports(tracker) == {TRACKER_PORT}
    assert str(TRACKER_PORT) in healthcheck_text(tracker)


COMPOSE_CHECKS: list[Callable[[Compose], None]] = [
    check_services, check_healthchecks, check_worker_scalable, check_api_depends_on_healthy, check_one_image,
    check_env, check_ray_port, check_api_and_tracker_ports]


@pytest.fixture(scope="module")
def compose() -> Compose:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.parametrize("check", COMPOSE_CHECKS, ids=lambda f: f.__name__)
def test_compose(compose: Compose, check: Callable[[Compose], None]) -> None:
    check(compose)


def _set(path: str, value: Any) -> Callable[[Compose], None]:
    def mutate(c: Compose) -> None:
        *keys, last = path.split("/")
        node = c["services"]
        for k in keys:
            node = node.setdefault(k, {})
        if value is None:
            del node[last]
        else:
            node[last] = value
    return mutate


def _replace_in_command(service: str, old: str, new: str) -> Callable[[Compose], None]:
    def mutate(c: Compose) -> None:
        command = c["services"][service]["command"]
        c["services"][service]["command"] = [w.replace(old, new) for w in command] \
            if isinstance(command, list) else command.replace(old, new)
    return mutate


def _rename_env(service: str, old: str, new: str) -> Callable[[Compose], None]:
    def mutate(c: Compose) -> None:
        env = dict(c["services"][service]["environment"])
        env[new] = env.pop(old)
        c["services"][service]["environment"] = env
    return mutate


BROKEN_COMPOSE = {  # id: (how the file is broken, the check that must catch it)
    "no-tracker": (lambda c: c["services"].pop("tracker"), check_services),
    "worker-no-healthcheck": (_set("ray-worker/healthcheck", None), check_healthchecks),
    "api-healthcheck-off": (_set("api/healthcheck", {"test": ["NONE"]}), check_healthchecks),
    "worker-container-name": (_set("ray-worker/container_name", "ray-worker"), check_worker_scalable),
    "worker-host-port": (_set("ray-worker/ports", ["6381:6381"]), check_worker_scalable),
    "api-waits-for-start-only": (_set("api/depends_on", ["postgres", "ray-head"]), check_api_depends_on_healthy),
    "api-ray-head-started": (_set("api/depends_on/ray-head", {"condition": "service_started"}),
                             check_api_depends_on_healthy),
    "tracker-own-dockerfile": (_set("tracker/build", {"context": ".", "dockerfile": "Dockerfile.tracker"}),
                               check_one_image),
    "worker-other-image": (_set("ray-worker/image", "rayproject/ray:latest"), check_one_image),
    "db-url-renamed": (_rename_env("api", "HWNAS_DB_URL", "DATABASE_URL"), check_env),
    "ray-address-renamed": (_rename_env("ray-worker", "HWNAS_RAY_ADDRESS", "RAY_ADDRESS"), check_env),
    "worker-joins-6379": (_replace_in_command("ray-worker", "ray-head:6380", "ray-head:6379"), check_ray_port),
    "head-on-6379": (_replace_in_command("ray-head", "--port=6380", "--port=6379"), check_ray_port),
    "api-joins-6379": (_replace_in_command("api", "ray-head:6380", "ray-head:6379"), check_ray_port),
    "api-port-8080": (_replace_in_command("api", "--port 8000", "--port 8080"), check_api_and_tracker_ports),
    "tracker-port-wanders": (_replace_in_command("tracker", "9191", "9199"), check_api_and_tracker_ports),
}


@pytest.mark.parametrize("broken", BROKEN_COMPOSE, ids=list(BROKEN_COMPOSE))
def test_compose_checks_catch(compose: Compose, broken: str) -> None:
    mutate, check = BROKEN_COMPOSE[broken]
    c = copy.deepcopy(compose)
    mutate(c)
    with pytest.raises((AssertionError, KeyError, TypeError, ValueError)):
        check(c)


def test_compose_ray_port_matches_script() -> None:
    """The script's default Ray port is compose's (6380: 6379 is Redis's on these machines)."""
    m = re.search(r"^RAY_PORT=\$\{HWNAS_RAY_PORT:-(\d+)\}$", SCRIPT.read_text(), re.M)
    assert m and int(m.group(1)) == RAY_PORT


# ------------------------------------------------------------------------------------------ the Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def check_dockerfile(text: str) -> None:
    ins = instructions(text)
    assert ins[0] == ("FROM", "python:3.11-slim"), ins[0]
    runs = [args for word, args in ins if word == "RUN"]
    assert any("apt-get install" in r and re.search(r"\bgcc\b", r) for r in runs), "gcc: export_library links"
    pips = [r for r in runs if "pip install" in r]
    assert any("-c constraints.txt" in r and re.search(r"pip install [^&;]* \.(\s|$)", r) for r in pips), \
        "the package must be installed with the constraints"
    assert any("https://download.pytorch.org/whl/cpu" in r and "-c constraints.txt" in r for r in pips), \
        "torch must come from the CPU index"
    copies = [(i, args) for i, (word, args) in enumerate(ins) if word == "COPY"]
    first_pip = next(i for i, (word, args) in enumerate(ins) if word == "RUN" and "pip install" in args)
    assert any("constraints.txt" in a or a.startswith(". ") for i, a in copies if i < first_pip)
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a user, not root"
    assert any("useradd" in r and users[-1].split(":")[0] in r for r in runs), "the user must be created"
    env = " ".join(args for word, args in ins if word == "ENV")
    home = re.search(r"HWNAS_HOME[= ](\S+)", env)
    assert home, "HWNAS_HOME must be set"
    volumes = " ".join(args for word, args in ins if word == "VOLUME")
    assert home.group(1) in volumes, "the data directory must be a volume"
    exposed = {p.split("/")[0] for word, args in ins if word == "EXPOSE" for p in args.split()}
    assert str(API_PORT) in exposed
    cmd = [args for word, args in ins if word == "CMD"]
    assert cmd, "no CMD"
    words = json.loads(cmd[-1])  # the exec form: signals reach the server
    assert words[:2] == ["hwnas", "serve"] and option(words, "--host") == ["0.0.0.0"] \
        and option(words, "--port") == [str(API_PORT)], words


def test_dockerfile() -> None:
    check_dockerfile(DOCKERFILE.read_text())


BROKEN_DOCKERFILE = {
    "runs-as-root": lambda t: re.sub(r"^USER .*$", "", t, flags=re.M),
    "no-constraints": lambda t: t.replace("-c constraints.txt", ""),
    "cuda-torch": lambda t: t.replace("https://download.pytorch.org/whl/cpu", "https://pypi.org/simple"),
    "shell-form-cmd": lambda t: re.sub(r"^CMD .*$", "CMD hwnas serve --host 0.0.0.0 --port 8000", t, flags=re.M),
    "cmd-not-the-api": lambda t: re.sub(r"^CMD .*$", 'CMD ["python"]', t, flags=re.M),
    "no-gcc": lambda t: re.sub(r"\bgcc\b", "", t),
    "no-expose": lambda t: re.sub(r"^EXPOSE .*$", "", t, flags=re.M),
    "other-base": lambda t: t.replace("FROM python:3.11-slim", "FROM python:3.12"),
}


@pytest.mark.parametrize("broken", BROKEN_DOCKERFILE, ids=list(BROKEN_DOCKERFILE))
def test_dockerfile_checks_catch(broken: str) -> None:
    text = DOCKERFILE.read_text()
    bad = BROKEN_DOCKERFILE[broken](text)
    assert bad != text, "the mutation no longer applies to the Dockerfile"
    with pytest.raises((AssertionError, StopIteration, ValueError)):
        check_dockerfile(bad)


def test_dockerignore() -> None:
    """The build context leaves out the virtualenv, git, caches and bench results."""
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for p in (".venv", ".git", ".pytest_cache", "bench/results"):
        assert p in patterns, p
    assert not any(p in patterns for p in ("pyproject.toml", "constraints.txt", "README.md", "nas"))


def test_script_syntax() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


# ------------------------------------------------------------------------------- the script's cluster, live


def tracker_summary(host: str, port: int) -> dict[str, Any]:
    """The TVM RPC tracker's SUMMARY over its own protocol (magic handshake, length-prefixed JSON)."""
    magic, summary, success = 0x2F271, 6, 0
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(struct.pack("<i", magic))
        assert struct.unpack("<i", s.recv(4))[0] == magic
        msg = json.dumps([summary]).encode()
        s.sendall(struct.pack("<i", len(msg)) + msg)
        (n,) = struct.unpack("<i", s.recv(4))
        data = b""
        while len(data) < n:
            data += s.recv(n - len(data))
    code, value = json.loads(data)
    assert code == success
    return value


def ray_nodes(address: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """The cluster's nodes, from a driver of its own (the token in `env` lets it in)."""
    code = ("import json, logging, sys, ray; ray.init(address=sys.argv[1], logging_level=logging.ERROR);"
            "print(json.dumps([{'alive': n['Alive'], 'cpus': n['Resources'].get('CPU', 0)} for n in ray.nodes()]))")
    out = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def fresh_pg_url(postgres_url: str) -> str:
    """A PostgreSQL database name that does not exist yet (the script must create it); dropped after."""
    return postgres_url.rsplit("/", 1)[0] + f"/hwnas_cluster_{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_cluster_up_down(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    db_url = f"sqlite:///{tmp_path / 'hwnas.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_pg_url")
    t0 = time.monotonic()
    try:
        with cluster(tmp_path, db_url=db_url) as c:
            t_up = time.monotonic() - t0
            r = httpx.get(f"{c.api_url}/healthz", timeout=10)
            assert r.status_code == 200 and r.json()["status"] == "ok", r.text
            assert r.json().get("database") == ("sqlite" if backend == "sqlite" else "postgresql")

            nodes = ray_nodes(c.ray_address, c.env)
            assert [n["alive"] for n in nodes] == [True, True], nodes
            assert sorted(n["cpus"] for n in nodes)[0] == 0, "the head offers no CPU (compose's topology)"
            # the token is this cluster's own: a client without it is refused
            ray = str(Path(sys.executable).parent / "ray")
            check = [ray, "health-check", "--address", c.ray_address]
            assert subprocess.run(check, env=c.env, capture_output=True, timeout=60).returncode == 0
            no_token = {k: v for k, v in c.env.items() if not k.startswith("RAY_AUTH")}
            refused = subprocess.run(check, env=no_token, capture_output=True, text=True, timeout=60)
            assert refused.returncode != 0 and "AuthenticationError" in refused.stderr, refused.stderr[-500:]

            host, port = c.tracker_host_port
            assert tracker_summary(host, port)["server_info"] == []

            status = run_script("status", c.env, timeout_s=60)
            assert status.returncode == 0, status.stdout + status.stderr
            pids = c.pids()
            again = run_script("up", c.env, timeout_s=120)  # idempotent: nothing new is started
            assert again.returncode == 0, again.stderr
            assert again.stdout.count("already running") == 4 and c.pids() == pids, again.stdout
        t_total = time.monotonic() - t0
    finally:
        if backend == "postgresql":
            _drop_database(db_url)
    assert pids and alive(pids) == [], "down left processes of the cluster running"
    assert c.down_leftovers == []
    assert run_script("down", c.env, timeout_s=60).returncode == 0  # idempotent
    assert run_script("status", c.env, timeout_s=60).returncode == 1
    print(f"cluster up in {t_up:.1f}s, test with down in {t_total:.1f}s")


def _drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    from tests.conftest import PG_ADMIN_URL

    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_cluster_up_fails_clearly_on_a_taken_port(tmp_path: Path) -> None:
    """A port in use stops `up` before anything starts, with one error line naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = script_env(tmp_path / "cluster", db_url=f"sqlite:///{tmp_path / 'hwnas.db'}", api_port=port,
                         ray_port=free_port(), tracker_port=free_port())
        r = run_script("up", env, timeout_s=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == f"cluster.sh: error: api: port {port} is taken by another " \
                                                  "process (set HWNAS_API_PORT)"
    assert not list((tmp_path / "cluster").glob("*.pid")), "nothing may have been started"
    assert run_script("down", env, timeout_s=60).returncode == 0


@pytest.mark.slow  # 40 s; the lifecycle test runs API jobs on Ray
def test_a_job_submitted_to_the_api_runs_on_the_script_cluster(tmp_path: Path, service_home: Path,
                                                               fresh_pg_url: str) -> None:
    """The integration: the API takes a job, a worker node of the script's Ray cluster runs and verifies it."""
    from hwnas.api import create_token, create_user
    from hwnas.db import Database
    from tests.api.conftest import DEVICE, ready_for_jobs

    try:
        with cluster(tmp_path, db_url=fresh_pg_url, env={"HWNAS_HOME": str(service_home)}) as c:
            with Database(fresh_pg_url) as db, pytest.MonkeyPatch.context() as mp:
                mp.setenv("HWNAS_HOME", str(service_home))
                budget_ms = ready_for_jobs(db, service_home)
                create_user(db, "alice")
                headers = {"Authorization": f"Bearer {create_token(db, 'alice')}"}
            spec = {"space": "quickstart", "device": DEVICE, "latency_ms": budget_ms, "population": 8,
                    "generations": 2, "valid_sentences": 8}
            r = httpx.post(f"{c.api_url}/jobs", json=spec, headers=headers, timeout=60)
            assert r.status_code == 201, r.text
            deadline, job = time.monotonic() + 300, r.json()
            while job["status"] not in ("finished", "failed") and time.monotonic() < deadline:
                time.sleep(1)
                job = httpx.get(f"{c.api_url}/jobs/{job['id']}", headers=headers, timeout=30).json()
            assert job["status"] == "finished", (job, c.log("api")[-3000:])
            front = httpx.get(f"{c.api_url}/jobs/{job['id']}/pareto", headers=headers, timeout=30).json()
            assert front and all(m["measured_latency_ms"] > 0 for m in front)
    finally:
        _drop_database(fresh_pg_url)
