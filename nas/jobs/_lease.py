"""One runner per job: a lease on the job's row.

A runner claims the lease by compare-and-swap, renews it with every heartbeat and drops it when it
stops. A lease is free when it expired, or when its holder is a dead process on this host (a SIGKILLed
CLI or Ray worker is taken over at once, not after the TTL).
"""

from __future__ import annotations

import datetime as dt
import os
import socket

from sqlalchemy import update

from hwnas.db import Database, SearchJob
from hwnas.exceptions import SearchError
from hwnas.settings import Settings

__all__ = ["JobBusyError", "JobCancelled", "lease_free", "runner_id"]


class JobCancelled(SearchError):
    """The job was cancelled while it ran."""


class JobBusyError(SearchError):
    """Another live runner holds the job's lease."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def runner_id() -> str:
    """This process as a lease holder: HOST:PID."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def lease_free(owner: str | None, expires_at: dt.datetime | None, at: dt.datetime | None = None) -> bool:
    """Whether a lease held by `owner` until `expires_at` can be taken over."""
    if owner is None or expires_at is None or expires_at < (at or now()):
        return True
    host, _, pid = owner.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


def _ttl() -> dt.timedelta:
    return dt.timedelta(seconds=Settings().lease_ttl_s)


def claim(db: Database, job_id: int) -> None:
    """Take the job's lease (counting one more attempt), or raise JobBusyError naming its live holder."""
    me = runner_id()
    with db.session() as s:
        job = s.get_one(SearchJob, job_id)
        owner, expires = job.lease_owner, job.lease_expires_at
    if owner not in (None, me) and not lease_free(owner, expires):
        until = f"{expires:%H:%M:%S} UTC" if expires else "?"
        raise JobBusyError(f"search job {job_id} is being run by {owner} (lease until {until})")
    held = SearchJob.lease_owner.is_(None) if owner is None else SearchJob.lease_owner == owner
    with db.session() as s:  # compare-and-swap: of two runners claiming together, one updates the row
        claimed = s.execute(update(SearchJob).where(SearchJob.id == job_id, held)
                            .values(lease_owner=me, lease_expires_at=now() + _ttl(),
                                    attempts=SearchJob.attempts + 1)).rowcount  # type: ignore[attr-defined]
    if claimed != 1:
        raise JobBusyError(f"search job {job_id} was claimed by another runner")


def renew(job: SearchJob) -> None:
    """Heartbeat on a job row loaded in a session: renew our lease; stop if it was taken over or cancelled."""
    if job.lease_owner != runner_id():
        raise JobBusyError(f"search job {job.id}: lease lost to {job.lease_owner}; stopping")
    job.heartbeat_at = now()
    job.lease_expires_at = job.heartbeat_at + _ttl()
    if job.status == "cancelled":
        raise JobCancelled(f"search job {job.id} was cancelled")


def heartbeat(db: Database, job_id: int) -> None:
    with db.session() as s:
        renew(s.get_one(SearchJob, job_id))


def release(db: Database, job_id: int) -> None:
    with db.session() as s:
        s.execute(update(SearchJob).where(SearchJob.id == job_id, SearchJob.lease_owner == runner_id())
                  .values(lease_owner=None, lease_expires_at=None))
