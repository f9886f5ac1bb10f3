"""TVM RPC plumbing: a tracker, and device servers that join it (`hwnas devices serve`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hwnas.exceptions import MeasurementError
from hwnas.latency._devices import parse_tracker


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


def wait_for_key(tracker: str, key: str, *, timeout_s: float = 60.0,
                 server: subprocess.Popen[bytes] | None = None) -> None:
    """Block until a server with `key` is free at the tracker (failing at once if `server` exits first)."""
    from tvm import rpc

    host, port = parse_tracker(tracker)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise MeasurementError(f"the RPC server for key '{key}' exited (status {server.returncode}) "
                                   f"before joining tracker {tracker}")
        with contextlib.suppress(OSError, RuntimeError):
            if key in rpc.connect_tracker(host, port).summary().get("queue_info", {}):
                return
        time.sleep(0.5)
    raise MeasurementError(f"no RPC server with key '{key}' joined tracker {tracker} within {timeout_s:.0f} s")


@contextlib.contextmanager
def loopback_rpc(key: str = "loopback", *, server: Callable[[str], list[str]] | None = None,
                 join_timeout_s: float = 60.0, log: Path | None = None) -> Iterator[str]:
    """A tracker and one server on 127.0.0.1 (tests, and a stand-in for a remote board); yields HOST:PORT.

    `server(tracker)` is the server's command (default: TVM's server in this Python), e.g. an
    emulated board's (scripts/aarch64-rpc-server.sh); its output goes to `log` when given.
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
            cmd = server(tracker) if server else server_command(tracker=tracker, key=key, host="127.0.0.1",
                                                                port=free_port())
            out = stack.enter_context(log.open("ab")) if log else subprocess.DEVNULL
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            wait_for_key(tracker, key, timeout_s=join_timeout_s, server=procs[-1])
            yield tracker
        finally:
            _stop(procs)


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
