"""Search jobs: a spec stored in the database, run batch by batch, resumable, with a measured front.

Every finished batch commits the strategy's state, so a killed search continues from its last
finished batch; every evaluated candidate is committed as it lands, so the batch that was cut
short re-uses them (no evaluation lost or done twice). A job is never left 'running' by an
error: it ends 'failed' (with the reason) or 'interrupted' (resumable).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select, update

from hwnas.db import Database
from hwnas.db._models import Candidate, Generation, Measurement, ParetoMember, SearchJob
from hwnas.exceptions import InfeasibleConstraintError, NotFoundError, SearchError
from hwnas.search._base import LatencyConstraint, Problem, Strategy
from hwnas.search._evaluator import Evaluator, FitnessConfig, RayEvaluator, Score
from hwnas.search._pareto import pareto_mask
from hwnas.search_spaces import SearchSpace, SubnetConfig, get_space

RESUMABLE = ("queued", "interrupted", "failed", "running", "verifying")
ACTIVE = ("queued", "running", "verifying")  # a runner is (or should be) on it
LEASE_TTL_S = 120.0  # a runner that has not renewed its lease for this long is presumed dead
OBJECTIVES = ("loss", "predicted_latency_ms", "params", "flops")  # the front's axes, all minimised


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """Everything that defines a search; stored with the job, so a resumed job runs the same search."""

    space: str
    device: str
    latency_ms: float  # the budget on `device`
    supernet: str  # checkpoint path
    strategy: str = "evo"
    seed: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # strategy sizes (population, ...)
    fitness: FitnessConfig = FitnessConfig()
    predictor_kind: str | None = None  # pinned to the newest (kind, version) when the job is created
    predictor_version: int | None = None
    extra_constraints: tuple[tuple[str, float], ...] = ()  # more (device, budget ms), checked by their predictors
    workers: int = 1
    verify: bool = True  # measure the final front on the device
    tuning_dir: str | None = None

    def __post_init__(self) -> None:
        for dev, ms in ((self.device, self.latency_ms), *self.extra_constraints):
            if not (isinstance(ms, int | float) and math.isfinite(ms) and ms > 0):
                raise SearchError(f"latency budget on '{dev}' must be a positive number of ms, got {ms}")
        if self.workers < 0:
            raise SearchError(f"workers must be >= 0, got {self.workers}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra_constraints"] = [list(c) for c in self.extra_constraints]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpec:
        d = dict(d)
        d["fitness"] = FitnessConfig(**d.get("fitness", {}))
        d["extra_constraints"] = tuple((str(a), float(b)) for a, b in d.get("extra_constraints", ()))
        return cls(**d)


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
    status: str
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _info(j: SearchJob) -> JobInfo:
    return JobInfo(j.id, j.owner, SearchSpec.from_dict(j.spec), j.status, j.error, j.generation, j.generations_total,
                   j.evaluations, j.best_loss, j.best_subnet_key, j.created_at, j.finished_at, j.started_at,
                   j.heartbeat_at, j.attempts, j.lease_owner)


# ----------------------------------------------------------------------------------------------- jobs in the db

def _constraints(db: Database, spec: SearchSpec) -> tuple[LatencyConstraint, ...]:
    from hwnas.latency._registry import load_predictor

    main, _ = load_predictor(db, device=spec.device, kind=spec.predictor_kind, version=spec.predictor_version)
    out = [LatencyConstraint(spec.device, spec.latency_ms, main.predict)]
    for dev, ms in spec.extra_constraints:
        pred, _ = load_predictor(db, device=dev)
        out.append(LatencyConstraint(dev, ms, pred.predict))
    return tuple(out)


def create_job(db: Database, spec: SearchSpec, *, owner: str | None = None) -> int:
    """Validate `spec` (space, device, predictor, supernet, a budget some subnet can meet) and store it as queued.

    Raises:
        SearchSpaceError, NotFoundError, CheckpointError, InfeasibleConstraintError: one clear line each.
    """
    from hwnas.latency._registry import DeviceRegistry, load_predictor
    from hwnas.search._factory import create_strategy
    from hwnas.supernet import read_checkpoint

    space = get_space(spec.space)
    DeviceRegistry(db).get(spec.device)
    _, info = load_predictor(db, device=spec.device, kind=spec.predictor_kind, version=spec.predictor_version)
    spec = dataclasses.replace(spec, predictor_kind=info["kind"], predictor_version=info["version"],
                               supernet=str(Path(spec.supernet).resolve()))
    ckpt = read_checkpoint(spec.supernet)
    if ckpt["space"]["name"] != space.name:
        raise SearchError(f"supernet '{spec.supernet}' was trained on space '{ckpt['space']['name']}', "
                          f"not '{space.name}'")
    problem = Problem(space, _constraints(db, spec))
    try:
        strategy = create_strategy(spec.strategy, problem, seed=spec.seed, **spec.options)
    except ValueError as e:  # unknown strategy or options: the spec's fault, told as one line
        raise SearchError(str(e)) from e
    _check_budget(problem)
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
    raise InfeasibleConstraintError(problem._infeasible_message("subnet meets the budget", 1, 0, len(subnets), best))


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
        if job.status not in ("finished", "failed", "cancelled"):
            job.status, job.finished_at = "cancelled", _now()
        return _info(job)


def _candidate(c: Candidate) -> CandidateRow:
    return CandidateRow(c.id, SubnetConfig.from_dict(c.subnet), c.generation, c.loss, c.bleu, c.error,
                        c.predicted_latency_ms, c.params, c.flops)


def candidates(db: Database, job_id: int) -> list[CandidateRow]:
    with db.session() as s:
        return [_candidate(c) for c in s.scalars(select(Candidate).where(Candidate.job_id == job_id)
                                                 .order_by(Candidate.id))]


def front(db: Database, job_id: int) -> list[FrontMember]:
    """The job's verified Pareto front, fastest measured (or predicted) first."""
    with db.session() as s:
        rows = s.execute(select(ParetoMember, Candidate).join(Candidate, ParetoMember.candidate_id == Candidate.id)
                         .where(ParetoMember.job_id == job_id)).all()
        members = [FrontMember(_candidate(c), p.measured_latency_ms, p.meets_constraint, p.error) for p, c in rows]
    return sorted(members, key=lambda m: (m.candidate.predicted_latency_ms, m.candidate.id))


# ------------------------------------------------------------------------------------------------- running

def _set(db: Database, job_id: int, **values: Any) -> str:
    """Update the job row, if this process still holds its lease; returns its status as it was (a concurrent
    cancel shows up here). A runner that lost the job to another one leaves the row to it."""
    with db.session() as s:
        job = s.get_one(SearchJob, job_id)
        before = job.status
        if job.lease_owner != runner_id():
            return before
        if before == "cancelled" and values.get("status") not in (None, "cancelled"):
            values.pop("status")
        for k, v in values.items():
            setattr(job, k, v)
        return before


class JobCancelled(SearchError):
    """The job was cancelled while it ran."""


class JobBusyError(SearchError):
    """Another live runner holds the job's lease."""


# ------------------------------------------------------------------------------------------------- leases
# One runner per job: a runner claims the row's lease by compare-and-swap, renews it with every heartbeat and
# drops it when it stops. A lease is free when it expired, or when its holder is a dead process on this host
# (a SIGKILLed CLI or Ray worker is taken over at once, not after the TTL).

def lease_ttl_s() -> float:
    return float(os.environ.get("HWNAS_LEASE_TTL_S") or LEASE_TTL_S)


def runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def lease_free(owner: str | None, expires_at: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    """Whether a lease held by `owner` until `expires_at` can be taken over."""
    if owner is None or expires_at is None or expires_at < (now or _now()):
        return True
    host, _, pid = owner.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


def _claim(db: Database, job_id: int) -> None:
    me = runner_id()
    with db.session() as s:
        job = s.get_one(SearchJob, job_id)
        owner, expires = job.lease_owner, job.lease_expires_at
    if owner not in (None, me) and not lease_free(owner, expires):
        raise JobBusyError(f"search job {job_id} is being run by {owner} (lease until {expires:%H:%M:%S} UTC)")
    held = SearchJob.lease_owner.is_(None) if owner is None else SearchJob.lease_owner == owner
    with db.session() as s:  # compare-and-swap: of two runners claiming together, one updates the row
        claimed = s.execute(update(SearchJob).where(SearchJob.id == job_id, held)
                            .values(lease_owner=me, lease_expires_at=_now() + dt.timedelta(seconds=lease_ttl_s()),
                                    attempts=SearchJob.attempts + 1)).rowcount
    if claimed != 1:
        raise JobBusyError(f"search job {job_id} was claimed by another runner")


def _renew(job: SearchJob) -> None:
    """Heartbeat on a job row loaded in a session: renew our lease; stop if it was taken over or cancelled."""
    if job.lease_owner != runner_id():
        raise JobBusyError(f"search job {job.id}: lease lost to {job.lease_owner}; stopping")
    job.heartbeat_at = _now()
    job.lease_expires_at = job.heartbeat_at + dt.timedelta(seconds=lease_ttl_s())
    if job.status == "cancelled":
        raise JobCancelled(f"search job {job.id} was cancelled")


def _heartbeat(db: Database, job_id: int) -> None:
    with db.session() as s:
        _renew(s.get_one(SearchJob, job_id))


def _release(db: Database, job_id: int) -> None:
    with db.session() as s:
        s.execute(update(SearchJob).where(SearchJob.id == job_id, SearchJob.lease_owner == runner_id())
                  .values(lease_owner=None, lease_expires_at=None))


def run_job(db: Database, job_id: int, *, evaluator: Evaluator | None = None, address: str | None = None,
            progress: bool = True) -> JobInfo:
    """Run (or resume) job `job_id` to the end: search, then measure the front on the device.

    `evaluator` defaults to a `RayEvaluator` with the spec's workers (local Ray, or the cluster at
    `address` / $RAY_ADDRESS). Returns the finished job.
    """
    info = get_job(db, job_id)
    if info.status not in RESUMABLE:
        raise SearchError(f"search job {job_id} is {info.status}; only unfinished jobs can run")
    spec = info.spec
    _claim(db, job_id)
    _set(db, job_id, status="running", error=None, started_at=_now(), heartbeat_at=_now(), finished_at=None)
    own_evaluator = evaluator is None
    try:
        if evaluator is None:
            evaluator = RayEvaluator(spec.supernet, spec.fitness, workers=max(1, spec.workers), address=address)
        _search(db, job_id, spec, evaluator, progress)
        if spec.verify:
            _set(db, job_id, status="verifying", heartbeat_at=_now())
            _verify_front(db, job_id, spec, progress)
        else:
            _store_front(db, job_id, spec, measured={})
        _set(db, job_id, status="finished", finished_at=_now())
    except JobCancelled:
        pass
    except JobBusyError:  # another runner owns the job now: its row is theirs to write
        raise
    except KeyboardInterrupt:
        _set(db, job_id, status="interrupted", error="interrupted; run it again to resume")
        raise
    except BaseException as e:  # any failure: the job must not stay 'running'
        _set(db, job_id, status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
             finished_at=_now())
        raise
    finally:
        if own_evaluator and evaluator is not None:
            evaluator.close()
        _release(db, job_id)
    return get_job(db, job_id)


def _strategy(db: Database, job_id: int, spec: SearchSpec) -> tuple[Strategy, Problem, int]:
    from hwnas.search._factory import create_strategy

    problem = Problem(get_space(spec.space), _constraints(db, spec))
    strategy = create_strategy(spec.strategy, problem, seed=spec.seed, **spec.options)
    with db.session() as s:
        last = s.scalar(select(Generation).where(Generation.job_id == job_id).order_by(Generation.index.desc())
                        .limit(1))
        if last is not None:
            strategy.load_state_dict(last.state)
        return strategy, problem, (last.index + 1 if last is not None else 0)


def _search(db: Database, job_id: int, spec: SearchSpec, evaluator: Evaluator, progress: bool) -> None:
    from hwnas.supernet import ModelConfig, count_flops, count_params, read_checkpoint

    strategy, problem, index = _strategy(db, job_id, spec)
    mc = ModelConfig(**read_checkpoint(spec.supernet)["model_config"])
    n_src = problem.space.source_length_tokens
    done, total = strategy.progress
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=Console(stderr=True),
                  disable=not progress) as bar:
        gen_task = bar.add_task(f"search job {job_id} ({spec.strategy})", total=total, completed=done, info="")
        while (batch := strategy.ask()) is not None:
            stored = _stored_scores(db, job_id, batch)
            todo = [c for c in batch if c not in stored]
            latency = problem.latencies_ms(todo)[:, 0] if todo else np.zeros(0)
            cand_task = bar.add_task("  candidates", total=len(batch), completed=len(batch) - len(todo), info="")

            def persist(i: int, score: Score, todo: Sequence[SubnetConfig] = todo, lat: np.ndarray = latency,
                        task: Any = cand_task) -> None:
                cfg = todo[i]
                with db.session() as s:
                    # lease first: a runner that lost the job must not write (nor collide with) the new one's rows
                    _renew(s.get_one(SearchJob, job_id))
                    s.add(Candidate(job_id=job_id, subnet_key=cfg.key(), subnet=cfg.to_dict(), generation=index,
                                    loss=score.valid_loss if score.valid_loss is None or math.isfinite(
                                        score.valid_loss) else None,
                                    bleu=score.bleu, error=score.error or score.evaluation(spec.fitness.metric).error,
                                    predicted_latency_ms=float(lat[i]), params=count_params(cfg, mc),
                                    flops=count_flops(cfg, mc, source_len=n_src, target_len=n_src),
                                    eval_s=score.eval_s))
                stored[cfg] = score
                bar.update(task, advance=1)

            evaluator.evaluate(todo, on_result=persist)
            evaluations = [stored[c].evaluation(spec.fitness.metric) for c in batch]
            strategy.tell(batch, evaluations)
            _commit_generation(db, job_id, index, strategy, new=len(todo))
            bar.remove_task(cand_task)
            best = strategy.best()
            bar.update(gen_task, completed=strategy.progress[0],
                       info=f"best {best[1].fitness():.4f}" if best else "no feasible candidate yet")
            index += 1


def _stored_scores(db: Database, job_id: int, batch: Sequence[SubnetConfig]) -> dict[SubnetConfig, Score]:
    """Candidates of `batch` already evaluated (by the run a kill cut short)."""
    keys = {c.key(): c for c in batch}
    with db.session() as s:
        rows = s.scalars(select(Candidate).where(Candidate.job_id == job_id, Candidate.subnet_key.in_(keys)))
        return {keys[r.subnet_key]: Score(r.loss, r.bleu, r.eval_s, r.error) for r in rows}


def _commit_generation(db: Database, job_id: int, index: int, strategy: Strategy, *, new: int) -> None:
    best = strategy.best()
    with db.session() as s:
        # only the newest state is needed to resume; older ones (MBs for Optuna's trial lists) are dropped
        s.execute(update(Generation).where(Generation.job_id == job_id, Generation.index < index).values(state={}))
        s.add(Generation(job_id=job_id, index=index, state=strategy.state_dict(), evaluated=new,
                         best_loss=best[1].fitness() if best else None))
        job = s.get_one(SearchJob, job_id)
        job.generation = strategy.progress[0]
        job.evaluations = s.scalar(select(func.count()).select_from(Candidate).where(Candidate.job_id == job_id))
        job.best_loss = best[1].fitness() if best else None
        job.best_subnet_key = best[0].key() if best else None
        _renew(job)


def front_candidates(rows: Sequence[CandidateRow], budget_ms: float) -> list[CandidateRow]:
    """The Pareto front over (loss, predicted latency, params, FLOPs) of the successful, within-budget candidates."""
    ok = [c for c in rows if c.loss is not None and c.predicted_latency_ms <= budget_ms]
    if not ok:
        return []
    pts = np.array([[c.loss, c.predicted_latency_ms, c.params, c.flops] for c in ok], dtype=float)
    return [c for c, keep in zip(ok, pareto_mask(pts), strict=True) if keep]


def _verify_front(db: Database, job_id: int, spec: SearchSpec, progress: bool) -> None:
    """Measure every front member on the device (re-using stored measurements of the same protocol)."""
    from hwnas.latency._collect import measure, tuning_key
    from hwnas.latency._devices import protocol_for
    from hwnas.latency._registry import DeviceRegistry, SQLMeasurementStore
    from hwnas.supernet import ModelConfig, read_checkpoint

    members = front_candidates(candidates(db, job_id), spec.latency_ms)
    device, space = DeviceRegistry(db).get(spec.device), get_space(spec.space)
    protocol, tkey = protocol_for(device, space), tuning_key(spec.tuning_dir)
    measured = _measurements(db, spec.device, space, protocol.key(), tkey)
    todo = [m.subnet for m in members if m.subnet.key() not in measured]
    if todo:
        mc = ModelConfig(**read_checkpoint(spec.supernet)["model_config"])
        store = SQLMeasurementStore(db)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=Console(stderr=True), disable=not progress) as bar:
            task = bar.add_task(f"measure the front on {device.name}", total=len(todo))
            for cfg in todo:  # one at a time: timings of the device alone, and each stored as soon as it lands
                for rec in measure(device=device, space=space, model_config=mc, subnets=[cfg],
                                   tuning_dir=spec.tuning_dir):
                    store.add(rec)
                _heartbeat(db, job_id)  # a front measurement takes seconds to a minute: keep the lease
                bar.update(task, advance=1)
        measured = _measurements(db, spec.device, space, protocol.key(), tkey)
    _store_front(db, job_id, spec, measured, members)


def _measurements(db: Database, device: str, space: SearchSpace, protocol_key: str,
                  tkey: str) -> dict[str, tuple[int, float | None, str | None]]:
    from hwnas.db._models import Device

    with db.session() as s:
        rows = s.execute(select(Measurement.subnet_key, Measurement.id, Measurement.latency_ms, Measurement.error)
                         .join(Device).where(Device.name == device, Measurement.space == space.name,
                                             Measurement.protocol_key == protocol_key,
                                             Measurement.tuning_key == tkey)).all()
    return {k: (i, lat, err) for k, i, lat, err in rows}


def _store_front(db: Database, job_id: int, spec: SearchSpec, measured: dict[str, tuple[int, float | None, str | None]],
                 members: Sequence[CandidateRow] | None = None) -> None:
    if members is None:
        members = front_candidates(candidates(db, job_id), spec.latency_ms)
    with db.session() as s:
        for old in s.scalars(select(ParetoMember).where(ParetoMember.job_id == job_id)):
            s.delete(old)  # a resumed verification rewrites the front whole
        s.flush()
        for m in members:
            mid, lat, err = measured.get(m.subnet.key(), (None, None, None if spec.verify is False else "not measured"))
            s.add(ParetoMember(job_id=job_id, candidate_id=m.id, measurement_id=mid, measured_latency_ms=lat,
                               meets_constraint=None if lat is None else bool(lat <= spec.latency_ms), error=err))



def strategy_options(strategy: str, *, population: int | None = None, generations: int | None = None) -> dict[str, Any]:
    """The CLI's two size knobs in every strategy's vocabulary (evo: population / generations, split as HAT)."""
    opts: dict[str, Any] = {}
    if population is not None:
        opts["batch_size"] = population
    if generations is not None:
        opts["batches"] = generations
    return opts
