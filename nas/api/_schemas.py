"""Request and response bodies of the API (pydantic), kept apart from the database tables."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hwnas.db import TokenInfo
from hwnas.export import ExportFormat
from hwnas.jobs import CandidateRow, ExportStatus, FitnessMetric, FrontMember, JobInfo, JobStatus, RetrainedInfo
from hwnas.latency import DeviceKind, DeviceRuntime
from hwnas.search import StrategyName as Strategy

_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+[^\s'\",;:)]*")


def public_message(text: str | None) -> str | None:
    """`text` with server paths left out: what a user is shown of an error written on the cluster."""
    return _SERVER_PATH.sub("<server path>", text) if text else text


_Name = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class ConstraintIn(_In):
    device: str = _Name
    latency_ms: float = Field(gt=0, le=1e7, allow_inf_nan=False)


class RetrainIn(_In):
    """Retrain the best verified front member after the search (HAT's step 5); its exports carry those weights."""

    steps: int = Field(ge=1, le=1_000_000, description="Updates (the server's quota may allow fewer)")
    init: Literal["scratch", "inherited"] = Field("scratch", description="From scratch (HAT) or fine-tuned")
    average_last: int = Field(1, ge=1, le=50, description="Checkpoints averaged into the model")
    checkpoint_every: int = Field(200, ge=1, le=1_000_000)
    test_sentences: int | None = Field(None, ge=1, le=100_000, description="Test BLEU on the first N sentences")


class RetrainedOut(BaseModel):
    candidate_id: int
    weights: str = Field(description="retrained (from scratch) or fine-tuned")
    steps: int
    averaged: int
    test_bleu: float | None
    test_loss: float | None


class JobCreate(_In):
    """A search job: find the best subnets of `space` under `latency_ms` on `device`."""

    space: str = Field("quickstart", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    device: str = Field("local-cpu", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    latency_ms: float = Field(gt=0, le=1e7, allow_inf_nan=False, description="Latency budget on the device (ms)")
    strategy: Strategy = "evo"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    population: int | None = Field(None, ge=4, le=2000, description="Candidates per generation/batch")
    generations: int | None = Field(None, ge=1, le=1000, description="Generations (evo) or batches (others)")
    workers: int = Field(1, ge=1, le=64, description="Ray actors scoring candidates")
    gpus_per_worker: float = Field(0.0, ge=0, le=8, allow_inf_nan=False,
                                   description="GPUs of each scoring actor (0: CPUs); the cluster must have them")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast dtype of scoring")
    fitness: FitnessMetric = "loss"
    valid_sentences: int | None = Field(None, ge=1, le=100_000)
    also: list[ConstraintIn] = Field(default_factory=list, max_length=8, description="More (device, budget) pairs")
    verify: bool = Field(True, description="Measure the final front on the device")
    verified_members: int | None = Field(None, ge=1, le=100, description="Front members that must meet the budget "
                                         "when measured; default: the predicted front's size, at least 5")
    retrain: RetrainIn | None = Field(None, description="Retrain the best verified member afterwards")


class JobOut(BaseModel):
    id: int
    status: JobStatus
    error: str | None
    note: str | None = Field(None, description="How verification ended: how many front members met the budget "
                                               "when measured")
    space: str
    device: str
    latency_ms: float
    strategy: str
    generation: int
    generations_total: int
    progress: float = Field(description="Finished generations / total, 0..1")
    evaluations: int
    best_loss: float | None
    best_subnet_key: str | None
    attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    finished_at: dt.datetime | None
    spec: dict[str, Any]
    retrained: RetrainedOut | None = Field(None, description="The best member's retrained model, once trained")

    @classmethod
    def of(cls, j: JobInfo, retrained: RetrainedInfo | None = None) -> JobOut:
        spec = j.spec.to_dict()
        spec.pop("supernet", None)  # a server path: not the user's business
        spec.pop("tuning_dir", None)
        return cls(id=j.id, status=j.status, error=public_message(j.error), note=j.note, space=j.spec.space,
                   device=j.spec.device, latency_ms=j.spec.latency_ms, strategy=j.spec.strategy,
                   generation=j.generation, generations_total=j.generations_total,
                   progress=min(1.0, j.generation / j.generations_total) if j.generations_total else 0.0,
                   evaluations=j.evaluations, best_loss=j.best_loss, best_subnet_key=j.best_subnet_key,
                   attempts=j.attempts, created_at=j.created_at, started_at=j.started_at,
                   heartbeat_at=j.heartbeat_at, finished_at=j.finished_at, spec=spec,
                   retrained=RetrainedOut(candidate_id=retrained.candidate_id, weights=retrained.weights,
                                          steps=retrained.steps, averaged=retrained.averaged,
                                          test_bleu=retrained.test_bleu, test_loss=retrained.test_loss)
                   if retrained else None)


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class CandidateOut(BaseModel):
    id: int
    subnet_key: str
    subnet: dict[str, Any]
    generation: int
    loss: float | None
    bleu: float | None
    error: str | None
    predicted_latency_ms: float
    params: int
    flops: int

    @classmethod
    def of(cls, c: CandidateRow) -> CandidateOut:
        return cls(id=c.id, subnet_key=c.subnet.key(), subnet=c.subnet.to_dict(), generation=c.generation,
                   loss=c.loss, bleu=c.bleu, error=public_message(c.error),
                   predicted_latency_ms=c.predicted_latency_ms, params=c.params, flops=c.flops)


class ParetoMemberOut(BaseModel):
    candidate: CandidateOut
    measured_latency_ms: float | None
    meets_constraint: bool | None
    error: str | None

    @classmethod
    def of(cls, m: FrontMember) -> ParetoMemberOut:
        return cls(candidate=CandidateOut.of(m.candidate), measured_latency_ms=m.measured_latency_ms,
                   meets_constraint=m.meets_constraint, error=m.error)


class ExportCreate(_In):
    candidate_id: int = Field(ge=1, le=2**31 - 1)
    format: ExportFormat = "onnx"


class ExportOut(BaseModel):
    id: int
    job_id: int
    candidate_id: int
    format: str
    status: ExportStatus
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    download: str = Field(description="GET this path for the bundle (.zip) once ready")


class DeviceCreate(_In):
    name: str = _Name
    kind: DeviceKind
    target: dict[str, Any] = Field(description='TVM target as a JSON object, e.g. {"kind": "llvm", "mcpu": "znver4"}')
    runtime: DeviceRuntime = "tvm"
    tracker: str | None = Field(None, max_length=256, pattern=r"^[A-Za-z0-9_.-]+:[0-9]{1,5}$",
                                description="HOST:PORT of the TVM RPC tracker (remote devices)")
    key: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$",
                             description="RPC device key (remote devices)")
    ray_node: bool = Field(False, description="Measured on the Ray node dedicated to it (advertising the resource "
                                              "hwnas_device:NAME), not through RPC or on the API's machine")
    timed_runs: int = Field(100, ge=20, le=100_000, description="Timed runs per measurement")
    passes: int = Field(1, ge=1, le=1000, description="Timed runs split into passes interleaved across a batch's "
                                                     "subnets; latency = the fastest pass's medians")


class DeviceOut(BaseModel):
    name: str
    kind: str
    target: dict[str, Any]
    runtime: str
    location: str
    owner: str | None = Field(description="The user whose private device it is; null: shared")
    tracker: str | None = Field(description="Shown to operators and to a private device's owner")
    rpc_key: str | None = Field(description="Shown to operators and to a private device's owner")


class MeasurementSummary(BaseModel):
    ok: int
    errors: int
    cv_median: float | None = Field(description="Median coefficient of variation of a record's timings")
    cv_p90: float | None


class PredictorOut(BaseModel):
    kind: str
    version: int
    revision: int | None = Field(description="The device revision it was trained on (None: before revisions)")
    space: str
    model_key: str = Field(description="The model it predicts for: vocabulary and attention width")
    tuning_key: str = Field(description="The tuning database of its measurements ('' = untuned kernels)")
    created_at: dt.datetime
    metrics: dict[str, Any]


class RevisionOut(BaseModel):
    number: int
    fingerprint: dict[str, Any]
    created_at: dt.datetime
    measurements: int
    predictors: int
    current: bool = Field(description="The device as probed now belongs to it")


class DeviceProfileOut(DeviceOut):
    fingerprint: dict[str, Any]
    protocol: dict[str, Any]
    revisions: list[RevisionOut]
    measurements: MeasurementSummary
    predictors: list[PredictorOut]


class PredictIn(_In):
    """A subnet of `space` whose latency on the device is asked for."""

    space: str = Field("quickstart", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    subnet: dict[str, Any] = Field(description="A SubnetConfig as JSON (as `hwnas supernet extract` writes)")
    kind: str | None = Field(None, max_length=32, description="Predictor kind; default: the newest of any kind")
    version: int | None = Field(None, ge=1, description="Predictor version (with kind)")
    revision: int | None = Field(None, ge=1, description="Device revision; default: the device as probed now")


class PredictionOut(BaseModel):
    device: str
    revision: int
    space: str
    subnet: dict[str, Any]
    latency_ms: float
    error_ms: float = Field(description="The predictor's held-out MAPE x the prediction")
    kind: str
    version: int
    mape: float
    within_10pct: float
    model_key: str
    tuning_key: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx: one line saying what was wrong and with which input."""

    detail: str
    errors: list[dict[str, Any]] | None = Field(None, description="Each invalid field (validation errors only)")


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    version: str


class TokenOut(BaseModel):
    """A token's record (never the token: only its hash is kept)."""

    id: int
    label: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    session: bool = Field(description="Minted by a dashboard login; revoked by its logout")
    live: bool

    @classmethod
    def of(cls, t: TokenInfo) -> TokenOut:
        return cls(id=t.id, label=t.label, created_at=t.created_at, expires_at=t.expires_at,
                   last_used_at=t.last_used_at, revoked_at=t.revoked_at, session=t.session, live=t.live())


class Revoked(BaseModel):
    revoked: int
