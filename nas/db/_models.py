"""Typed ORM tables (SQLAlchemy 2.0). API schemas live apart from these (hwnas.api, later)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = ["ApiToken", "Base", "Candidate", "Device", "DeviceRevision", "Export", "Generation", "Measurement",
           "ParetoMember", "Predictor", "SearchJob", "Supernet", "UTCDateTime", "User"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite stores no offset and hands back naive values, PostgreSQL hands back the session's
    time zone: normalise both to UTC so that rows compare equal whatever stored them.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; hwnas stores timezone-aware UTC only")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[float]: JSON, dt.datetime: UTCDateTime}


class Device(Base):
    """A measurement target: TVM target dict, runtime, where it runs, fingerprint and protocol."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    runtime: Mapped[str] = mapped_column(String(16))
    location: Mapped[str] = mapped_column(String(16))
    tracker: Mapped[str | None] = mapped_column(String(256))
    rpc_key: Mapped[str | None] = mapped_column(String(128))
    fingerprint: Mapped[dict[str, Any]] = mapped_column(JSON)  # the newest probed (see device_revisions)
    protocol: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # None: shared, registered by an operator; else a user's private device, seen and used by that user only
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    owner: Mapped[User | None] = relationship(lazy="joined")

    measurements: Mapped[list[Measurement]] = relationship(back_populates="device", cascade="all, delete-orphan",
                                                           passive_deletes=True)


class DeviceRevision(Base):
    """One hardware/software state of a device: what its measurements and predictors were taken on.

    A revision is its fingerprint's latency-relevant fields (`fingerprint_key`); a device probed with
    fields that differ begins a new revision, and one that matches an older revision again (a machine
    pool alternating CPUs) is that revision again: its measurements were taken on the same thing.
    """

    __tablename__ = "device_revisions"
    __table_args__ = (UniqueConstraint("device_id", "number", name="uq_revision_number"),
                      UniqueConstraint("device_id", "fingerprint_key", name="uq_revision_fingerprint"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per device
    fingerprint: Mapped[dict[str, Any]] = mapped_column(JSON)  # the whole probe that began it
    fingerprint_key: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Measurement(Base):
    """Raw timings of one subnet on one device revision, of one model, under one protocol and tuning database
    (or the error)."""

    __tablename__ = "measurements"
    __table_args__ = (UniqueConstraint("device_id", "revision_id", "space", "model_key", "subnet_key", "protocol_key",
                                       "tuning_key", name="uq_measurement_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("device_revisions.id", ondelete="CASCADE"), index=True)
    model_key: Mapped[str] = mapped_column(String(64), default="")  # '' = not recorded
    space: Mapped[str] = mapped_column(String(128))
    subnet_key: Mapped[str] = mapped_column(String(16))
    subnet: Mapped[dict[str, Any]] = mapped_column(JSON)
    protocol: Mapped[dict[str, Any]] = mapped_column(JSON)
    protocol_key: Mapped[str] = mapped_column(String(16))
    tuning_key: Mapped[str] = mapped_column(String(64))  # '' = untuned kernels
    status: Mapped[str] = mapped_column(String(8))  # 'ok' | 'error'
    error: Mapped[str | None] = mapped_column(Text)
    encoder_ms: Mapped[list[float] | None] = mapped_column(JSON)
    decoder_step_ms: Mapped[list[float] | None] = mapped_column(JSON)
    latency_ms: Mapped[float | None] = mapped_column(Float)  # median end-to-end, derived for queries
    latency_cv: Mapped[float | None] = mapped_column(Float)
    reference_ms: Mapped[float | None] = mapped_column(Float)  # the session's reference latency (protocol.reference)
    board: Mapped[str | None] = mapped_column(String(300))  # the board of a remote device that timed it (HOST:PORT)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    device: Mapped[Device] = relationship(back_populates="measurements")


class Predictor(Base):
    """A trained latency predictor, versioned per (device, kind), with what it was trained on: the device
    revision, space, model, protocol and tuning database of its measurements (its provenance)."""

    __tablename__ = "predictors"
    __table_args__ = (UniqueConstraint("device_id", "kind", "version", name="uq_predictor_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("device_revisions.id", ondelete="CASCADE"), index=True)
    model_key: Mapped[str] = mapped_column(String(64), default="")  # '' = not recorded
    protocol_key: Mapped[str] = mapped_column(String(16), default="")
    tuning_key: Mapped[str] = mapped_column(String(64), default="")
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    space: Mapped[str] = mapped_column(String(128))
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fingerprint: Mapped[dict[str, Any]] = mapped_column(JSON)
    training_data_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Supernet(Base):
    """A trained SuperTransformer checkpoint on disk, registered for search jobs."""

    __tablename__ = "supernets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    space: Mapped[str] = mapped_column(String(128))
    data: Mapped[str] = mapped_column(String(512))
    path: Mapped[str] = mapped_column(String(1024))
    step: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SearchJob(Base):
    """One search: its full spec (the job's identity), where it stands, and how it ended."""

    __tablename__ = "search_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(128), index=True)  # the service's user; None = local CLI
    space: Mapped[str] = mapped_column(String(128))
    device: Mapped[str] = mapped_column(String(128))
    strategy: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # hwnas.jobs.JobStatus
    error: Mapped[str | None] = mapped_column(Text)
    generation: Mapped[int] = mapped_column(Integer, default=0)  # batches finished
    generations_total: Mapped[int] = mapped_column(Integer)
    evaluations: Mapped[int] = mapped_column(Integer, default=0)
    best_loss: Mapped[float | None] = mapped_column(Float)
    best_subnet_key: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # a 'running' job with a stale beat died
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # One runner at a time: the runner's "host:pid" and until when it holds the job (renewed by its heartbeats).
    lease_owner: Mapped[str | None] = mapped_column(String(256))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # runs started (resumes count)
    note: Mapped[str | None] = mapped_column(Text)  # how verification ended (members that met the budget)


class Generation(Base):
    """The strategy's state after a finished batch: where a killed search resumes."""

    __tablename__ = "search_generations"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_generation_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("search_jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    evaluated: Mapped[int] = mapped_column(Integer)  # new evaluations in this batch
    best_loss: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Candidate(Base):
    """One evaluated subnet of a job (canonical, so each is evaluated once per job)."""

    __tablename__ = "search_candidates"
    __table_args__ = (UniqueConstraint("job_id", "subnet_key", name="uq_candidate_subnet"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("search_jobs.id", ondelete="CASCADE"), index=True)
    subnet_key: Mapped[str] = mapped_column(String(16))
    subnet: Mapped[dict[str, Any]] = mapped_column(JSON)
    generation: Mapped[int] = mapped_column(Integer)  # the batch that first evaluated it
    loss: Mapped[float | None] = mapped_column(Float)  # None = failed (see error)
    bleu: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    predicted_latency_ms: Mapped[float] = mapped_column(Float)  # on the job's device
    params: Mapped[int] = mapped_column(BigInteger)
    flops: Mapped[int] = mapped_column(BigInteger)
    eval_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ParetoMember(Base):
    """A member of a job's final front, with its latency measured on the device (the verified figure)."""

    __tablename__ = "pareto_members"
    __table_args__ = (UniqueConstraint("job_id", "candidate_id", name="uq_pareto_candidate"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("search_jobs.id", ondelete="CASCADE"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("search_candidates.id", ondelete="CASCADE"))
    measurement_id: Mapped[int | None] = mapped_column(ForeignKey("measurements.id", ondelete="SET NULL"))
    measured_latency_ms: Mapped[float | None] = mapped_column(Float)  # None = the measurement failed
    meets_constraint: Mapped[bool | None] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Export(Base):
    """A bundle written for one candidate of a job."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("search_jobs.id", ondelete="CASCADE"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("search_candidates.id", ondelete="CASCADE"))
    format: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The service writes exports on Ray: 'pending' until the bundle (and its .zip) exist, or 'failed' with why.
    status: Mapped[str] = mapped_column(String(16), default="ready", server_default="ready")
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RetrainedModel(Base):
    """A job's candidate trained as a standalone model after the search (HAT's step 5): what its weights are."""

    __tablename__ = "retrained_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("search_jobs.id", ondelete="CASCADE"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("search_candidates.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1024))  # the model file (hwnas.supernet.load_subtransformer)
    weights: Mapped[str] = mapped_column(String(16))  # 'retrained' (from scratch) | 'fine-tuned'
    steps: Mapped[int] = mapped_column(Integer)
    averaged: Mapped[int] = mapped_column(Integer)  # checkpoints averaged into it
    test_bleu: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    """A user of the service; owns the search jobs submitted with their tokens."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    role: Mapped[str] = mapped_column(String(16), default="user", server_default="user")  # "operator" or "user"

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan",
                                                  passive_deletes=True)


class ApiToken(Base):
    """A bearer token, stored as its SHA-256 only (tokens are 256 random bits: no salt or KDF needed)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # None: never (tokens made before 0006)
    session: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # the dashboard's own

    user: Mapped[User] = relationship(back_populates="tokens")
