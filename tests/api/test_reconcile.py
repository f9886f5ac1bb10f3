"""Durable jobs: leases keep one runner per job; the reconciler resumes orphans and fails the hopeless."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from hwnas.api._schemas import JobCreate
from hwnas.api._service import create_owned_job
from hwnas.db import Candidate, Database, Export, SearchJob, create_user, list_users
from hwnas.jobs import (
    FitnessConfig,
    JobBusyError,
    LocalEvaluator,
    candidates,
    get_job,
    lease_free,
    reconcile,
    run_job,
    runner_id,
)
from hwnas.settings import Settings
from tests.api.conftest import DEVICE, RecordingLauncher, service_checkpoint


def make_job(db: Database, budget_ms: float, owner: str | None = "alice") -> int:
    body = JobCreate(space="quickstart", device=DEVICE, latency_ms=budget_ms, population=8, generations=2,
                     valid_sentences=8, verify=False)
    user = owner or "nobody"
    if user not in {u.name for u in list_users(db)}:
        create_user(db, user)
    job_id = create_owned_job(db, user, body, Settings(quota_active_jobs=100))
    if owner is None:
        with db.session() as s:
            s.get_one(SearchJob, job_id).owner = None
    return job_id


def set_row(db: Database, job_id: int, **values: object) -> None:
    with db.session() as s:
        job = s.get_one(SearchJob, job_id)
        for k, v in values.items():
            setattr(job, k, v)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lease_is_free_when_expired_or_its_local_holder_is_dead() -> None:
    later = now() + dt.timedelta(minutes=5)
    assert lease_free(None, None)
    assert lease_free("elsewhere:1", now() - dt.timedelta(seconds=1))
    assert not lease_free("elsewhere:1", later)  # another host: only expiry frees it
    assert not lease_free(runner_id(), later)  # this live process
    assert lease_free(f"{socket.gethostname()}:{dead_pid()}", later)


def test_a_job_leased_by_a_live_runner_is_not_run_twice(db: Database, home: Path, budget_ms: float) -> None:
    job_id = make_job(db, budget_ms)
    set_row(db, job_id, status="running", lease_owner="other-host:4242",
            lease_expires_at=now() + dt.timedelta(minutes=5))
    with pytest.raises(JobBusyError, match="being run by other-host:4242"):
        run_job(db, job_id)
    info = get_job(db, job_id)
    assert (info.status, info.lease_owner, info.attempts) == ("running", "other-host:4242", 0)  # untouched


def test_a_runner_that_lost_its_lease_stops(db: Database, home: Path, budget_ms: float) -> None:
    class Usurped(LocalEvaluator):
        """Another runner takes the job over after the first candidate."""

        def evaluate(self, subnets, on_result=None):  # noqa: ANN001, ANN201
            set_row(db, job_id, lease_owner="other-host:1", lease_expires_at=now() + dt.timedelta(minutes=5))
            return super().evaluate(subnets, on_result)

    job_id = make_job(db, budget_ms)
    with pytest.raises(JobBusyError, match="lease lost to other-host:1"):
        run_job(db, job_id, evaluator=Usurped(service_checkpoint(), FitnessConfig(valid_sentences=8),
                                              threads=1))
    info = get_job(db, job_id)
    assert info.lease_owner == "other-host:1" and info.status == "running"  # left to the new holder
    assert candidates(db, job_id) == []  # nothing written after the lease was lost


def test_reconcile_starts_resumes_and_fails(db: Database, home: Path, budget_ms: float) -> None:
    queued, orphan, hopeless, busy, alive, cli = (make_job(db, budget_ms) for _ in range(6))
    stale = {"status": "running", "lease_owner": "gone-host:1", "lease_expires_at": now() - dt.timedelta(seconds=1),
             "heartbeat_at": now() - dt.timedelta(minutes=3)}
    set_row(db, orphan, **stale, attempts=1)
    set_row(db, hopeless, **stale, attempts=3)
    set_row(db, busy, status="running", lease_owner="other-host:9", lease_expires_at=now() + dt.timedelta(minutes=1))
    set_row(db, alive, **stale, attempts=1)
    set_row(db, cli, **stale, attempts=1, owner=None)  # a CLI job: its user resumes it, not the service
    launcher = RecordingLauncher()
    launcher.live.add(("job", alive))
    actions = reconcile(db, launcher, max_attempts=3)
    assert sorted(launcher.submitted) == [("job", queued), ("job", orphan)]
    failed = get_job(db, hopeless)
    assert failed.status == "failed" and "lost 3 times" in (failed.error or "")
    assert failed.finished_at is not None
    assert len(actions) == 3 and any(f"job {orphan}: resumed" in a for a in actions)
    assert get_job(db, busy).status == "running" and get_job(db, cli).status == "running"


def test_reconcile_restarts_pending_exports_only(db: Database, home: Path, budget_ms: float) -> None:
    job_id = make_job(db, budget_ms)
    run_job(db, job_id, evaluator=LocalEvaluator(service_checkpoint(), FitnessConfig(valid_sentences=8),
                                                 threads=1))
    with db.session() as s:
        cid = s.scalar(select(Candidate.id).where(Candidate.job_id == job_id).limit(1))
        rows = [Export(job_id=job_id, candidate_id=cid, format="onnx", path="/x", status=st)
                for st in ("pending", "ready", "failed")]
        s.add_all(rows)
        s.flush()
        pending = rows[0].id
    launcher = RecordingLauncher()
    reconcile(db, launcher)
    assert launcher.submitted == [("export", pending)]


def test_a_sigkilled_runner_is_taken_over_at_once(db: Database, home: Path, budget_ms: float) -> None:
    """A killed local runner frees its lease without waiting for the TTL (same host, dead pid)."""
    job_id = make_job(db, budget_ms)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    set_row(db, job_id, status="running", lease_owner=f"{socket.gethostname()}:{proc.pid}",
            lease_expires_at=now() + dt.timedelta(minutes=5))
    launcher = RecordingLauncher()
    reconcile(db, launcher)
    assert launcher.submitted == []  # its runner lives
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reconcile(db, launcher)
    assert launcher.submitted == [("job", job_id)]
