"""A job's candidate as a standalone bundle with its latency certificate: directly, or as an export row that a
runner writes (the service's exports)."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
from pathlib import Path

from sqlalchemy import select

from hwnas.db import Candidate, Database, Export
from hwnas.exceptions import HwnasError, NotFoundError
from hwnas.export import LatencyCertificate, export_bundle
from hwnas.jobs._spec import ExportStatus
from hwnas.jobs._store import get_job, job_provenance
from hwnas.latency import DeviceRegistry, SQLMeasurementStore, measure
from hwnas.search_spaces import SubnetConfig, get_space
from hwnas.settings import Settings
from hwnas.supernet import load_supernet

__all__ = ["export_candidate", "export_dir", "run_export"]


def export_candidate(db: Database, job_id: int, candidate_id: int, *, fmt: str, out_dir: str | Path,
                     record: bool = True) -> Path:
    """Extract the candidate from the job's supernet, certify its latency on the job's device, write the bundle.

    The certificate is the stored measurement under the job's protocol and tuning database (the front's
    verification measured it); a candidate never measured is measured now, and the record kept.
    `record=False` leaves the `exports` row to the caller (the service keeps its own).
    """
    spec = get_job(db, job_id).spec
    with db.session() as s:
        row = s.scalar(select(Candidate).where(Candidate.job_id == job_id, Candidate.id == candidate_id))
        if row is None:
            raise NotFoundError(f"search job {job_id} has no candidate {candidate_id} (see: hwnas search show "
                                f"{job_id})")
        subnet = SubnetConfig.from_dict(row.subnet)
    device, space = DeviceRegistry(db).get(spec.device), get_space(spec.space)
    supernet = load_supernet(spec.supernet)
    store, prov = SQLMeasurementStore(db), job_provenance(db, spec)
    found = [r for r in store.records_of(prov) if r.subnet == subnet and r.result.ok]
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


def export_dir(export_id: int, settings: Settings | None = None) -> Path:
    """A fresh directory name for an export row (ids restart in a new database; the workspace may outlive it)."""
    return (settings or Settings()).exports_dir() / f"export-{export_id}-{secrets.token_hex(4)}"


def run_export(db: Database, export_id: int) -> None:
    """Write export `export_id`'s bundle and its .zip (atomically), then mark the row ready, or failed with why."""
    with db.session() as s:
        row = s.get_one(Export, export_id)
        job_id, candidate_id, fmt, path = row.job_id, row.candidate_id, row.format, Path(row.path)
    try:
        if path.exists():  # left by a runner that died mid-export: this export's own, so rewrite it whole
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        bundle = export_candidate(db, job_id, candidate_id, fmt=fmt, out_dir=path, record=False)
        tmp = shutil.make_archive(str(path) + ".partial", "zip", root_dir=bundle)
        os.replace(tmp, str(path) + ".zip")
    except Exception as e:  # failures are data: the row says why
        _finish_export(db, export_id, "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise HwnasError(f"export {export_id} failed: {e}") from e
    _finish_export(db, export_id, "ready", None)


def _finish_export(db: Database, export_id: int, status: ExportStatus, error: str | None) -> None:
    with db.session() as s:
        row = s.get_one(Export, export_id)
        row.status, row.error, row.finished_at = status, error, dt.datetime.now(dt.UTC)
