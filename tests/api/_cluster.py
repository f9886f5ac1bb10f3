"""A real cluster for tests: `scripts/cluster.sh up` (PostgreSQL or SQLite, a Ray head, a Ray worker node,
the TVM RPC tracker, the API) on free ports with a state directory of its own, and always `down` after.

    with cluster(tmp_path, db_url=f"sqlite:///{tmp_path / 'hwnas.db'}") as c:
        httpx.get(f"{c.api_url}/healthz")
        subprocess.run([..., "hwnas", "search", ...], env=c.env)   # clients see this cluster

`ClusterInfo.env` is the environment a client of the cluster needs (the database URL, the Ray address and
its auth token, $HWNAS_HOME). After the block, `down_leftovers` lists the processes `down` failed to stop
(they are then killed, so a failing test still leaves no Ray behind).
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cluster.sh"
PARTS = ("api", "tracker", "ray-worker", "ray-head")  # the process groups the script records (NAME.pid)


class ClusterError(RuntimeError):
    """`cluster.sh up` failed; the message holds its error line and the log tail it printed."""


@dataclass
class ClusterInfo:
    api_url: str  # http://127.0.0.1:PORT
    ray_address: str  # 127.0.0.1:PORT, the head's GCS
    tracker: str  # HOST:PORT of the TVM RPC tracker
    db_url: str
    state_dir: Path  # pid files, logs (NAME.log), the env file, Ray's auth token
    env: dict[str, str]  # os.environ plus what a client of this cluster needs
    down_leftovers: list[int] = field(default_factory=list)  # filled after the block: pids `down` left alive

    @property
    def tracker_host_port(self) -> tuple[str, int]:
        host, port = self.tracker.rsplit(":", 1)
        return host, int(port)

    def log(self, part: str) -> str:
        """The log of one part ('api', 'tracker', 'ray-head', 'ray-worker'), '' when there is none."""
        path = self.state_dir / f"{part}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> set[int]:
        """Live processes of this cluster: every member of the recorded process groups and the raylets'
        children (Ray's worker processes, which sit in groups of their own)."""
        return cluster_pids(self.state_dir)


def free_port() -> int:
    """A TCP port nobody listens on now, from 30000-32767: above Ray's worker port ranges and below the
    kernel's ephemeral range, so Ray's own outgoing connections cannot take it before the part binds it."""
    for _ in range(200):
        port = random.randint(30000, 32767)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # all taken (unlikely): let the kernel pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _procs() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, pgid, state, comm) of every live (non-zombie) process."""
    out: dict[int, tuple[int, int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        state, ppid, pgid = fields[0], int(fields[1]), int(fields[2])
        if state not in ("Z", "X"):
            out[int(entry)] = (ppid, pgid, state, comm)
    return out


def cluster_pids(state_dir: Path) -> set[int]:
    groups = set()
    for part in PARTS:
        f = state_dir / f"{part}.pid"
        if f.exists() and f.read_text().strip().isdigit():
            groups.add(int(f.read_text().strip()))
    procs = _procs()
    members = {pid for pid, (_, pgid, _, _) in procs.items() if pgid in groups}
    raylets = {pid for pid in members if procs[pid][3] == "raylet"}
    return members | {pid for pid, (ppid, _, _, _) in procs.items() if ppid in raylets}


def alive(pids: set[int]) -> list[int]:
    """Those of `pids` that still run (zombies count as gone)."""
    procs = _procs()
    return sorted(p for p in pids if p in procs)


def _read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    return env


def script_env(state_dir: Path, *, db_url: str, api_port: int, ray_port: int, tracker_port: int,
               extra: Mapping[str, str] | None = None, timeout_s: int = 90) -> dict[str, str]:
    """The environment `cluster.sh` runs under: this interpreter's environment, no Ray of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "HWNAS_RAY_ADDRESS"}
    env.update({
        "HWNAS_CLUSTER_DIR": str(state_dir),
        "HWNAS_DB_URL": db_url,
        "HWNAS_API_PORT": str(api_port),
        "HWNAS_RAY_PORT": str(ray_port),
        "HWNAS_TRACKER_PORT": str(tracker_port),
        "HWNAS_PYTHON": sys.executable,
        "HWNAS_CLUSTER_TIMEOUT": str(timeout_s),
    })
    env.update(extra or {})
    return env


def run_script(command: str, env: Mapping[str, str], *, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), command], env=dict(env), capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO)


@contextlib.contextmanager
def cluster(tmp_dir: Path, *, db_url: str, api_port: int | None = None, ray_port: int | None = None,
            tracker_port: int | None = None, env: Mapping[str, str] | None = None,
            timeout_s: int = 90) -> Iterator[ClusterInfo]:
    """The script's cluster under `tmp_dir` (state in tmp_dir/cluster, $HWNAS_HOME tmp_dir/home unless `env`
    sets it), on free ports unless given; `down` always runs after, and whatever it left alive is killed.

    `env`: extra environment for every part (the API, the Ray nodes and so the job actors).
    Raises ClusterError when `up` fails (after stopping what it had started).
    """
    state = Path(tmp_dir) / "cluster"
    extra = {"HWNAS_HOME": str(Path(tmp_dir) / "home"), **(env or {})}
    Path(extra["HWNAS_HOME"]).mkdir(parents=True, exist_ok=True)
    run_env = script_env(state, db_url=db_url, api_port=api_port or free_port(), ray_port=ray_port or free_port(),
                         tracker_port=tracker_port or free_port(), extra=extra, timeout_s=timeout_s)
    seen: set[int] = set()
    info: ClusterInfo | None = None
    completed = False
    try:
        up = run_script("up", run_env, timeout_s=6 * timeout_s)
        seen |= cluster_pids(state)
        if up.returncode != 0:
            tail = "\n".join((up.stdout + up.stderr).strip().splitlines()[-25:])
            raise ClusterError(f"cluster.sh up failed (exit {up.returncode}):\n{tail}")
        client = _read_env_file(state / "env")
        info = ClusterInfo(api_url=client["HWNAS_API_URL"], ray_address=client["HWNAS_RAY_ADDRESS"],
                           tracker=client["HWNAS_TRACKER"], db_url=db_url, state_dir=state,
                           env={**run_env, **client})
        yield info
        completed = True
    finally:
        seen |= cluster_pids(state)
        try:
            down = run_script("down", run_env, timeout_s=120)
            down_error = f"exit {down.returncode}: {down.stderr.strip()}" if down.returncode else ""
        except subprocess.TimeoutExpired:
            down_error = "timed out"
        leftovers = alive(seen)
        for pid in leftovers:  # the safety net: no test leaves Ray processes running
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        if info is not None:
            info.down_leftovers = leftovers
        if down_error and completed:  # never masks the error that ended the block
            raise ClusterError(f"cluster.sh down failed ({down_error})")
