"""A job's retraining stage (HAT's step 5): its best verified front member trained as a standalone model,
then recorded so that its exports carry those weights."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from sqlalchemy import select

from hwnas.db import Database, RetrainedModel
from hwnas.exceptions import SearchError
from hwnas.jobs._lease import heartbeat
from hwnas.jobs._spec import JobProgress, ProgressCallback, SearchSpec
from hwnas.jobs._store import CandidateRow, front, get_job
from hwnas.search_spaces import get_space
from hwnas.settings import Settings
from hwnas.supernet import RECIPES, TrainConfig, train_subtransformer

__all__ = ["RetrainedInfo", "best_member", "retrain_best", "retrained_model"]

HEARTBEAT_S = 10.0  # a training run renews the job's lease (and hears a cancel) this often


@dataclasses.dataclass(frozen=True)
class RetrainedInfo:
    id: int
    job_id: int
    candidate_id: int
    path: str
    weights: str
    steps: int
    averaged: int
    test_bleu: float | None
    test_loss: float | None

    def provenance(self) -> dict[str, object]:
        return {"weights": self.weights, "steps": self.steps, "averaged_checkpoints": self.averaged,
                "test_bleu": self.test_bleu, "test_loss": self.test_loss}


def best_member(db: Database, job_id: int) -> CandidateRow:
    """The front member with the best fitness among those measured within budget (all, when unverified)."""
    members = front(db, job_id)
    kept = [m.candidate for m in members if m.meets_constraint is not False and m.candidate.loss is not None]
    if not kept:
        raise SearchError(f"search job {job_id} has no front member within its budget to retrain")
    return min(kept, key=lambda c: (c.loss or 0.0, c.id))


def _info(row: RetrainedModel) -> RetrainedInfo:
    return RetrainedInfo(row.id, row.job_id, row.candidate_id, row.path, row.weights, row.steps, row.averaged,
                         row.test_bleu, row.test_loss)


def retrained_model(db: Database, job_id: int, candidate_id: int | None = None) -> RetrainedInfo | None:
    """The newest retrained model of the job (of one candidate, when given)."""
    with db.session() as s:
        q = select(RetrainedModel).where(RetrainedModel.job_id == job_id)
        if candidate_id is not None:
            q = q.where(RetrainedModel.candidate_id == candidate_id)
        row = s.scalar(q.order_by(RetrainedModel.id.desc()).limit(1))
        return _info(row) if row is not None else None


def retrain_best(db: Database, job_id: int, spec: SearchSpec, report: ProgressCallback) -> RetrainedInfo:
    """Train the best member as the spec says, in this process (resuming a run cut short), and record it."""
    assert spec.retrain is not None
    r = spec.retrain
    best = best_member(db, job_id)
    done = retrained_model(db, job_id, best.id)
    if done is not None and Path(done.path).exists():
        return done
    space = get_space(spec.space)
    base = RECIPES[space.name].config(subnet=True) if space.name in RECIPES else TrainConfig()
    config = dataclasses.replace(base, steps=r.steps, checkpoint_every=min(r.checkpoint_every, r.steps))
    created = get_job(db, job_id).created_at.strftime("%Y%m%dT%H%M%S%f")
    out = Settings().retrained_dir(job_id, best.id, created)
    last = [time.monotonic()]

    def on_step(step: int) -> None:
        if time.monotonic() - last[0] >= HEARTBEAT_S or step == r.steps:
            heartbeat(db, job_id)  # raises JobCancelled when the job was cancelled meanwhile
            report(JobProgress(job_id, "retrain", step, r.steps, f"retrain candidate {best.id}"))
            last[0] = time.monotonic()

    result = train_subtransformer(supernet=spec.supernet, subnet=best.subnet, out=out, config=config, init=r.init,
                                  average_last=r.average_last, device="auto", progress=False, beam=r.beam,
                                  test_limit=r.test_sentences, on_step=on_step)
    with db.session() as s:
        row = RetrainedModel(job_id=job_id, candidate_id=best.id, path=str(result.model.resolve()),
                             weights=result.weights, steps=result.steps, averaged=result.averaged,
                             test_bleu=result.test_bleu, test_loss=result.test_loss)
        s.add(row)
        s.flush()
        return _info(row)
