"""Devices, measurements and predictors in the results database (hwnas.db)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hwnas.db import Database
from hwnas.db import Device as DeviceRow
from hwnas.db import Measurement as MeasurementRow
from hwnas.db import Predictor as PredictorRow
from hwnas.exceptions import DuplicateError, NotFoundError
from hwnas.latency._collect import MeasurementRecord, MeasurementStore
from hwnas.latency._devices import DeviceProfile, builtin_devices
from hwnas.latency._predictor import LatencyPredictor
from hwnas.latency._protocol import MeasureConfig, RunResult
from hwnas.search_spaces import SubnetConfig


def _profile(row: DeviceRow) -> DeviceProfile:
    return DeviceProfile(name=row.name, kind=row.kind, target=dict(row.target), runtime=row.runtime,
                         location=row.location, tracker=row.tracker, rpc_key=row.rpc_key,
                         fingerprint=dict(row.fingerprint), protocol=MeasureConfig.from_dict(row.protocol))


class DeviceRegistry:
    """Device profiles: the built-in ones plus those in the `devices` table (built-ins get a row when first used).

    Callers get `DeviceProfile`s, never live rows. Removing a device removes its measurements and predictors.
    """

    def __init__(self, db: Database):
        self.db = db

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
            row = DeviceRow(name=p.name, kind=p.kind, target=p.target, runtime=p.runtime, location=p.location,
                            tracker=p.tracker, rpc_key=p.rpc_key, fingerprint=p.fingerprint,
                            protocol=p.protocol.to_dict())
            s.add(row)
            try:
                s.flush()
            except IntegrityError as e:  # another process registered the same name since the check above
                raise DuplicateError(taken) from e
            return row.id

    def _row(self, s: Session, name: str) -> DeviceRow:
        row = s.scalar(select(DeviceRow).where(DeviceRow.name == name))
        if row is None:
            known = sorted({*builtin_devices(), *s.scalars(select(DeviceRow.name))})
            raise NotFoundError(f"unknown device '{name}' (known: {', '.join(known)})")
        return row

    def get(self, name: str) -> DeviceProfile:
        """A built-in or registered device; NotFoundError (a LookupError) lists the known names."""
        builtin = builtin_devices()
        if name in builtin:
            return builtin[name]
        with self.db.session() as s:
            return _profile(self._row(s, name))

    def list(self) -> list[DeviceProfile]:
        """The built-ins, then the registered devices by name."""
        builtin = builtin_devices()
        with self.db.session() as s:
            rows = [_profile(r) for r in s.scalars(select(DeviceRow).order_by(DeviceRow.name))]
        return [*builtin.values(), *(d for d in rows if d.name not in builtin)]

    def remove(self, name: str) -> None:
        if name in builtin_devices():
            raise DuplicateError(f"device '{name}' is built in and cannot be removed")
        with self.db.session() as s:
            s.delete(self._row(s, name))  # its measurements and predictors go with it (ON DELETE CASCADE)

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

    def measurement_counts(self, name: str) -> dict[str, Any]:
        with self.db.session() as s:
            q = (select(MeasurementRow.status, func.count(), func.avg(MeasurementRow.latency_cv))
                 .join(DeviceRow).where(DeviceRow.name == name).group_by(MeasurementRow.status))
            rows = s.execute(q).all()
        return {status: {"count": n, "mean_cv": cv} for status, n, cv in rows}

class SQLMeasurementStore(MeasurementStore):
    """Measurement records in the results database; one transaction per record."""

    def __init__(self, db: Database):
        self.db, self.devices = db, DeviceRegistry(db)
        self._device_ids: dict[str, int] = {}  # a collection adds thousands of records for one device

    def add(self, record: MeasurementRecord) -> None:
        if record.device not in self._device_ids:
            self._device_ids[record.device] = self.devices.row_id(self.devices.get(record.device))
        device_id = self._device_ids[record.device]
        r = record.result
        with self.db.session() as s:
            s.add(MeasurementRow(
                device_id=device_id, space=record.space, subnet_key=record.subnet.key(),
                subnet=record.subnet.to_dict(), protocol=record.protocol.to_dict(), protocol_key=record.protocol.key(),
                tuning_key=record.tuning_key, status="ok" if r.ok else "error", error=r.error,
                encoder_ms=list(r.encoder_ms) if r.encoder_ms else None,
                decoder_step_ms=list(r.decoder_step_ms) if r.decoder_step_ms else None,
                latency_ms=record.latency_ms() if r.ok else None,
                latency_cv=record.latency_cv() if r.ok else None, reference_ms=record.reference_ms))

    def records(self, *, device: str, space: str, protocol_key: str | None = None,
                tuning_key: str | None = None) -> list[MeasurementRecord]:
        q = (select(MeasurementRow).join(DeviceRow)
             .where(DeviceRow.name == device, MeasurementRow.space == space).order_by(MeasurementRow.id))
        if protocol_key is not None:
            q = q.where(MeasurementRow.protocol_key == protocol_key)
        if tuning_key is not None:
            q = q.where(MeasurementRow.tuning_key == tuning_key)
        with self.db.session() as s:
            rows = list(s.scalars(q))
        return [MeasurementRecord(device, space, SubnetConfig.from_dict(m.subnet), MeasureConfig.from_dict(m.protocol),
                                  m.tuning_key, RunResult(tuple(m.encoder_ms) if m.encoder_ms else None,
                                                          tuple(m.decoder_step_ms) if m.decoder_step_ms else None,
                                                          m.error), m.reference_ms)
                for m in rows]


def training_data_key(records: list[MeasurementRecord]) -> str:
    """Identity of a predictor's training data: the sorted subnet keys and the protocol/tuning they share."""
    ids = sorted(f"{r.subnet.key()}:{r.protocol.key()}:{r.tuning_key}" for r in records)
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:16]


def save_predictor(db: Database, *, device: DeviceProfile, predictor: LatencyPredictor, metrics: dict[str, Any],
                   data_key: str) -> int:
    """Store a new version of (device, predictor kind); returns the version number."""
    registry = DeviceRegistry(db)
    device_id = registry.row_id(device)
    with db.session() as s:
        latest = s.scalar(select(func.max(PredictorRow.version))
                          .where(PredictorRow.device_id == device_id, PredictorRow.kind == predictor.kind))
        version = (latest or 0) + 1
        s.add(PredictorRow(device_id=device_id, kind=predictor.kind, version=version, space=predictor.space.name,
                           blob=predictor.to_bytes(), metrics=metrics, fingerprint=device.fingerprint,
                           training_data_key=data_key))
    return version


def load_predictor(db: Database, *, device: str, kind: str | None = None,
                   version: int | None = None) -> tuple[LatencyPredictor, dict[str, Any]]:
    """A stored predictor by (device, kind, version); the newest when kind/version are left out."""
    q = select(PredictorRow).join(DeviceRow).where(DeviceRow.name == device)
    if kind is not None:
        q = q.where(PredictorRow.kind == kind)
    if version is not None:
        q = q.where(PredictorRow.version == version)
    with db.session() as s:
        row = s.scalar(q.order_by(PredictorRow.created_at.desc(), PredictorRow.id.desc()).limit(1))
        if row is None:
            what = f"device '{device}'" + (f", kind '{kind}'" if kind else "")
            what += f", version {version}" if version else ""
            raise NotFoundError(f"no latency predictor for {what} (train one: hwnas latency train --device {device})")
        info = {"kind": row.kind, "version": row.version, "space": row.space, "metrics": row.metrics,
                "fingerprint": row.fingerprint, "training_data_key": row.training_data_key}
        return LatencyPredictor.from_bytes(row.blob), info


def list_predictors(db: Database, device: str) -> list[dict[str, Any]]:
    with db.session() as s:
        rows = s.scalars(select(PredictorRow).join(DeviceRow).where(DeviceRow.name == device)
                         .order_by(PredictorRow.kind, PredictorRow.version))
        return [{"kind": r.kind, "version": r.version, "space": r.space, "metrics": r.metrics} for r in rows]
