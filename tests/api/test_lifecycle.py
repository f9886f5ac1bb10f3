"""A job's whole life through the API on a real local Ray: submitted, run by a detached actor, verified,
exported; its runner SIGKILLed (resumed by the reconciler); the API restarted (the job goes on)."""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hwnas.api import create_app
from hwnas.db import Database
from hwnas.export import load_bundle
from hwnas.jobs import candidates, get_job
from hwnas.settings import Settings
from tests.api.conftest import DEVICE

pytestmark = pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # what a cluster runs on
Auth = Callable[..., dict[str, str]]
TIMEOUT_S = 240


def body(budget_ms: float, **changes: object) -> dict[str, object]:
    return {"space": "quickstart", "device": DEVICE, "latency_ms": budget_ms, "population": 8, "generations": 2,
            "valid_sentences": 8, "workers": 1, **changes}


def wait_for(what: str, check: Callable[[], object], timeout_s: float = TIMEOUT_S) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if out := check():
            return out
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture()
def api(db: Database, home: Path) -> Iterator[Callable[[], TestClient]]:
    """Starts (and restarts) the API with the real RayLauncher on a local Ray; the reconciler runs every second."""
    import ray

    from hwnas.jobs import init_ray

    init_ray()  # on this thread: TestClient runs the app on a thread of its own that dies with the client
    clients: list[TestClient] = []

    def start() -> TestClient:
        c = TestClient(create_app(settings=Settings(db_url=db.url, reconcile_every_s=1.0)))
        c.__enter__()
        clients.append(c)
        return c

    yield start
    for c in clients:
        c.__exit__(None, None, None)
    ray.shutdown()  # detached actors die with the local Ray: nothing outlives the test


def finished(client: TestClient, headers: dict[str, str], job_id: int) -> Callable[[], dict | None]:
    def check() -> dict | None:
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        assert job["status"] not in ("failed", "cancelled"), job
        return job if job["status"] == "finished" else None
    return check


def test_job_runs_on_ray_is_verified_and_exported(api: Callable[[], TestClient], auth: Auth,
                                                  budget_ms: float, tmp_path: Path) -> None:
    client, alice = api(), auth()
    # one verified member asked: the front is measured whole, nothing beyond it (the guarantee has its own tests)
    r = client.post("/jobs", json=body(budget_ms, verified_members=1), headers=alice)
    assert r.status_code == 201, r.text
    job = wait_for("the job to finish", finished(client, alice, r.json()["id"]))
    assert "members met" in job["note"]
    assert job["attempts"] == 1 and job["evaluations"] >= 8 and job["progress"] == 1.0
    front = client.get(f"/jobs/{job['id']}/pareto", headers=alice).json()
    assert front and all(m["measured_latency_ms"] > 0 for m in front)  # verified on the device

    best = front[0]["candidate"]["id"]
    export = client.post(f"/jobs/{job['id']}/exports", json={"candidate_id": best, "format": "torchscript"},
                         headers=alice).json()
    zipped = wait_for("the export", lambda: (r := client.get(f"/exports/{export['id']}", headers=alice)).status_code
                      == 200 and r.content)
    zipfile.ZipFile(io.BytesIO(zipped)).extractall(tmp_path / "bundle")  # type: ignore[arg-type]
    cert = load_bundle(tmp_path / "bundle").certificate
    assert cert is not None and cert.device == DEVICE


def test_a_killed_runner_is_resumed_and_an_api_restart_loses_nothing(api: Callable[[], TestClient], db: Database,
                                                                      auth: Auth, budget_ms: float) -> None:
    client, alice = api(), auth()
    job_id = client.post("/jobs", json=body(budget_ms, generations=4, verify=False), headers=alice).json()["id"]
    wait_for("the first candidates", lambda: get_job(db, job_id).evaluations >= 8)
    owner = get_job(db, job_id).lease_owner
    assert owner is not None
    os.kill(int(owner.rpartition(":")[2]), signal.SIGKILL)  # the runner actor's process, mid-search

    client.__exit__(None, None, None)  # and the API goes down too: nothing is lost while it is away
    client = api()
    job = wait_for("the resumed job to finish", finished(client, alice, job_id))
    assert job["attempts"] == 2 and job["generation"] == 4
    keys = [c.subnet.key() for c in candidates(db, job_id)]
    assert len(keys) == len(set(keys)) == job["evaluations"]  # nothing evaluated twice
