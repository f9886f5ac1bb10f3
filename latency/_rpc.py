"""TVM RPC plumbing: a tracker, device servers that join it (`hwnas devices serve`), and the boards of a key.

A key may have several boards (a board farm): the tracker hands each session request the next free one.
`tracker_boards` lists them; `claim_board` says which board a request got, so that a measurement names the
board that timed it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hwnas.exceptions import MeasurementError
from hwnas.kernels import rpc_tuning_runner
from hwnas.latency._devices import DeviceProfile, parse_tracker, probe_fingerprint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(*, tracker: str, key: str, host: str = "0.0.0.0", port: int = 9090) -> list[str]:
    """TVM's RPC server, registered at `tracker` under `key` (what a Raspberry Pi runs), answering the board's
    fingerprint too (`hwnas.latency._rpc_server`)."""
    parse_tracker(tracker)
    return [sys.executable, "-m", "hwnas.latency._rpc_server", "--host", host, "--port", str(port),
            "--port-end", str(port + 100), "--tracker", tracker, "--key", key]


def tracker_command(*, host: str = "127.0.0.1", port: int = 9190) -> list[str]:
    return [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
            "--port-end", str(port + 1)]


def tracker_boards(tracker: str, key: str, *, timeout_s: float = 5.0) -> list[str]:
    """The boards ("HOST:PORT" of their RPC servers) registered at `tracker` under `key`, busy or free.

    One clear line when the tracker cannot be reached or has no board for the key.
    """
    from tvm import rpc

    host, port = parse_tracker(tracker)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
        summary = rpc.connect_tracker(host, port).summary()
    except (OSError, RuntimeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
        raise MeasurementError(f"cannot reach TVM RPC tracker {host}:{port}: {why}") from None
    boards = sorted(f"{a[0]}:{a[1]}" for s in summary.get("server_info", [])
                    if s.get("key") == f"server:{key}" and (a := s.get("addr")))
    if not boards:
        keys = sorted(set(summary.get("queue_info", {})) | {str(s.get("key", ""))[len("server:"):]
                                                           for s in summary.get("server_info", [])})
        raise MeasurementError(f"TVM RPC tracker {host}:{port} has no device with key '{key}' "
                               f"(keys: {', '.join(k for k in keys if k) or 'none'}); start one with "
                               f"`hwnas devices serve --tracker {host}:{port} --key {key}`")
    return boards


def claim_board(tracker: str, key: str, *, wait_s: float = 600.0) -> tuple[str, int, str]:
    """The next free board of `key` as the tracker hands it out: (host, port, match key) to open a session with
    (`tvm.rpc.connect(host, port, key=match_key, ...)`), waiting at most `wait_s` for one to be free.

    TVM's `TrackerSession.request` does the same exchange but keeps the board's address to itself.
    """
    from tvm.rpc import base

    with socket.create_connection(parse_tracker(tracker), timeout=wait_s) as sock:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
            raise MeasurementError(f"{tracker} is not a TVM RPC tracker")
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        try:
            code, (host, port, match_key) = base.recvjson(sock)
        except TimeoutError:
            raise MeasurementError(f"no board with key '{key}' at tracker {tracker} was free within "
                                   f"{wait_s:.0f} s") from None
    if code != base.TrackerCode.SUCCESS:
        raise MeasurementError(f"tracker {tracker} refused a session for key '{key}' ({code})")
    return str(host), int(port), str(match_key)


def tuning_runner(device: DeviceProfile, *, session_timeout_s: float = 120.0) -> Any | None:
    """Where `device`'s candidate kernels are timed while tuning: its boards through the tracker (all of them at
    once) for a remote device, None (this machine: its CPU, or its GPU) for a local one. One clear line, before
    any building, when the device has nothing to tune or its tracker has no board."""
    if device.runtime != "tvm":
        raise MeasurementError(f"device '{device.name}' runs {device.runtime}, not TVM: it has no kernels to tune")
    if device.location == "ray":
        raise MeasurementError(f"device '{device.name}' is a Ray node: tune it there (`hwnas kernels tune` on the "
                               f"node, with the same workspace) or serve it over RPC")
    if device.location != "rpc":
        return None
    host, port = parse_tracker(str(device.tracker))
    boards = tracker_boards(str(device.tracker), str(device.rpc_key))
    return rpc_tuning_runner(tracker_host=host, tracker_port=port, key=str(device.rpc_key), boards=len(boards),
                             session_timeout_s=session_timeout_s)


def tuning_target(device: DeviceProfile) -> dict[str, Any]:
    """The target `device` is tuned for: its own, with the cores MetaSchedule splits parallel loops by
    (`num-cores`) when the target leaves them out (a board's target usually does; MetaSchedule refuses to tune
    a CPU without them): the threads its protocol pins, else the cores of its probed fingerprint, so that
    kernels are tuned for the threads they will be timed with."""
    target = dict(device.target)
    if target.get("kind") == "llvm" and "num-cores" not in target:
        cores = device.protocol.threads or probe_fingerprint(device).get("cores")
        if not isinstance(cores, int) or cores < 1:
            raise MeasurementError(f"device '{device.name}': its target has no 'num-cores' and the board did not "
                                   f"report its cores; add \"num-cores\" to the target to tune it")
        target["num-cores"] = cores
    return target


def wait_for_key(tracker: str, key: str, *, timeout_s: float = 60.0,
                 servers: Sequence[subprocess.Popen[bytes]] = (), boards: int = 1) -> None:
    """Block until `boards` servers with `key` have joined the tracker (failing at once if one of `servers`
    exits first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for server in servers:
            if server.poll() is not None:
                raise MeasurementError(f"the RPC server for key '{key}' exited (status {server.returncode}) "
                                       f"before joining tracker {tracker}")
        with contextlib.suppress(MeasurementError):
            if len(tracker_boards(tracker, key)) >= boards:
                return
        time.sleep(0.5)
    raise MeasurementError(f"{boards} RPC server(s) with key '{key}' did not join tracker {tracker} "
                           f"within {timeout_s:.0f} s")


@dataclasses.dataclass
class LoopbackFarm:
    """A tracker and its boards' server processes on 127.0.0.1 (see `loopback_farm`)."""

    tracker: str
    servers: list[subprocess.Popen[bytes]]

    def kill(self, board: int) -> None:
        """Make board `board` vanish as a board that loses power would: its server and sessions die at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.servers[board].pid, signal.SIGKILL)
        self.servers[board].wait()


@contextlib.contextmanager
def loopback_farm(key: str = "loopback", *, boards: int = 1, server: Callable[[str], list[str]] | None = None,
                  join_timeout_s: float = 60.0, log: Path | None = None) -> Iterator[LoopbackFarm]:
    """A tracker and `boards` servers on 127.0.0.1 under one key (tests, benchmarks, and a stand-in for remote
    boards).

    `server(tracker)` is a server's command (default: hwnas's server in this Python), e.g. an emulated board's
    (scripts/aarch64-rpc-server.sh); servers take the next free port. Their output goes to `log` when given.
    """
    port = free_port()
    tracker = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(tracker_command(port=port), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    with contextlib.ExitStack() as stack:
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > deadline:
                    raise MeasurementError(f"RPC tracker did not start on {tracker}")
                time.sleep(0.2)
            out = stack.enter_context(log.open("ab")) if log else subprocess.DEVNULL
            servers = []
            for _ in range(boards):
                cmd = server(tracker) if server else server_command(tracker=tracker, key=key, host="127.0.0.1",
                                                                    port=free_port())
                servers.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True))
            procs += servers
            wait_for_key(tracker, key, timeout_s=join_timeout_s, servers=servers, boards=boards)
            yield LoopbackFarm(tracker, servers)
        finally:
            _stop(procs)


@contextlib.contextmanager
def loopback_rpc(key: str = "loopback", *, server: Callable[[str], list[str]] | None = None,
                 join_timeout_s: float = 60.0, log: Path | None = None) -> Iterator[str]:
    """A tracker and one server on 127.0.0.1 (tests, and a stand-in for a remote board); yields HOST:PORT."""
    with loopback_farm(key, server=server, join_timeout_s=join_timeout_s, log=log) as farm:
        yield farm.tracker


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop each process's whole group (servers and trackers leave popen_worker children); SIGKILL then
    takes whatever outlived SIGTERM, so a test never leaves a server behind."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
