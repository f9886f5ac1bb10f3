"""What a search job is: its spec (stored with the job), its fitness definition and its status vocabulary."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal, get_args

from hwnas.exceptions import SearchError
from hwnas.supernet import INITS, PRECISIONS

__all__ = ["ACTIVE", "JOB_STATUSES", "RESUMABLE", "TERMINAL", "ExportStatus", "FitnessConfig", "FitnessMetric",
           "JobProgress", "JobStatus", "PredictorPin", "ProgressCallback", "RetrainSpec", "SearchSpec"]

# The one status vocabulary: the table's values, the API's schema and the dashboard's filter all read it.
JobStatus = Literal["queued", "running", "verifying", "retraining", "finished", "failed", "cancelled",
                    "interrupted"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
ACTIVE: tuple[JobStatus, ...] = ("queued", "running", "verifying", "retraining")  # a runner is (or should be) on it
RESUMABLE: tuple[JobStatus, ...] = (*ACTIVE, "interrupted", "failed")  # run_job takes these up
TERMINAL: tuple[JobStatus, ...] = ("finished", "failed", "cancelled")  # cancel leaves these as they are
ExportStatus = Literal["pending", "ready", "failed"]
FitnessMetric = Literal["loss", "bleu"]


@dataclasses.dataclass(frozen=True)
class FitnessConfig:
    """What fitness means; stored with the job so every evaluation of a job is comparable.

    The validation subset is fixed: the first `valid_sentences` sentences of the supernet's
    valid split (None = all of it), as HAT scores every subnet on the same data.
    """

    metric: FitnessMetric = "loss"
    valid_sentences: int | None = None
    max_tokens: int = 4096
    beam: int = 1  # BLEU fitness decodes greedily by default: 4x cheaper, same ranking purpose
    precision: str = "fp32"  # autocast dtype of scoring: bf16/fp16 on GPUs (tests/jobs: within 2% of fp32)

    def __post_init__(self) -> None:
        if self.metric not in get_args(FitnessMetric):
            raise SearchError(f"fitness metric must be 'loss' or 'bleu', got {self.metric!r}")
        if self.precision not in PRECISIONS:
            raise SearchError(f"fitness precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if (self.valid_sentences is not None and self.valid_sentences < 1) or self.max_tokens < 16 or self.beam < 1:
            raise SearchError("fitness needs valid_sentences >= 1 (or None), max_tokens >= 16 and beam >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RetrainSpec:
    """After the search, train the best verified front member as a standalone model (HAT's step 5): from scratch
    ("scratch") or from its inherited weights ("inherited"), with the space's recipe where it has one."""

    steps: int = 1200
    init: str = "scratch"
    average_last: int = 1  # checkpoints averaged into the model
    checkpoint_every: int = 200
    test_sentences: int | None = None  # test BLEU on the first N test sentences; None: all
    beam: int = 4

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise SearchError(f"retrain init must be 'scratch' or 'inherited', got {self.init!r}")
        if self.steps < 1 or self.average_last < 1 or self.checkpoint_every < 1 or self.beam < 1:
            raise SearchError("retraining needs steps, average_last, checkpoint_every and beam >= 1")
        if self.average_last > 1 and self.steps // min(self.checkpoint_every, self.steps) < self.average_last:
            raise SearchError(f"averaging {self.average_last} checkpoints needs at least that many: {self.steps} "
                              f"updates with one every {self.checkpoint_every} give fewer")
        if self.test_sentences is not None and self.test_sentences < 1:
            raise SearchError(f"test_sentences must be >= 1 (or None), got {self.test_sentences}")


@dataclasses.dataclass(frozen=True)
class PredictorPin:
    """The predictor a job uses for one of its extra budgets, fixed when the job is created (with the tuning
    database it was looked up under), so a resume predicts as the first run did."""

    kind: str
    version: int
    tuning_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """Everything that defines a search; stored with the job, so a resumed job runs the same search.

    `supernet` is a checkpoint path or empty: `create_job` fills it from the supernets table (the newest
    supernet registered for the space, or `supernet_id`) and stores both.
    """

    space: str
    device: str
    latency_ms: float  # the budget on `device`
    supernet: str = ""  # checkpoint path; "" = the registered one (see supernet_id)
    strategy: str = "evo"
    seed: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # strategy sizes (population, ...)
    fitness: FitnessConfig = FitnessConfig()
    predictor_kind: str | None = None  # pinned to the newest (kind, version) when the job is created
    predictor_version: int | None = None
    extra_constraints: tuple[tuple[str, float], ...] = ()  # more (device, budget ms), checked by their predictors
    extra_predictors: tuple[PredictorPin, ...] = ()  # one per extra constraint, pinned by create_job
    workers: int = 1
    gpus_per_worker: float = 0.0  # GPUs of each scoring actor (0: CPU threads)
    verify: bool = True  # measure the final front on the device
    tuning_dir: str | None = None
    supernet_id: int | None = None  # the supernets table's row; None with a path: unregistered checkpoint
    revision: int | None = None  # the device revision the job was created for (its predictor's)
    verified_members: int | None = None  # the verified front's size; None = the predicted front's, at least 5
    retrain: RetrainSpec | None = None  # retrain the best verified member after the search

    def __post_init__(self) -> None:
        for dev, ms in ((self.device, self.latency_ms), *self.extra_constraints):
            if not (isinstance(ms, int | float) and math.isfinite(ms) and ms > 0):
                raise SearchError(f"latency budget on '{dev}' must be a positive number of ms, got {ms}")
        if self.workers < 0:
            raise SearchError(f"workers must be >= 0, got {self.workers}")
        if not self.gpus_per_worker >= 0:
            raise SearchError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.verified_members is not None and self.verified_members < 1:
            raise SearchError(f"verified_members must be >= 1, got {self.verified_members}")
        if self.extra_predictors and len(self.extra_predictors) != len(self.extra_constraints):
            raise SearchError(f"{len(self.extra_predictors)} pinned predictors for {len(self.extra_constraints)} "
                              f"extra constraints")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["extra_constraints"] = [list(c) for c in self.extra_constraints]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpec:
        d = dict(d)
        d["fitness"] = FitnessConfig(**d.get("fitness", {}))
        d["extra_constraints"] = tuple((str(a), float(b)) for a, b in d.get("extra_constraints", ()))
        d["extra_predictors"] = tuple(PredictorPin(**p) for p in d.get("extra_predictors", ()))
        d["retrain"] = RetrainSpec(**d["retrain"]) if d.get("retrain") else None
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class JobProgress:
    """One step of a running job: `done` of `total` in `stage` ('candidates' of the batch being scored,
    'generations' of the search, front members measured in 'verify')."""

    job_id: int
    stage: Literal["generations", "candidates", "verify", "retrain"]
    done: int
    total: int
    description: str
    info: str = ""


ProgressCallback = Callable[[JobProgress], None]
