"""TVM RPC plumbing: a tracker, and device servers that join it (`hwnas devices serve`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from hwnas.exceptions import MeasurementError
from hwnas.latency._runner import parse_tracker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(*, tracker: str, key: str, host: str = "0.0.0.0", port: int = 9090) -> list[str]:
    """TVM's RPC server, registered at `tracker` under `key` (what a Raspberry Pi runs)."""
    parse_tracker(tracker)
    return [sys.executable, "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port),
            "--port-end", str(port + 100), "--tracker", tracker, "--key", key]


def tracker_command(*, host: str = "127.0.0.1", port: int = 9190) -> list[str]:
    return [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
            "--port-end", str(port + 1)]


def wait_for_key(tracker: str, key: str, *, timeout_s: float = 60.0) -> None:
    """Block until a server with `key` is free at the tracker."""
    from tvm import rpc

    host, port = parse_tracker(tracker)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, RuntimeError):
            if key in rpc.connect_tracker(host, port).summary().get("queue_info", {}):
                return
        time.sleep(0.5)
    raise MeasurementError(f"no RPC server with key '{key}' joined tracker {tracker} within {timeout_s:.0f} s")


@contextlib.contextmanager
def loopback_rpc(key: str = "loopback") -> Iterator[str]:
    """A tracker and one server on 127.0.0.1 (tests, and a stand-in for a remote board); yields HOST:PORT."""
    port = free_port()
    tracker = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(tracker_command(port=port), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise MeasurementError(f"RPC tracker did not start on {tracker}")
            time.sleep(0.2)
        procs.append(subprocess.Popen(server_command(tracker=tracker, key=key, host="127.0.0.1", port=free_port()),
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        wait_for_key(tracker, key)
        yield tracker
    finally:
        for p in procs:  # the whole process group: the server forks a popen worker
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
