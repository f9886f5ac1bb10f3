"""Launchers run search jobs and exports outside the web process; the reconciler keeps jobs from being lost.

`RayLauncher` starts one detached, named Ray actor per job (or export): it outlives the API process
that started it, and its name tells a restarted API whether the job still has a runner. Jobs whose
runner died are resumed (the lease and the per-candidate commits make that exact) or, after
`max_attempts` runs, marked failed with the reason.
"""

from __future__ import annotations

import abc
import datetime as dt
import logging
import os
from typing import Literal

import ray
from sqlalchemy import select

from hwnas.cluster import init_ray, worker_resources
from hwnas.db import Database, Export, SearchJob
from hwnas.exceptions import HwnasError
from hwnas.jobs._export import run_export
from hwnas.jobs._lease import lease_free
from hwnas.jobs._run import run_job
from hwnas.jobs._spec import ACTIVE
from hwnas.settings import Settings, configure_logging

__all__ = ["Launcher", "RayLauncher", "reconcile"]

log = logging.getLogger("hwnas.jobs")

Kind = Literal["job", "export"]
NAMESPACE = "hwnas"


class Launcher(abc.ABC):
    """Where jobs and exports run. Implementations: `RayLauncher` (tests add their own doubles)."""

    @abc.abstractmethod
    def submit(self, kind: Kind, id_: int) -> None:
        """Start running job/export `id_`; a no-op when it already has a live runner."""

    @abc.abstractmethod
    def alive(self, kind: Kind, id_: int) -> bool:
        """Whether job/export `id_` has a live runner."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def _name(kind: Kind, id_: int) -> str:
    return f"hwnas-{kind}-{id_}"


class RayLauncher(Launcher):
    """One detached Ray actor per job/export on the cluster at `address` (else the settings' Ray address, else a
    local Ray)."""

    def __init__(self, db_url: str, *, address: str | None = None):
        init_ray(address)
        self.db_url = db_url
        # num_cpus=0: the runner only drives; its evaluators size their threads to the cluster's CPUs
        self._cls = ray.remote(num_cpus=0, max_restarts=0)(_Runner)

    def submit(self, kind: Kind, id_: int) -> None:
        if self.alive(kind, id_):
            return
        # the runner's Settings() read what this process's did: the HWNAS_* variables travel with it
        env = {k: v for k, v in os.environ.items() if k.startswith("HWNAS_")}
        try:
            actor = self._cls.options(name=_name(kind, id_), namespace=NAMESPACE, lifetime="detached",
                                      resources=worker_resources(), runtime_env={"env_vars": env}
                                      ).remote(self.db_url)
        except ValueError:  # the name is taken: a runner started meanwhile
            return
        actor.run.remote(kind, id_)  # type: ignore[attr-defined]  # Ray's stubs type actor methods without .remote

    def alive(self, kind: Kind, id_: int) -> bool:
        try:
            ray.get_actor(_name(kind, id_), namespace=NAMESPACE)
        except ValueError:
            return False
        return True


class _Runner:
    """Ray actor body: runs one job or export against the database, then exits (freeing its name)."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        configure_logging(Settings())  # the actor's lines reach the Ray worker log (and the driver's, if shown)

    def run(self, kind: Kind, id_: int) -> None:
        log.info("%s %d: running on %s", kind, id_, os.uname().nodename)
        try:
            with Database(self.db_url) as db:
                if kind == "job":
                    info = run_job(db, id_)
                    log.info("job %d: %s", id_, info.status)
                else:
                    run_export(db, id_)
                    log.info("export %d: ready", id_)
        except HwnasError as e:  # recorded on the row by run_job / run_export; nothing to raise to
            log.warning("%s %d: %s", kind, id_, e)
        finally:
            ray.actor.exit_actor()


# ------------------------------------------------------------------------------------------------- reconcile

def reconcile(db: Database, launcher: Launcher, *, max_attempts: int = 3) -> list[str]:
    """Give every unfinished job and export a runner: resume the orphaned, fail those lost too often.

    Returns one line per action (for the log). Called when the API starts and then periodically.
    """
    actions: list[str] = []
    with db.session() as s:
        jobs = [(j.id, j.status, j.attempts, j.lease_owner, j.lease_expires_at, j.heartbeat_at)
                for j in s.scalars(select(SearchJob).where(SearchJob.status.in_(ACTIVE), SearchJob.owner.is_not(None)))]
        exports = list(s.scalars(select(Export.id).where(Export.status == "pending")))
    for job_id, status, attempts, owner, expires, beat in jobs:
        if launcher.alive("job", job_id) or not lease_free(owner, expires):
            continue
        if status != "queued" and attempts >= max_attempts:
            reason = (f"its runner was lost {attempts} times (last heartbeat "
                      f"{beat:%Y-%m-%d %H:%M:%S} UTC); not resumed again" if beat else
                      f"its runner was lost {attempts} times; not resumed again")
            _fail(db, job_id, reason)
            actions.append(f"job {job_id}: failed ({reason})")
        else:
            launcher.submit("job", job_id)
            actions.append(f"job {job_id}: {'started' if status == 'queued' else 'resumed'} (was {status})")
    for export_id in exports:
        if not launcher.alive("export", export_id):
            launcher.submit("export", export_id)
            actions.append(f"export {export_id}: started")
    return actions


def _fail(db: Database, job_id: int, reason: str) -> None:
    with db.session() as s:
        job = s.get_one(SearchJob, job_id)
        if job.status in ACTIVE:  # unless it finished or was cancelled meanwhile
            job.status, job.error, job.finished_at = "failed", reason, dt.datetime.now(dt.UTC)
