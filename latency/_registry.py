"""Devices and their revisions, measurements and predictors in the results database (hwnas.db)."""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import hashlib
import json
import logging
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hwnas.db import Database
from hwnas.db import Device as DeviceRow
from hwnas.db import DeviceRevision as RevisionRow
from hwnas.db import Measurement as MeasurementRow
from hwnas.db import Predictor as PredictorRow
from hwnas.db import User as UserRow
from hwnas.exceptions import DuplicateError, MeasurementError, NotFoundError
from hwnas.latency._collect import MeasurementRecord, MeasurementStore, Provenance, latency_model_key, tuning_key
from hwnas.latency._devices import (
    DeviceProfile,
    builtin_devices,
    fingerprint_diff,
    fingerprint_key,
    probe_fingerprint,
    protocol_for,
)
from hwnas.latency._predictor import LatencyPredictor
from hwnas.latency._protocol import MeasureConfig, RunResult
from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet import ModelConfig

log = logging.getLogger(__name__)
_Select = TypeVar("_Select", bound="Select[*tuple[Any, ...]]")


@dataclasses.dataclass(frozen=True)
class Revision:
    """One revision of a device: its number, the fingerprint that began it, and what belongs to it."""

    device: str
    number: int
    fingerprint: dict[str, Any]
    created_at: dt.datetime
    measurements: int
    predictors: int
    current: bool  # the device's fingerprint as probed now belongs to it


def _profile(row: DeviceRow) -> DeviceProfile:
    return DeviceProfile(name=row.name, kind=row.kind, target=dict(row.target), runtime=row.runtime,
                         location=row.location, tracker=row.tracker, rpc_key=row.rpc_key,
                         fingerprint=dict(row.fingerprint), protocol=MeasureConfig.from_dict(row.protocol),
                         owner=row.owner.name if row.owner is not None else None)


def _visible(row: DeviceRow, user: str | None) -> bool:
    """Whether `user` sees the device (None: everyone's view, the operators' and the CLI's)."""
    return user is None or row.owner is None or row.owner.name == user


class DeviceRegistry:
    """Device profiles: the built-in ones plus those in the `devices` table (built-ins get a row when first used).

    Callers get `DeviceProfile`s, never live rows. Removing a device removes its measurements and predictors.
    """

    def __init__(self, db: Database):
        self.db = db
        self._revision_ids: dict[tuple[str, str], int] = {}  # (device, fingerprint key) -> row id
        self._measured_on: dict[str, str] = {}  # device -> fingerprint key its row was last brought to

    def add(self, profile: DeviceProfile) -> DeviceProfile:
        """Register `profile`; a built-in or taken name is a DuplicateError."""
        if profile.name in builtin_devices():
            raise DuplicateError(f"device '{profile.name}' is built in; choose another name")
        self._store(profile)
        return profile

    def _store(self, p: DeviceProfile) -> int:
        taken = f"device '{p.name}' already exists; remove it first or choose another name"
        with self.db.session() as s:
            if s.scalar(select(DeviceRow.id).where(DeviceRow.name == p.name)) is not None:
                raise DuplicateError(taken)
            owner_id = None
            if p.owner is not None:
                owner_id = s.scalar(select(UserRow.id).where(UserRow.name == p.owner))
                if owner_id is None:
                    raise NotFoundError(f"device '{p.name}': no user '{p.owner}' to own it")
            row = DeviceRow(name=p.name, kind=p.kind, target=p.target, runtime=p.runtime, location=p.location,
                            tracker=p.tracker, rpc_key=p.rpc_key, fingerprint=p.fingerprint,
                            protocol=p.protocol.to_dict(), owner_id=owner_id)
            s.add(row)
            try:
                s.flush()
            except IntegrityError as e:  # another process registered the same name since the check above
                raise DuplicateError(taken) from e
            return row.id

    def _row(self, s: Session, name: str, visible_to: str | None = None) -> DeviceRow:
        row = s.scalar(select(DeviceRow).where(DeviceRow.name == name))
        if row is None or not _visible(row, visible_to):  # another's private device does not exist for you
            known = sorted({*builtin_devices(), *(r.name for r in s.scalars(select(DeviceRow))
                                                  if _visible(r, visible_to))})
            raise NotFoundError(f"unknown device '{name}' (known: {', '.join(known)})")
        return row

    def get(self, name: str, *, visible_to: str | None = None) -> DeviceProfile:
        """A built-in or registered device; NotFoundError (a LookupError) lists the known names. With
        `visible_to`, a user's view: the shared devices and their own."""
        builtin = builtin_devices()
        if name in builtin:
            return builtin[name]
        with self.db.session() as s:
            return _probed(_profile(self._row(s, name, visible_to)))

    def list(self, *, visible_to: str | None = None) -> list[DeviceProfile]:
        """The built-ins, then the registered devices by name (with `visible_to`: shared ones and theirs)."""
        builtin = builtin_devices()
        with self.db.session() as s:
            rows = [_probed(_profile(r)) for r in s.scalars(select(DeviceRow).order_by(DeviceRow.name))
                    if _visible(r, visible_to)]
        return [*builtin.values(), *(d for d in rows if d.name not in builtin)]

    def owned(self, user: str) -> int:
        """How many private devices `user` has."""
        with self.db.session() as s:
            return s.scalar(select(func.count()).select_from(DeviceRow).join(UserRow, DeviceRow.owner_id == UserRow.id)
                            .where(UserRow.name == user)) or 0

    def remove(self, name: str, *, visible_to: str | None = None) -> None:
        if name in builtin_devices():
            raise DuplicateError(f"device '{name}' is built in and cannot be removed")
        with self.db.session() as s:
            # its measurements and predictors go with it (ON DELETE CASCADE)
            s.delete(self._row(s, name, visible_to))

    def row_id(self, profile: DeviceProfile) -> int:
        """The device's row id; a built-in gets its row on first use, and its fingerprint and protocol kept
        current (a new release may measure the built-ins differently; records keep their own protocol)."""
        protocol = profile.protocol.to_dict()
        with self.db.session() as s:
            row = s.scalar(select(DeviceRow).where(DeviceRow.name == profile.name))
            if row is not None:
                if profile.name in builtin_devices() and (row.fingerprint, row.protocol) != (profile.fingerprint,
                                                                                             protocol):
                    row.fingerprint, row.protocol = profile.fingerprint, protocol
                return row.id
        return self._store(profile)

    def revision(self, profile: DeviceProfile, *, create: bool = False) -> int | None:
        """The number of the revision `profile.fingerprint` belongs to; None when no stored revision has its
        fingerprint (with `create`, a new revision begins, and the device row keeps the newest fingerprint)."""
        rid = self._revision_id(profile, create=create)
        if rid is None:
            return None
        with self.db.session() as s:
            return s.get_one(RevisionRow, rid).number

    def _revision_id(self, profile: DeviceProfile, *, create: bool) -> int | None:
        key = fingerprint_key(profile.fingerprint, profile.runtime)
        rid = self._revision_ids.get((profile.name, key))
        if rid is None:
            rid = self._find_or_begin(profile, key, create=create)
        if rid is not None:
            self._revision_ids[profile.name, key] = rid
        if create and rid is not None and self._measured_on.get(profile.name) != key:
            # the device row keeps the fingerprint of what was measured last (a board swapped back included):
            # a remote device is not probed to predict, so its row says which revision predictions are for
            with self.db.session() as s:
                row = s.scalars(select(DeviceRow).where(DeviceRow.name == profile.name)).one()
                if row.fingerprint != profile.fingerprint:
                    row.fingerprint = profile.fingerprint
            self._measured_on[profile.name] = key
        return rid

    def _find_or_begin(self, profile: DeviceProfile, key: str, *, create: bool) -> int | None:
        device_id = self.row_id(profile) if create else None
        with self.db.session() as s:
            q = select(RevisionRow.id).join(DeviceRow).where(DeviceRow.name == profile.name,
                                                             RevisionRow.fingerprint_key == key)
            rid = s.scalar(q)
            if rid is None and device_id is not None:
                last = s.scalar(select(RevisionRow).where(RevisionRow.device_id == device_id)
                                .order_by(RevisionRow.number.desc()).limit(1))
                row = RevisionRow(device_id=device_id, number=(last.number if last else 0) + 1,
                                  fingerprint=profile.fingerprint, fingerprint_key=key)
                s.add(row)
                try:
                    s.flush()
                except IntegrityError:  # another process began it (or the next number) since the read above
                    s.rollback()
                    return self._find_or_begin(profile, key, create=create)
                rid = row.id
                changed = fingerprint_diff(last.fingerprint, profile.fingerprint, profile.runtime) if last else ""
                log.info("device %s: revision %d begins%s", profile.name, row.number,
                         f" ({changed})" if changed else "")
        return rid

    def revisions(self, name: str) -> builtins.list[Revision]:
        """The device's revisions, oldest first, with their measurement and predictor counts."""
        profile = self.get(name)
        current = fingerprint_key(profile.fingerprint, profile.runtime)
        with self.db.session() as s:
            rows = s.scalars(select(RevisionRow).join(DeviceRow).where(DeviceRow.name == name)
                             .order_by(RevisionRow.number)).all()
            counts = {}
            for table in (MeasurementRow, PredictorRow):
                counts[table] = dict(s.execute(select(table.revision_id, func.count())
                                               .where(table.revision_id.in_([r.id for r in rows]))
                                               .group_by(table.revision_id)).all())
            return [Revision(name, r.number, dict(r.fingerprint), r.created_at, counts[MeasurementRow].get(r.id, 0),
                             counts[PredictorRow].get(r.id, 0), r.fingerprint_key == current) for r in rows]

    def provenance(self, profile: DeviceProfile, space: SearchSpace, model_config: ModelConfig,
                   tuning_dir: str | None, *, revision: int | None = None) -> Provenance:
        """The provenance a latency of `space`'s subnets on `profile` has now: the device's current revision
        (or `revision`, which must exist), the model, the device's protocol for the space, the tuning database.

        Raises:
            NotFoundError: the device as probed now matches no stored revision (nothing was measured on it),
                or `revision` does not exist; the message lists the revisions there are.
        """
        if revision is None:
            revision = self.revision(profile)
            if revision is None:
                raise NotFoundError(self._new_revision_message(profile))
        elif revision not in {r.number for r in self.revisions(profile.name)}:
            raise NotFoundError(f"device '{profile.name}' has no revision {revision} "
                                f"({self._revisions_line(profile.name)})")
        return Provenance(profile.name, revision, space.name, latency_model_key(model_config),
                          protocol_for(profile, space).key(), tuning_key(tuning_dir, profile.target))

    def _revisions_line(self, name: str) -> str:
        revs = self.revisions(name)
        if not revs:
            return "it has no revisions: nothing was measured on it"
        return "revisions: " + "; ".join(f"{r.number}: {_describe_fingerprint(r.fingerprint)}" for r in revs)

    def _new_revision_message(self, profile: DeviceProfile) -> str:
        revs = self.revisions(profile.name)
        if not revs:
            return (f"nothing was measured on device '{profile.name}' yet (hwnas latency collect --device "
                    f"{profile.name})")
        changed = fingerprint_diff(revs[-1].fingerprint, profile.fingerprint, profile.runtime)
        return (f"device '{profile.name}' as probed now is a new revision ({changed or 'new fingerprint'}): "
                f"nothing was measured on it, and measurements and predictors of other revisions are not used "
                f"({self._revisions_line(profile.name)}); measure and train on it (hwnas latency collect, "
                f"hwnas latency train)")

    def measurement_counts(self, name: str) -> dict[str, Any]:
        with self.db.session() as s:
            q = (select(MeasurementRow.status, func.count(), func.avg(MeasurementRow.latency_cv))
                 .join(DeviceRow).where(DeviceRow.name == name).group_by(MeasurementRow.status))
            rows = s.execute(q).all()
        return {status: {"count": n, "mean_cv": cv} for status, n, cv in rows}

def _probed(profile: DeviceProfile) -> DeviceProfile:
    """A registered local device is this machine: its fingerprint is probed here, now (a remote one keeps the
    fingerprint its board last reported)."""
    return dataclasses.replace(profile, fingerprint=probe_fingerprint(profile)) if profile.location == "local" \
        else profile


def _describe_fingerprint(fp: dict[str, Any]) -> str:
    what = [str(fp[f]) for f in ("cpu_model", "cpu_id", "gpu_model", "llvm_cpu") if fp.get(f)]
    what += [f"{fp['cores']} cores"] if fp.get("cores") else []
    what += [f"TVM {fp['tvm']}"] if fp.get("tvm") else []
    return ", ".join(what) or "recorded before revisions"


class SQLMeasurementStore(MeasurementStore):
    """Measurement records in the results database; one transaction per record."""

    def __init__(self, db: Database):
        self.db, self.devices = db, DeviceRegistry(db)
        # a collection adds thousands of records for one device: its profile and row are looked up once
        self._profiles: dict[str, tuple[DeviceProfile, int]] = {}

    def revision(self, device: DeviceProfile, *, create: bool = False) -> int | None:
        return self.devices.revision(device, create=create)

    def add(self, record: MeasurementRecord) -> None:
        if record.device not in self._profiles:
            profile = self.devices.get(record.device)
            self._profiles[record.device] = profile, self.devices.row_id(profile)
        profile, device_id = self._profiles[record.device]
        if record.fingerprint:
            profile = dataclasses.replace(profile, fingerprint=record.fingerprint)
        revision_id = self.devices._revision_id(profile, create=True)
        r = record.result
        with self.db.session() as s:
            s.add(MeasurementRow(
                device_id=device_id, revision_id=revision_id, model_key=record.model_key, space=record.space,
                subnet_key=record.subnet.key(),
                subnet=record.subnet.to_dict(), protocol=record.protocol.to_dict(), protocol_key=record.protocol.key(),
                tuning_key=record.tuning_key, status="ok" if r.ok else "error", error=r.error,
                encoder_ms=list(r.encoder_ms) if r.encoder_ms else None,
                decoder_step_ms=list(r.decoder_step_ms) if r.decoder_step_ms else None,
                latency_ms=record.latency_ms() if r.ok else None,
                latency_cv=record.latency_cv() if r.ok else None, reference_ms=record.reference_ms,
                board=r.board))

    def records(self, *, device: str, space: str, revision: int | None = None, model_key: str | None = None,
                protocol_key: str | None = None, tuning_key: str | None = None) -> list[MeasurementRecord]:
        q = _measurement_query(select(MeasurementRow, RevisionRow.number), device=device, space=space,
                               revision=revision, model_key=model_key, protocol_key=protocol_key,
                               tuning_key=tuning_key).order_by(MeasurementRow.id)
        with self.db.session() as s:
            rows = s.execute(q).all()
        return [MeasurementRecord(device, space, SubnetConfig.from_dict(m.subnet), MeasureConfig.from_dict(m.protocol),
                                  m.tuning_key, RunResult(tuple(m.encoder_ms) if m.encoder_ms else None,
                                                          tuple(m.decoder_step_ms) if m.decoder_step_ms else None,
                                                          m.error, m.board), m.reference_ms, model_key=m.model_key,
                                  revision=number)
                for m, number in rows]

    def latencies(self, provenance: Provenance) -> dict[str, tuple[int, float | None, str | None]]:
        """The measurements of one provenance by subnet key: (measurement id, latency ms, error), without
        reading the raw runs."""
        p = provenance
        q = _measurement_query(select(MeasurementRow.subnet_key, MeasurementRow.id, MeasurementRow.latency_ms,
                                      MeasurementRow.error), device=p.device, space=p.space, revision=p.revision,
                               model_key=p.model_key, protocol_key=p.protocol_key, tuning_key=p.tuning_key)
        with self.db.session() as s:
            return {k: (i, lat, err) for k, i, lat, err in s.execute(q).all()}


    def references(self, provenance: Provenance) -> dict[str, float | None]:
        """The reference subnet's latency in the session of each measurement of one provenance, by subnet key
        (None: no reference protocol, or its reference failed)."""
        p = provenance
        q = _measurement_query(select(MeasurementRow.subnet_key, MeasurementRow.reference_ms), device=p.device,
                               space=p.space, revision=p.revision, model_key=p.model_key,
                               protocol_key=p.protocol_key, tuning_key=p.tuning_key)
        with self.db.session() as s:
            return {k: ref for k, ref in s.execute(q).all()}


def _measurement_query(q: _Select, *, device: str, space: str, revision: int | None, model_key: str | None,
                       protocol_key: str | None, tuning_key: str | None) -> _Select:
    """`q` over a device's measurements of a space, narrowed by whichever keys are given."""
    q = (q.join(DeviceRow, MeasurementRow.device_id == DeviceRow.id)
         .join(RevisionRow, MeasurementRow.revision_id == RevisionRow.id)
         .where(DeviceRow.name == device, MeasurementRow.space == space))
    for column, value in ((RevisionRow.number, revision), (MeasurementRow.model_key, model_key),
                          (MeasurementRow.protocol_key, protocol_key), (MeasurementRow.tuning_key, tuning_key)):
        if value is not None:
            q = q.where(column == value)
    return q


def training_data_key(records: list[MeasurementRecord]) -> str:
    """Identity of a predictor's training data: the sorted subnet keys and the protocol/tuning they share."""
    ids = sorted(f"{r.subnet.key()}:{r.protocol.key()}:{r.tuning_key}" for r in records)
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:16]


def save_predictor(db: Database, *, device: DeviceProfile, provenance: Provenance, predictor: LatencyPredictor,
                   metrics: dict[str, Any], data_key: str) -> int:
    """Store a new version of (device, predictor kind), trained on measurements of `provenance`; returns the
    version number."""
    if predictor.space.name != provenance.space or device.name != provenance.device:
        raise MeasurementError(f"a {predictor.kind} predictor of {device.name} on space '{predictor.space.name}' "
                               f"cannot be stored as one of {provenance.describe()}")
    registry = DeviceRegistry(db)
    device_id = registry.row_id(device)
    with db.session() as s:
        rev = s.scalar(select(RevisionRow).where(RevisionRow.device_id == device_id,
                                                 RevisionRow.number == provenance.revision))
        if rev is None:
            raise NotFoundError(f"device '{device.name}' has no revision {provenance.revision}")
        latest = s.scalar(select(func.max(PredictorRow.version))
                          .where(PredictorRow.device_id == device_id, PredictorRow.kind == predictor.kind))
        version = (latest or 0) + 1
        s.add(PredictorRow(device_id=device_id, revision_id=rev.id, kind=predictor.kind, version=version,
                           space=provenance.space, model_key=provenance.model_key,
                           protocol_key=provenance.protocol_key, tuning_key=provenance.tuning_key,
                           blob=predictor.to_bytes(), metrics=metrics, fingerprint=dict(rev.fingerprint),
                           training_data_key=data_key))
    return version


def _info(row: PredictorRow, device: str, revision: int) -> dict[str, Any]:
    return {"device": device, "kind": row.kind, "version": row.version,
            "revision": revision, "space": row.space, "model_key": row.model_key, "protocol_key": row.protocol_key,
            "tuning_key": row.tuning_key, "metrics": row.metrics, "fingerprint": row.fingerprint,
            "training_data_key": row.training_data_key, "created_at": row.created_at}


def _row_provenance(row: PredictorRow, device: str, revision: int) -> Provenance:
    return Provenance(device, revision, row.space, row.model_key, row.protocol_key, row.tuning_key)


def _predictor_rows(device: str) -> Select[PredictorRow, int]:
    """The device's predictors, each with its revision number."""
    return (select(PredictorRow, RevisionRow.number).join(DeviceRow, PredictorRow.device_id == DeviceRow.id)
            .join(RevisionRow, PredictorRow.revision_id == RevisionRow.id).where(DeviceRow.name == device))


def load_predictor(db: Database, provenance: Provenance, *, kind: str | None = None,
                   version: int | None = None) -> tuple[LatencyPredictor, dict[str, Any]]:
    """The predictor for `provenance`: the newest of `kind` (any kind when None), or exactly (kind, version).

    Never a near one: a pinned version trained on anything else, or no predictor of this provenance, is a
    NotFoundError naming what differs or listing the predictors the device has.
    """
    base = _predictor_rows(provenance.device)
    if version is not None and kind is None:
        raise NotFoundError(f"predictor version {version} of {provenance.device} asked without its kind "
                            f"(versions are numbered per kind: give the kind too)")
    with db.session() as s:
        if version is not None:
            found = s.execute(base.where(PredictorRow.kind == kind, PredictorRow.version == version)).first()
            if found is None:
                raise NotFoundError(f"device '{provenance.device}' has no {kind} predictor version {version}")
            row, number = found
            stored = _row_provenance(row, provenance.device, number)
            if stored != provenance:
                raise NotFoundError(f"predictor {kind} v{version} of {provenance.device} was trained for "
                                    f"{stored.describe()}; it cannot predict for {provenance.describe()}: "
                                    f"{provenance.differences(stored)}")
        else:
            q = base.where(RevisionRow.number == provenance.revision, PredictorRow.space == provenance.space,
                           PredictorRow.model_key == provenance.model_key,
                           PredictorRow.protocol_key == provenance.protocol_key,
                           PredictorRow.tuning_key == provenance.tuning_key)
            if kind is not None:
                q = q.where(PredictorRow.kind == kind)
            found = s.execute(q.order_by(PredictorRow.created_at.desc(), PredictorRow.id.desc()).limit(1)).first()
            if found is None:
                others = [_row_provenance(r, provenance.device, n) for r, n in s.execute(base).all()]
                what = f"no {kind + ' ' if kind else ''}latency predictor for {provenance.describe()}"
                listed = "; ".join(sorted({o.describe() for o in others})[:5]) or "none"
                raise NotFoundError(f"{what}; stored: {listed} (train one: hwnas latency train --device "
                                    f"{provenance.device} --space {provenance.space})")
            row, number = found
        return LatencyPredictor.from_bytes(row.blob), _info(row, provenance.device, number)


def list_predictors(db: Database, device: str) -> list[dict[str, Any]]:
    """Every predictor of the device, with its provenance and held-out metrics."""
    with db.session() as s:
        rows = s.execute(_predictor_rows(device).order_by(PredictorRow.kind, PredictorRow.version)).all()
        return [{k: v for k, v in _info(r, device, n).items() if k not in ("fingerprint", "device")}
                for r, n in rows]
