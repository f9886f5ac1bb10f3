"""The end of a search: its Pareto front, each member measured on the device and held against the budget."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select

from hwnas.db import Database, Device, DeviceRevision, Measurement, ParetoMember
from hwnas.jobs._lease import heartbeat
from hwnas.jobs._spec import JobProgress, ProgressCallback, SearchSpec
from hwnas.jobs._store import CandidateRow, candidates, front_candidates, job_model_config, job_provenance
from hwnas.latency import DeviceRegistry, Provenance, SQLMeasurementStore, measure
from hwnas.search_spaces import get_space

__all__ = ["store_front", "verify_front"]

Measured = dict[str, tuple[int, float | None, str | None]]  # subnet key -> (measurement id, latency ms, error)


def verify_front(db: Database, job_id: int, spec: SearchSpec, report: ProgressCallback) -> None:
    """Measure every front member on the device (re-using stored measurements of the same provenance: device
    revision, model, protocol, tuning database)."""
    members = front_candidates(candidates(db, job_id), spec.latency_ms)
    device, space = DeviceRegistry(db).get(spec.device), get_space(spec.space)
    prov = job_provenance(db, spec)
    measured = _measurements(db, prov)
    todo = [m.subnet for m in members if m.subnet.key() not in measured]
    if todo:
        mc = job_model_config(spec)
        store = SQLMeasurementStore(db)
        title = f"measure the front on {device.name}"
        report(JobProgress(job_id, "verify", 0, len(todo), title))
        for done, cfg in enumerate(todo, 1):  # one at a time: the device alone, each stored as soon as it lands
            for rec in measure(device=device, space=space, model_config=mc, subnets=[cfg],
                               tuning_dir=spec.tuning_dir):
                store.add(rec)
            heartbeat(db, job_id)  # a front measurement takes seconds to a minute: keep the lease
            report(JobProgress(job_id, "verify", done, len(todo), title))
        measured = _measurements(db, prov)
    store_front(db, job_id, spec, measured, members)


def _measurements(db: Database, prov: Provenance) -> Measured:
    with db.session() as s:
        rows = s.execute(select(Measurement.subnet_key, Measurement.id, Measurement.latency_ms, Measurement.error)
                         .join(Device, Measurement.device_id == Device.id)
                         .join(DeviceRevision, Measurement.revision_id == DeviceRevision.id)
                         .where(Device.name == prov.device, DeviceRevision.number == prov.revision,
                                Measurement.space == prov.space, Measurement.model_key == prov.model_key,
                                Measurement.protocol_key == prov.protocol_key,
                                Measurement.tuning_key == prov.tuning_key)).all()
    return {k: (i, lat, err) for k, i, lat, err in rows}


def store_front(db: Database, job_id: int, spec: SearchSpec, measured: Measured,
                members: Sequence[CandidateRow] | None = None) -> None:
    """Write the job's front (whole), each member with its measurement, or why it has none."""
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
