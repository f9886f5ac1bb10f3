"""Search jobs in the database: create (validated), read, list, cancel; their candidates and verified front."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from sqlalchemy import func, select

from hwnas.db import Candidate, Database, ParetoMember, SearchJob
from hwnas.exceptions import InfeasibleConstraintError, NotFoundError, SearchError
from hwnas.jobs._lease import now
from hwnas.jobs._spec import TERMINAL, JobStatus, PredictorPin, SearchSpec
from hwnas.jobs._supernets import checkpoint_model_config, get_supernet, register_supernet
from hwnas.kernels import TUNING_RECORDS
from hwnas.latency import DeviceProfile, DeviceRegistry, LatencyPredictor, Provenance, load_predictor
from hwnas.search import LatencyConstraint, Problem, create_strategy, pareto_mask
from hwnas.search_spaces import SubnetConfig, get_space
from hwnas.settings import Settings
from hwnas.supernet import ModelConfig, read_checkpoint

__all__ = ["CandidateRow", "FrontMember", "JobInfo", "cancel_job", "candidates", "count_candidates", "count_jobs",
           "create_job", "front",
           "front_candidates", "get_job", "job_model_config", "job_provenance", "list_jobs", "tuning_to_use"]

OBJECTIVES = ("loss", "predicted_latency_ms", "params", "flops")  # the front's axes, all minimised


@dataclasses.dataclass(frozen=True)
class CandidateRow:
    id: int
    subnet: SubnetConfig
    generation: int
    loss: float | None
    bleu: float | None
    error: str | None
    predicted_latency_ms: float
    params: int
    flops: int


@dataclasses.dataclass(frozen=True)
class FrontMember:
    candidate: CandidateRow
    measured_latency_ms: float | None
    meets_constraint: bool | None
    error: str | None


@dataclasses.dataclass(frozen=True)
class JobInfo:
    id: int
    owner: str | None
    spec: SearchSpec
    status: JobStatus
    error: str | None
    generation: int
    generations_total: int
    evaluations: int
    best_loss: float | None
    best_subnet_key: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    started_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    attempts: int = 0
    lease_owner: str | None = None
    note: str | None = None  # how verification ended


def _info(j: SearchJob) -> JobInfo:
    # cast: the column is a plain string; the database holds only JobStatus values
    return JobInfo(j.id, j.owner, SearchSpec.from_dict(j.spec), cast(JobStatus, j.status), j.error, j.generation,
                   j.generations_total, j.evaluations, j.best_loss, j.best_subnet_key, j.created_at, j.finished_at,
                   j.started_at, j.heartbeat_at, j.attempts, j.lease_owner, j.note)


# ----------------------------------------------------------------------------------------------- jobs in the db

def job_model_config(spec: SearchSpec) -> ModelConfig:
    """The model the job's subnets are cut from: its supernet checkpoint's."""
    return checkpoint_model_config(spec.supernet)


def job_provenance(db: Database, spec: SearchSpec, device: str | None = None,
                   tuning_dir: str | None = None) -> Provenance:
    """What the job's latencies on `device` (default: its main device) belong to, as that device is now."""
    registry = DeviceRegistry(db)
    return registry.provenance(registry.get(device or spec.device), get_space(spec.space), job_model_config(spec),
                               spec.tuning_dir if device is None else tuning_dir)


def _predictors(db: Database, spec: SearchSpec) -> list[tuple[LatencyPredictor, dict[str, Any], str | None]]:
    """The predictor of each budget with its info and tuning database: the main device's, then each extra's,
    pinned where the spec pins them (an extra's tuning database: the pinned one, else the device's now)."""
    main = load_predictor(db, job_provenance(db, spec), kind=spec.predictor_kind, version=spec.predictor_version)
    out = [(*main, spec.tuning_dir)]
    pins: Sequence[PredictorPin | None] = spec.extra_predictors or [None] * len(spec.extra_constraints)
    for (dev, _), pin in zip(spec.extra_constraints, pins, strict=True):
        tdir = pin.tuning_dir if pin else tuning_to_use(DeviceRegistry(db).get(dev), spec.space)
        pred, info = load_predictor(db, job_provenance(db, spec, dev, tdir), kind=pin.kind if pin else None,
                                    version=pin.version if pin else None)
        out.append((pred, info, tdir))
    return out


def constraints(db: Database, spec: SearchSpec) -> tuple[LatencyConstraint, ...]:
    """The spec's latency budgets, each behind the predictor of its device's provenance (pinned by the spec)."""
    budgets = [(spec.device, spec.latency_ms), *spec.extra_constraints]
    return tuple(LatencyConstraint(dev, ms, pred.predict)
                 for (dev, ms), (pred, _, _) in zip(budgets, _predictors(db, spec), strict=True))


def tuning_to_use(device: DeviceProfile, space: str, *, untuned: bool = False,
                  settings: Settings | None = None) -> str | None:
    """The device's tuning database for the space, if it has one and it applies (TVM runtime)."""
    tdir = (settings or Settings()).tuning_dir(device.name, space)
    if untuned or device.runtime != "tvm" or not (tdir / TUNING_RECORDS).exists():
        return None
    return str(tdir)


def create_job(db: Database, spec: SearchSpec, *, owner: str | None = None) -> int:
    """Validate `spec` (space, device, predictor, supernet, a budget some subnet can meet) and store it as queued.

    Raises:
        SearchSpaceError, NotFoundError, CheckpointError, InfeasibleConstraintError: one clear line each.
    """
    space = get_space(spec.space)
    DeviceRegistry(db).get(spec.device)
    # a checkpoint named by path is registered (once the spec is valid); else the registry names it
    if spec.supernet:
        path, trained_on = str(Path(spec.supernet).resolve()), read_checkpoint(spec.supernet)["space"]["name"]
    else:
        net = get_supernet(db, space=space.name, id=spec.supernet_id)
        path, trained_on = net.path, net.space
    if trained_on != space.name:
        raise SearchError(f"supernet '{path}' was trained on space '{trained_on}', not '{space.name}'")
    # the predictors of this provenance (device revision, space, the checkpoint's model, tuning), pinned
    (_, info, _), *extras = _predictors(db, dataclasses.replace(spec, supernet=path))
    pins = tuple(PredictorPin(i["kind"], i["version"], tdir) for _, i, tdir in extras)
    spec = dataclasses.replace(spec, predictor_kind=info["kind"], predictor_version=info["version"],
                               revision=info["revision"], extra_predictors=pins)
    problem = Problem(space, constraints(db, dataclasses.replace(spec, supernet=path)))
    try:
        strategy = create_strategy(spec.strategy, problem, seed=spec.seed, **spec.options)
    except ValueError as e:  # unknown strategy or options: the spec's fault, told as one line
        raise SearchError(str(e)) from e
    _check_budget(problem)
    net = register_supernet(db, path) if spec.supernet else net
    spec = dataclasses.replace(spec, supernet=net.path, supernet_id=net.id)
    with db.session() as s:
        job = SearchJob(owner=owner, space=space.name, device=spec.device, strategy=spec.strategy,
                        spec=spec.to_dict(), status="queued", generations_total=strategy.progress[1])
        s.add(job)
        s.flush()
        return job.id


def _check_budget(problem: Problem, probes: int = 2000) -> None:
    """Fail at submission, not minutes later, when not one of `probes` random subnets meets the budget."""
    rng = np.random.default_rng(0)
    space = problem.space
    subnets = [space.smallest(), *(space.sample(rng) for _ in range(probes))]
    if problem.feasible(subnets).any():
        return
    best = subnets[int(np.argmin(problem.violation(subnets)))]
    raise InfeasibleConstraintError(problem.infeasible_message("subnet meets the budget", 1, 0, len(subnets), best))


def get_job(db: Database, job_id: int) -> JobInfo:
    with db.session() as s:
        job = s.get(SearchJob, job_id)
        if job is None:
            raise NotFoundError(f"no search job {job_id}")
        return _info(job)


def list_jobs(db: Database, *, status: str | None = None, owner: str | None = None, limit: int = 50,
              offset: int = 0) -> list[JobInfo]:
    q = select(SearchJob).order_by(SearchJob.id.desc()).limit(limit).offset(offset)
    if status is not None:
        q = q.where(SearchJob.status == status)
    if owner is not None:
        q = q.where(SearchJob.owner == owner)
    with db.session() as s:
        return [_info(j) for j in s.scalars(q)]


def cancel_job(db: Database, job_id: int) -> JobInfo:
    """Mark a job cancelled; a running search notices between candidates and stops."""
    with db.session() as s:
        job = s.get(SearchJob, job_id)
        if job is None:
            raise NotFoundError(f"no search job {job_id}")
        if job.status not in TERMINAL:
            job.status, job.finished_at = "cancelled", now()
        return _info(job)


def _candidate(c: Candidate) -> CandidateRow:
    return CandidateRow(c.id, SubnetConfig.from_dict(c.subnet), c.generation, c.loss, c.bleu, c.error,
                        c.predicted_latency_ms, c.params, c.flops)


def candidates(db: Database, job_id: int, *, limit: int | None = None, offset: int = 0) -> list[CandidateRow]:
    """The job's candidates in evaluation order; a page of them with `limit`/`offset` (paged in the database)."""
    with db.session() as s:
        q = select(Candidate).where(Candidate.job_id == job_id).order_by(Candidate.id).offset(offset).limit(limit)
        return [_candidate(c) for c in s.scalars(q)]


def count_candidates(db: Database, job_id: int) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Candidate).where(Candidate.job_id == job_id)) or 0


def front(db: Database, job_id: int) -> list[FrontMember]:
    """The job's verified Pareto front, fastest measured (or predicted) first."""
    with db.session() as s:
        rows = s.execute(select(ParetoMember, Candidate).join(Candidate, ParetoMember.candidate_id == Candidate.id)
                         .where(ParetoMember.job_id == job_id)).all()
        members = [FrontMember(_candidate(c), p.measured_latency_ms, p.meets_constraint, p.error) for p, c in rows]
    return sorted(members, key=lambda m: (m.candidate.predicted_latency_ms, m.candidate.id))


def front_candidates(rows: Sequence[CandidateRow], budget_ms: float) -> list[CandidateRow]:
    """The Pareto front over (loss, predicted latency, params, FLOPs) of the successful, within-budget candidates."""
    ok = [c for c in rows if c.loss is not None and c.predicted_latency_ms <= budget_ms]
    if not ok:
        return []
    pts = np.array([[getattr(c, axis) for axis in OBJECTIVES] for c in ok], dtype=float)
    return [c for c, keep in zip(ok, pareto_mask(pts), strict=True) if keep]


def count_jobs(db: Database, *, owner: str | None = None, status: str | None = None) -> int:
    """How many jobs `list_jobs` would page through."""
    q = select(func.count()).select_from(SearchJob)
    if owner is not None:
        q = q.where(SearchJob.owner == owner)
    if status is not None:
        q = q.where(SearchJob.status == status)
    with db.session() as s:
        return int(s.scalar(q) or 0)
