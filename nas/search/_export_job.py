"""`hwnas export JOB --candidate K`: a job's candidate as a standalone bundle with its latency certificate."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from hwnas.db import Database
from hwnas.db._models import Candidate, Export
from hwnas.exceptions import NotFoundError
from hwnas.search._job import get_job
from hwnas.search_spaces import SubnetConfig, get_space


def export_candidate(db: Database, job_id: int, candidate_id: int, *, fmt: str, out_dir: str | Path,
                     record: bool = True) -> Path:
    """Extract the candidate from the job's supernet, certify its latency on the job's device, write the bundle.

    The certificate is the stored measurement under the job's protocol and tuning database (the front's
    verification measured it); a candidate never measured is measured now, and the record kept.
    `record=False` leaves the `exports` row to the caller (the service keeps its own).
    """
    from hwnas._export import LatencyCertificate, export_bundle
    from hwnas.latency._collect import measure, tuning_key
    from hwnas.latency._devices import protocol_for
    from hwnas.latency._registry import DeviceRegistry, SQLMeasurementStore
    from hwnas.supernet import load_supernet

    spec = get_job(db, job_id).spec
    with db.session() as s:
        row = s.scalar(select(Candidate).where(Candidate.job_id == job_id, Candidate.id == candidate_id))
        if row is None:
            raise NotFoundError(f"search job {job_id} has no candidate {candidate_id} (see: hwnas search show "
                                f"{job_id})")
        subnet = SubnetConfig.from_dict(row.subnet)
    device, space = DeviceRegistry(db).get(spec.device), get_space(spec.space)
    supernet = load_supernet(spec.supernet)
    store, protocol, tkey = SQLMeasurementStore(db), protocol_for(device, space), tuning_key(spec.tuning_dir)
    found = [r for r in store.records(device=device.name, space=space.name, protocol_key=protocol.key(),
                                      tuning_key=tkey) if r.subnet == subnet and r.result.ok]
    if not found:
        rec = measure(device=device, space=space, model_config=supernet.model.mc, subnets=[subnet],
                      tuning_dir=spec.tuning_dir)[0]
        store.add(rec)
        found = [rec]
    certificate = LatencyCertificate.from_record(found[-1], device) if found[-1].result.ok else None
    tvm = fmt == "tvm" and device.runtime == "tvm"
    path = export_bundle(model=supernet.model.extract_subnet(subnet).eval(), tokenizer=supernet.tokenizer,
                         out_dir=out_dir, fmt=fmt, certificate=certificate,  # type: ignore[arg-type]
                         target=device.target if tvm else None, tuning_dir=spec.tuning_dir if tvm else None)
    if not record:
        return Path(path)
    with db.session() as s:
        s.add(Export(job_id=job_id, candidate_id=candidate_id, format=fmt, path=str(Path(path).resolve())))
    return Path(path)
