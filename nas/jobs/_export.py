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
from hwnas.exceptions import ExportError, HwnasError, MeasurementError, NotFoundError
from hwnas.export import FORMAT_RUNTIME, LatencyCertificate, export_bundle
from hwnas.jobs._retrain import retrained_model
from hwnas.jobs._spec import ExportStatus
from hwnas.jobs._store import get_job, tuning_to_use
from hwnas.latency import DeviceProfile, DeviceRegistry, MeasurementRecord, SQLMeasurementStore, measure
from hwnas.search_spaces import SubnetConfig, get_space
from hwnas.settings import Settings
from hwnas.supernet import load_subtransformer, load_supernet, subtransformer_provenance

__all__ = ["candidate_subnet", "certificate_device", "export_candidate", "export_dir", "run_export"]


# This machine's CPU under each runtime: where a local CPU job's bundle is certified when its format runs on
# another runtime than the job's device (an ONNX bundle of a TVM search is timed by ONNX Runtime).
LOCAL_CPU_BY_RUNTIME = {"tvm": "local-cpu", "torch": "local-cpu-torch", "onnxruntime": "local-cpu-ort"}


def certificate_device(db: Database, job_device: str, fmt: str, device: str | None = None) -> DeviceProfile:
    """The device a `fmt` bundle's certificate is measured on: `device` when given (its runtime must be the
    format's), else the job's device when its runtime is the format's, else this machine's CPU under the
    format's runtime when the job's device is a local CPU. Anything else is one clear error, never another
    runtime's figure."""
    if fmt not in FORMAT_RUNTIME:
        raise ExportError(f"unknown export format '{fmt}' (one of {', '.join(FORMAT_RUNTIME)})")
    runtime, registry = FORMAT_RUNTIME[fmt], DeviceRegistry(db)
    profile = registry.get(device or job_device)
    if profile.runtime == runtime:
        return profile
    if device is None and profile.location == "local" and profile.kind == "cpu":
        return registry.get(LOCAL_CPU_BY_RUNTIME[runtime])
    raise ExportError(f"{fmt} bundles run on {runtime}, but device '{profile.name}' measures with "
                      f"{profile.runtime}: name a device of runtime {runtime} for its certificate (--device; "
                      f"this machine's CPU: {LOCAL_CPU_BY_RUNTIME[runtime]})")


def candidate_subnet(db: Database, job_id: int, candidate_id: int) -> SubnetConfig:
    """A job's candidate's subnet; an unknown (job, candidate) is one `NotFoundError`."""
    get_job(db, job_id)
    with db.session() as s:
        row = s.scalar(select(Candidate).where(Candidate.job_id == job_id, Candidate.id == candidate_id))
        if row is None:
            raise NotFoundError(f"search job {job_id} has no candidate {candidate_id} (see: hwnas search show "
                                f"{job_id})")
        return SubnetConfig.from_dict(row.subnet)


def export_candidate(db: Database, job_id: int, candidate_id: int, *, fmt: str, out_dir: str | Path,
                     record: bool = True, device: str | None = None, weights: str | Path | None = None) -> Path:
    """Extract the candidate from the job's supernet, certify its latency, write the bundle.

    The certificate is measured with the runtime the format deploys with, on `certificate_device`: the job's
    device when it measures with that runtime (the front's verification measured the candidate there, and that
    stored measurement is reused), else this machine's CPU under that runtime, or `device`. A candidate never
    measured there is measured now, and the record kept. `record=False` leaves the `exports` row to the caller
    (the service keeps its own). `weights`: a model file of this candidate retrained or fine-tuned
    (`hwnas subnet train`), or "inherited"; by default the model the job's retraining stage made of this
    candidate, else the weights it inherits from the supernet. The bundle says which it carries.
    """
    spec = get_job(db, job_id).spec
    subnet = candidate_subnet(db, job_id, candidate_id)
    model, provenance = None, None
    if weights is None:  # the job's retraining stage trained this candidate: its weights are the deployable ones
        done = retrained_model(db, job_id, candidate_id)
        if done is not None:
            if not Path(done.path).exists():
                raise ExportError(f"candidate {candidate_id} was retrained, but its model file '{done.path}' is gone "
                                  f"(export its inherited weights with weights='inherited')")
            weights = done.path
    if weights is not None and str(weights) != "inherited":
        model, tokenizer = load_subtransformer(weights)
        provenance = subtransformer_provenance(weights) or {"weights": "unknown"}
        if model.cfg != subnet:
            raise ExportError(f"model file '{weights}' holds subnet {model.cfg.key()}, not candidate {candidate_id}'s "
                              f"({subnet.key()})")
    profile = certificate_device(db, spec.device, fmt, device)
    tuning_dir = spec.tuning_dir if profile.name == spec.device else tuning_to_use(profile, spec.space)
    space, supernet = get_space(spec.space), load_supernet(spec.supernet)
    store, registry = SQLMeasurementStore(db), DeviceRegistry(db)
    mc = supernet.model.mc  # latency depends on shapes only: the supernet's measurements hold for retrained weights
    if model is None:
        model, tokenizer = supernet.model.extract_subnet(subnet).eval(), supernet.tokenizer
        provenance = {"weights": "inherited", "steps": supernet.step, "supernet": str(spec.supernet)}

    def stored() -> list[MeasurementRecord]:
        if registry.revision(profile) is None:  # a revision never measured: nothing stored
            return []
        prov = registry.provenance(profile, space, mc, tuning_dir)
        return [r for r in store.records_of(prov) if r.subnet == subnet and r.result.ok]

    found = stored()
    if not found:
        (rec,) = measure(device=profile, space=space, model_config=mc, subnets=[subnet], tuning_dir=tuning_dir,
                         reference_root=Settings().reference_builds_dir())
        store.add(rec)
        if not rec.result.ok:
            raise MeasurementError(f"cannot certify candidate {candidate_id} on '{profile.name}': its measurement "
                                   f"failed ({rec.result.error})")
        found = stored()  # as stored: with its revision
    certificate = LatencyCertificate.from_record(found[-1], profile)
    tvm = fmt == "tvm"
    path = export_bundle(model=model, tokenizer=tokenizer, out_dir=out_dir, fmt=fmt,  # type: ignore[arg-type]
                         certificate=certificate, target=profile.target if tvm else None,
                         tuning_dir=tuning_dir if tvm else None, provenance=provenance)
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
