"""What the API and the dashboard do, on the database; each call checks the caller owns what it touches."""

from __future__ import annotations

import dataclasses
import tempfile
import threading
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from hwnas.api._schemas import (
    DeviceOut,
    DeviceProfileOut,
    ExportOut,
    JobCreate,
    MeasurementSummary,
    PredictIn,
    PredictionOut,
    PredictorOut,
    RevisionOut,
    public_message,
)
from hwnas.db import Database, Device, Export, Measurement, SearchJob, user_role
from hwnas.exceptions import HwnasError, NotFoundError, SearchError, SearchSpaceError
from hwnas.jobs import (
    ACTIVE,
    FitnessConfig,
    JobInfo,
    RetrainSpec,
    SearchSpec,
    SupernetInfo,
    candidates,
    create_job,
    front,
    get_job,
    get_supernet,
    plot_front,
    predict_latency,
    tuning_to_use,
)
from hwnas.kernels import check_target
from hwnas.latency import DeviceProfile, DeviceRegistry, list_predictors, parse_tracker
from hwnas.search import planned_evaluations, strategy_options
from hwnas.search_spaces import SubnetConfig, get_space, list_spaces
from hwnas.settings import Settings


def owned_job(db: Database, user: str, job_id: int) -> JobInfo:
    """The job, if `user` owns it; someone else's job is 'not found', never 'forbidden' (ids leak nothing)."""
    job = get_job(db, job_id)
    if job.owner != user:
        raise NotFoundError(f"no search job {job_id}")
    return job


def _server_supernet(db: Database, space: str) -> SupernetInfo:
    try:
        return get_supernet(db, space=space)
    except NotFoundError as e:  # the server lacks it: the request is fine, but cannot be served (not a 404)
        raise SearchError(f"no trained supernet for space '{space}' on this server (an admin trains one: "
                          f"hwnas supernet train --space {space})") from e


def spec_of(db: Database, body: JobCreate, viewer: Viewer) -> SearchSpec:
    """The library's search spec for a request: the space's newest registered supernet and the device's tuning
    database. Every device named must be one the viewer sees."""
    if body.space not in list_spaces():  # users name shipped spaces only, never files on the server
        raise SearchSpaceError(f"unknown space '{body.space}' (known: {', '.join(list_spaces())})")
    registry = DeviceRegistry(db)
    device = registry.get(body.device, visible_to=viewer.sees)
    for c in body.also:
        registry.get(c.device, visible_to=viewer.sees)
    net = _server_supernet(db, body.space)
    return SearchSpec(space=body.space, device=body.device, latency_ms=body.latency_ms, strategy=body.strategy,
                      seed=body.seed, supernet=net.path, supernet_id=net.id,
                      options=strategy_options(body.strategy, population=body.population,
                                               generations=body.generations),
                      fitness=FitnessConfig(metric=body.fitness, valid_sentences=body.valid_sentences,
                                            precision=body.precision),
                      extra_constraints=tuple((c.device, c.latency_ms) for c in body.also), workers=body.workers,
                      gpus_per_worker=body.gpus_per_worker,
                      retrain=RetrainSpec(**body.retrain.model_dump()) if body.retrain else None,
                      verify=body.verify, verified_members=body.verified_members,
                      tuning_dir=tuning_to_use(device, body.space))


class QuotaError(HwnasError):
    """A user holds as many of something as the service allows (HTTP 429); the message names the setting."""


class ForbiddenError(HwnasError):
    """A user may see it but not change it: a shared device is the operators' (HTTP 403)."""


@dataclasses.dataclass(frozen=True)
class Viewer:
    """Who asks: operators see and change every device; users see the shared ones and their own."""

    name: str
    role: str

    @classmethod
    def of(cls, db: Database, user: str) -> Viewer:
        return cls(user, user_role(db, user))

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    @property
    def sees(self) -> str | None:  # DeviceRegistry's visible_to
        return None if self.operator else self.name

    def sees_access(self, d: DeviceProfile) -> bool:
        """Whether the device's tracker address and key are shown: to operators, and to a private device's owner."""
        return self.operator or d.owner == self.name


def create_owned_job(db: Database, user: str, body: JobCreate, settings: Settings) -> int:
    """Validate and store `body` as `user`'s queued job, within the user's quotas. A device named in the body
    that does not exist is the body's fault (422), not a missing resource (404)."""
    try:
        spec = spec_of(db, body, Viewer.of(db, user))
        _check_job_quotas(db, user, spec, settings)
        return create_job(db, spec, owner=user)
    except NotFoundError as e:
        raise SearchError(str(e)) from e


def _check_job_quotas(db: Database, user: str, spec: SearchSpec, settings: Settings) -> None:
    evaluations = planned_evaluations(spec.options)
    if evaluations > settings.quota_evaluations:
        raise SearchError(f"population x generations = {evaluations} is over the quota of "
                          f"{settings.quota_evaluations} evaluations per job (HWNAS_QUOTA_EVALUATIONS)")
    if spec.workers > settings.quota_workers:
        raise SearchError(f"workers = {spec.workers} is over the quota of {settings.quota_workers} per job "
                          f"(HWNAS_QUOTA_WORKERS)")
    if spec.gpus_per_worker > settings.quota_gpus_per_worker:
        raise SearchError(f"gpus_per_worker = {spec.gpus_per_worker:g} is over the quota of "
                          f"{settings.quota_gpus_per_worker:g} (HWNAS_QUOTA_GPUS_PER_WORKER)")
    if spec.retrain is not None and spec.retrain.steps > settings.quota_retrain_steps:
        raise SearchError(f"retrain steps = {spec.retrain.steps} is over the quota of {settings.quota_retrain_steps} "
                          f"per job (HWNAS_QUOTA_RETRAIN_STEPS)")
    with db.session() as s:  # a soft limit: submissions racing past the count together all land
        active = s.scalar(select(func.count()).select_from(SearchJob)
                          .where(SearchJob.owner == user, SearchJob.status.in_(ACTIVE))) or 0
    if active >= settings.quota_active_jobs:
        raise QuotaError(f"{active} of your jobs are queued or running: the quota is {settings.quota_active_jobs} "
                         f"(HWNAS_QUOTA_ACTIVE_JOBS); cancel one or wait for it to finish")


def check_export_quota(db: Database, job_id: int, settings: Settings) -> None:
    with db.session() as s:
        n = s.scalar(select(func.count()).select_from(Export).where(Export.job_id == job_id)) or 0
    if n >= settings.quota_exports_per_job:
        raise QuotaError(f"job {job_id} has {n} exports: the quota is {settings.quota_exports_per_job} per job "
                         f"(HWNAS_QUOTA_EXPORTS_PER_JOB)")


def export_out(row: Export) -> ExportOut:
    return ExportOut(id=row.id, job_id=row.job_id, candidate_id=row.candidate_id, format=row.format,
                     status=row.status, error=public_message(row.error), created_at=row.created_at,
                     finished_at=row.finished_at, download=f"/exports/{row.id}")


def owned_export(db: Database, user: str, export_id: int) -> tuple[ExportOut, Path]:
    with db.session() as s:
        row = s.get(Export, export_id)
        owner = s.scalar(select(SearchJob.owner).where(SearchJob.id == row.job_id)) if row else None
        if row is None or owner != user:
            raise NotFoundError(f"no export {export_id}")
        return export_out(row), Path(row.path + ".zip")


def job_exports(db: Database, job_id: int) -> list[ExportOut]:
    with db.session() as s:
        return [export_out(r) for r in s.scalars(select(Export).where(Export.job_id == job_id).order_by(Export.id))]


def device_out(d: DeviceProfile, viewer: Viewer) -> DeviceOut:
    shown = viewer.sees_access(d)
    return DeviceOut(name=d.name, kind=d.kind, target=d.target, runtime=d.runtime, location=d.location,
                     owner=d.owner, tracker=d.tracker if shown else None, rpc_key=d.rpc_key if shown else None)


def device_profile(db: Database, name: str, viewer: Viewer) -> DeviceProfileOut:
    """A device with its revisions, its measurement count and noise, and its predictors with their provenance and
    held-out accuracy."""
    registry = DeviceRegistry(db)
    dev = registry.get(name, visible_to=viewer.sees)
    with db.session() as s:
        cvs = np.array([cv for cv in s.scalars(select(Measurement.latency_cv).join(Device).where(
            Device.name == name, Measurement.status == "ok")) if cv is not None], dtype=float)
    preds = [PredictorOut(**p) for p in list_predictors(db, name)]
    revisions = [RevisionOut(number=r.number, fingerprint=r.fingerprint, created_at=r.created_at,
                             measurements=r.measurements, predictors=r.predictors, current=r.current)
                 for r in registry.revisions(name)]
    summary = MeasurementSummary(ok=_count(db, name, "ok"), errors=_count(db, name, "error"),
                                 cv_median=float(np.median(cvs)) if cvs.size else None,
                                 cv_p90=float(np.percentile(cvs, 90)) if cvs.size else None)
    return DeviceProfileOut(**device_out(dev, viewer).model_dump(), fingerprint=dev.fingerprint,
                            protocol=dev.protocol.to_dict(), revisions=revisions, measurements=summary,
                            predictors=preds)


def predict(db: Database, name: str, body: PredictIn, viewer: Viewer) -> PredictionOut:
    """A subnet's predicted latency on the device, for the model the server searches (its supernet of the space)."""
    device = DeviceRegistry(db).get(name, visible_to=viewer.sees)  # first: another's device is a 404, whatever else
    if body.space not in list_spaces():  # users name shipped spaces only, never files on the server
        raise SearchSpaceError(f"unknown space '{body.space}' (known: {', '.join(list_spaces())})")
    space = get_space(body.space)
    try:
        subnet = SubnetConfig.from_dict(body.subnet)
    except (TypeError, ValueError, KeyError) as e:
        raise SearchSpaceError(f"subnet: not a subnet config of space '{space.name}' ({e})") from None
    p = predict_latency(db, device=device, space=space,
                        model_config=_server_supernet(db, body.space).model_config(), subnet=subnet,
                        kind=body.kind, version=body.version, revision=body.revision)
    return PredictionOut(**p.to_dict())


def _count(db: Database, name: str, status: str) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Measurement).join(Device)
                            .where(Device.name == name, Measurement.status == status)) or 0)


_PLOT_LOCK = threading.Lock()  # pyplot keeps global state: one figure at a time across request threads


def pareto_png(db: Database, job: JobInfo) -> bytes:
    """The job's Pareto plot (valid loss vs latency, front members marked) as PNG bytes."""
    rows, members = candidates(db, job.id), front(db, job.id)
    with _PLOT_LOCK, tempfile.TemporaryDirectory() as tmp:
        path = plot_front(Path(tmp) / "front.png", title=f"job {job.id}: {job.spec.space} on {job.spec.device}",
                          rows=rows, members=members, budget_ms=job.spec.latency_ms)
        return Path(path).read_bytes()


def add_device(db: Database, viewer: Viewer, profile: DeviceProfile, settings: Settings) -> DeviceProfile:
    """Register a device for `viewer`: an operator's is shared (compiler options allowed in its target); a
    user's is private, named after them, within their quota. The target is checked in a subprocess first."""
    registry = DeviceRegistry(db)
    if not viewer.operator:
        profile = dataclasses.replace(profile, owner=viewer.name)  # its name is checked against the owner here
        allowed = settings.user_tracker_hosts
        if profile.tracker is not None and allowed is not None and parse_tracker(profile.tracker)[0] not in allowed:
            raise ForbiddenError(f"tracker host '{parse_tracker(profile.tracker)[0]}' is not one users may name "
                                 f"(HWNAS_USER_TRACKER_HOSTS: {', '.join(allowed) or 'none'})")
        owned = registry.owned(viewer.name)
        if owned >= settings.quota_devices:
            raise QuotaError(f"you have {owned} private devices: the quota is {settings.quota_devices} "
                             f"(HWNAS_QUOTA_DEVICES); remove one first")
    check_target(profile.target, compiler_options=viewer.operator)  # a target can crash TVM: not in this process
    return registry.add(profile)


def remove_device(db: Database, viewer: Viewer, name: str) -> None:
    registry = DeviceRegistry(db)
    dev = registry.get(name, visible_to=viewer.sees)
    if not viewer.operator and dev.owner != viewer.name:
        raise ForbiddenError(f"device '{name}' is shared: only operators remove it")
    registry.remove(name, visible_to=viewer.sees)
