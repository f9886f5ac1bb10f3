"""A server SIGKILLed while it takes writes loses none it acknowledged: after a restart on the same database,
every job answered with a 201 is there, whole. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hwnas.db import Database, create_token, create_user
from tests.api.conftest import DEVICE, ready_for_jobs

REPO = Path(__file__).parents[2]
# The API with a test stand-in launcher (no Ray: what is tested is the web process and its database)
SERVER = """
import os, uvicorn
from hwnas.api import create_app
from hwnas.settings import Settings
from tests.api.conftest import RecordingLauncher
app = create_app(settings=Settings(reconcile_every_s=3600), launcher=RecordingLauncher())
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
"""


@contextlib.contextmanager
def server(db_url: str, home: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HWNAS_DB_URL": db_url, "HWNAS_HOME": str(home), "PORT": str(port),
           "HWNAS_QUOTA_ACTIVE_JOBS": "1000000"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        yield proc, base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.mark.slow  # 20 s a backend: two server starts
def test_acknowledged_writes_survive_a_sigkill(db: Database, home: Path) -> None:
    budget_ms = ready_for_jobs(db, home)
    create_user(db, "alice")
    headers = {"Authorization": f"Bearer {create_token(db, 'alice')}"}
    body = {"space": "quickstart", "device": DEVICE, "latency_ms": budget_ms, "population": 8, "generations": 2,
            "verify": False}
    acked: list[int] = []
    stop = threading.Event()

    def write(base: str) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post("/jobs", json=body)
                except httpx.TransportError:  # the server is gone: what was answered counts
                    return
                assert r.status_code == 201, r.text
                acked.append(r.json()["id"])

    with server(db.url, home) as (proc, base):
        writers = [threading.Thread(target=write, args=(base,)) for _ in range(3)]
        for w in writers:
            w.start()
        deadline = time.monotonic() + 60
        while len(acked) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-request: the writers are still sending
        proc.wait(30)
        stop.set()
        for w in writers:
            w.join(30)
    assert len(acked) >= 20

    with server(db.url, home) as (_, base):
        listed: dict[int, dict] = {}
        with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
            for offset in range(0, len(acked) + 200, 200):
                page = c.get("/jobs", params={"limit": 200, "offset": offset}).json()["items"]
                listed.update({j["id"]: j for j in page})
        missing = set(acked) - set(listed)
        assert not missing, f"acknowledged and lost: {sorted(missing)}"
        assert all(listed[i]["status"] == "queued" and listed[i]["latency_ms"] == budget_ms for i in acked)
