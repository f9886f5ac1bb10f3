"""Running a search job: batch by batch, resumable, then its front measured on the device.

Every finished batch commits the strategy's state, so a killed search continues from its last
finished batch; every evaluated candidate is committed as it lands, so the batch that was cut
short re-uses them (no evaluation lost or done twice). A job is never left 'running' by an
error: it ends 'failed' (with the reason) or 'interrupted' (resumable). Progress goes to a
callback; drawing it is the caller's business (the CLI draws bars, the service shows the row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from sqlalchemy import func, select, update

from hwnas.db import Candidate, Database, Generation, SearchJob
from hwnas.exceptions import SearchError
from hwnas.jobs._lease import JobBusyError, JobCancelled, claim, now, release, renew, runner_id
from hwnas.jobs._retrain import retrain_best
from hwnas.jobs._scoring import Evaluator, RayEvaluator, Score
from hwnas.jobs._spec import RESUMABLE, JobProgress, ProgressCallback, SearchSpec
from hwnas.jobs._store import JobInfo, constraints, get_job
from hwnas.jobs._verify import store_front, verify_front
from hwnas.search import Problem, Strategy, create_strategy
from hwnas.search_spaces import SubnetConfig, get_space
from hwnas.supernet import ModelConfig, count_flops, count_params, read_checkpoint

__all__ = ["run_job"]


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


def run_job(db: Database, job_id: int, *, evaluator: Evaluator | None = None, address: str | None = None,
            on_progress: ProgressCallback | None = None) -> JobInfo:
    """Run (or resume) job `job_id` to the end: search, measure the front on the device, then (when the spec
    asks) retrain its best member.

    `evaluator` defaults to a `RayEvaluator` with the spec's workers (local Ray, or the cluster at
    `address` / the settings' Ray address). `on_progress` hears every scored candidate, finished batch and
    measured front member. Returns the finished job.
    """
    info = get_job(db, job_id)
    if info.status not in RESUMABLE:
        raise SearchError(f"search job {job_id} is {info.status}; only unfinished jobs can run")
    spec = info.spec
    claim(db, job_id)
    _set(db, job_id, status="running", error=None, started_at=now(), heartbeat_at=now(), finished_at=None)
    own_evaluator = evaluator is None
    try:
        if evaluator is None:
            evaluator = RayEvaluator(spec.supernet, spec.fitness, workers=max(1, spec.workers), address=address,
                                     gpus_per_worker=spec.gpus_per_worker)
        _search(db, job_id, spec, evaluator, on_progress or _quiet)
        if own_evaluator:  # the scoring workers go before the device is timed: nothing of ours beside it
            evaluator.close()
            evaluator = None
        if spec.verify:
            _set(db, job_id, status="verifying", heartbeat_at=now())
            _set(db, job_id, **verify_front(db, job_id, spec, on_progress or _quiet))
        else:
            store_front(db, job_id, spec, measured={})
        if spec.retrain is not None:
            _set(db, job_id, status="retraining", heartbeat_at=now())
            retrain_best(db, job_id, spec, on_progress or _quiet)
        _set(db, job_id, status="finished", finished_at=now())
    except JobCancelled:
        pass
    except JobBusyError:  # another runner owns the job now: its row is theirs to write
        raise
    except KeyboardInterrupt:
        _set(db, job_id, status="interrupted", error="interrupted; run it again to resume")
        raise
    except BaseException as e:  # any failure: the job must not stay 'running'
        _set(db, job_id, status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
             finished_at=now())
        raise
    finally:
        if own_evaluator and evaluator is not None:
            evaluator.close()
        release(db, job_id)
    return get_job(db, job_id)


def _strategy(db: Database, job_id: int, spec: SearchSpec) -> tuple[Strategy, Problem, int]:
    problem = Problem(get_space(spec.space), constraints(db, spec))
    strategy = create_strategy(spec.strategy, problem, seed=spec.seed, **spec.options)
    with db.session() as s:
        last = s.scalar(select(Generation).where(Generation.job_id == job_id).order_by(Generation.index.desc())
                        .limit(1))
        if last is not None:
            strategy.load_state_dict(last.state)
        return strategy, problem, (last.index + 1 if last is not None else 0)


def _quiet(event: JobProgress) -> None:
    pass


def _search(db: Database, job_id: int, spec: SearchSpec, evaluator: Evaluator, report: ProgressCallback) -> None:
    strategy, problem, index = _strategy(db, job_id, spec)
    mc = ModelConfig(**read_checkpoint(spec.supernet)["model_config"])
    n_src = problem.space.source_length_tokens
    title = f"search job {job_id} ({spec.strategy})"
    report(JobProgress(job_id, "generations", *strategy.progress, title))
    while (batch := strategy.ask()) is not None:
        stored = _stored_scores(db, job_id, batch)
        todo = [c for c in batch if c not in stored]
        latency = problem.latencies_ms(todo)[:, 0] if todo else np.zeros(0)
        report(JobProgress(job_id, "candidates", len(batch) - len(todo), len(batch), "  candidates"))

        def persist(i: int, score: Score, todo: Sequence[SubnetConfig] = todo, lat: np.ndarray = latency,
                    batch: Sequence[SubnetConfig] = batch) -> None:
            cfg = todo[i]
            with db.session() as s:
                # lease first: a runner that lost the job must not write (nor collide with) the new one's rows
                renew(s.get_one(SearchJob, job_id))
                s.add(Candidate(job_id=job_id, subnet_key=cfg.key(), subnet=cfg.to_dict(), generation=index,
                                loss=score.valid_loss if score.valid_loss is None or math.isfinite(
                                    score.valid_loss) else None,
                                bleu=score.bleu, error=score.error or score.evaluation(spec.fitness.metric).error,
                                predicted_latency_ms=float(lat[i]), params=count_params(cfg, mc),
                                flops=count_flops(cfg, mc, source_len=n_src, target_len=n_src),
                                eval_s=score.eval_s))
            stored[cfg] = score
            report(JobProgress(job_id, "candidates", sum(c in stored for c in batch), len(batch), "  candidates"))

        evaluator.evaluate(todo, on_result=persist)
        evaluations = [stored[c].evaluation(spec.fitness.metric) for c in batch]
        strategy.tell(batch, evaluations)
        _commit_generation(db, job_id, index, strategy, new=len(todo))
        best = strategy.best()
        report(JobProgress(job_id, "generations", *strategy.progress, title,
                           f"best {best[1].fitness():.4f}" if best else "no feasible candidate yet"))
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
        # cast: a COUNT(*) always returns a row, so the scalar is never None
        job.evaluations = cast(int, s.scalar(select(func.count()).select_from(Candidate)
                                             .where(Candidate.job_id == job_id)))
        job.best_loss = best[1].fitness() if best else None
        job.best_subnet_key = best[0].key() if best else None
        renew(job)


