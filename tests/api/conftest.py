"""Service test fixtures: a tiny quickstart supernet under a temp $HWNAS_HOME, a stand-in predictor, clients."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hwnas.api import create_app, create_token, create_user
from hwnas.db import Database
from hwnas.jobs import Launcher, register_supernet
from hwnas.latency import Sample, create_predictor
from hwnas.search_spaces import get_space
from hwnas.settings import Settings
from hwnas.supernet import DataSpec, TrainConfig, train_supernet
from tests.conftest import store_stand_in_predictor
from tests.latency.test_predictors import SLOW_STAND_IN, stand_in_latency

DEVICE = "local-cpu-torch"  # real measurements without a compile step: a verified front fits in a test


class RecordingLauncher(Launcher):
    """Test double: records what the API asks to run instead of starting Ray actors."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, int]] = []
        self.live: set[tuple[str, int]] = set()

    def submit(self, kind: str, id_: int) -> None:  # type: ignore[override]
        self.submitted.append((kind, id_))

    def alive(self, kind: str, id_: int) -> bool:  # type: ignore[override]
        return (kind, id_) in self.live


@pytest.fixture(scope="session")
def service_home(tmp_path_factory: pytest.TempPathFactory, bible_dir: Path) -> Path:
    """$HWNAS_HOME holding a quickstart supernet trained for a few steps on a slice of the real corpus."""
    home = tmp_path_factory.mktemp("hwnas-home")
    train_supernet(space=get_space("quickstart"), data=DataSpec.parse(f"files:{bible_dir}:de-en"),
                   out=service_checkpoint(home).parent,
                   config=TrainConfig(steps=4, max_tokens=300, vocab_size=300, warmup_steps=2), progress=False)
    return home


def service_checkpoint(home: Path | None = None) -> Path:
    """The service's quickstart supernet (in `home`, else $HWNAS_HOME): registered by `budget_ms`."""
    return Settings(**({"home": home} if home else {})).supernet_dir("quickstart", "bible:de-en") / "checkpoint.pt"


@pytest.fixture()
def home(service_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HWNAS_HOME", str(service_home))
    return service_home


def ready_for_jobs(db: Database, home: Path) -> float:
    """Readies the service for jobs: registers `home`'s quickstart supernet and stores a layerwise predictor fitted
    to stand-in timings (test data, named so) for DEVICE on quickstart; returns a budget about half of the space
    meets."""
    register_supernet(db, service_checkpoint(home))
    space = get_space("quickstart")
    rng = np.random.default_rng(0)
    subnets = [space.sample(rng) for _ in range(60)]
    # SLOW_STAND_IN: far slower than real timings, so a job's measured front keeps every member (these tests are
    # about the service; the budget guarantee has its own tests, with injected measurements)
    pred = create_predictor("layerwise", space, space.source_length_tokens).fit(
        [Sample(c, *(SLOW_STAND_IN * t for t in stand_in_latency(c)), space.source_length_tokens) for c in subnets])
    store_stand_in_predictor(db, DEVICE, space, service_checkpoint(home), pred,
                             metrics={"mape": 0.05, "within_10pct": 0.9})
    return float(np.median(pred.predict(subnets)))


@pytest.fixture()
def budget_ms(db: Database, home: Path) -> float:
    return ready_for_jobs(db, home)


@pytest.fixture()
def launcher() -> RecordingLauncher:
    return RecordingLauncher()


@pytest.fixture()
def client(db: Database, home: Path, launcher: RecordingLauncher) -> Iterator[TestClient]:
    # no token cache: a revoked token must be refused at once in these tests (TokenCache is tested on its own)
    app = create_app(settings=Settings(db_url=db.url, reconcile_every_s=3600, token_cache_s=0),
                     launcher=launcher)
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def strict(db: Database, home: Path, launcher: RecordingLauncher) -> Iterator[TestClient]:
    """The service under small quotas."""
    settings = Settings(db_url=db.url, reconcile_every_s=3600, token_cache_s=0, quota_active_jobs=2,
                        quota_evaluations=100, quota_workers=2, quota_exports_per_job=1, auth_failures_per_minute=3,
                        quota_devices=1, user_tracker_hosts=["10.0.0.5"])
    with TestClient(create_app(settings=settings, launcher=launcher)) as c:
        yield c


@pytest.fixture()
def auth(db: Database) -> Callable[..., dict[str, str]]:
    """Headers with a fresh token of user `name` (created on first use, as `role`)."""
    made: set[str] = set()

    def headers(name: str = "alice", role: str = "user") -> dict[str, str]:
        if name not in made:
            create_user(db, name, role=role)
            made.add(name)
        return {"Authorization": f"Bearer {create_token(db, name)}"}
    return headers


@pytest.fixture()
def operator(auth: Callable[..., dict[str, str]]) -> dict[str, str]:
    """Headers of an operator, 'root': registers the shared devices."""
    return auth("root", role="operator")


@contextlib.contextmanager
def live_server(app: FastAPI, timeout_s: float = 30) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the server takes this bound socket: no race for the port
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not come up")
            time.sleep(0.1)
        yield base
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
