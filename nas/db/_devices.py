"""Registered devices: add, get, list, remove. Callers get plain frozen records, never live ORM rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hwnas.db._models import Device
from hwnas.db._session import Database
from hwnas.exceptions import DuplicateError, MeasurementError, NotFoundError

__all__ = ["DEVICE_KINDS", "DEVICE_LOCATIONS", "DEVICE_RUNTIMES", "DeviceRecord", "add_device", "get_device",
           "list_devices", "remove_device"]

DEVICE_KINDS = ("cpu", "gpu", "iot")
DEVICE_RUNTIMES = ("tvm", "torch")
DEVICE_LOCATIONS = ("local", "rpc")
_NAME_MAX_CHARS = 128  # the column's width: PostgreSQL enforces it, SQLite would not, so check it here


@dataclasses.dataclass(frozen=True)
class DeviceRecord:
    """A registered device, detached from any session (safe to keep, pass around and compare)."""

    id: int
    name: str
    kind: str
    target: dict[str, Any]
    runtime: str
    location: str
    tracker: str | None
    rpc_key: str | None
    fingerprint: dict[str, Any]
    protocol: dict[str, Any]
    created_at: dt.datetime


def _record(row: Device) -> DeviceRecord:
    return DeviceRecord(id=row.id, name=row.name, kind=row.kind, target=dict(row.target), runtime=row.runtime,
                        location=row.location, tracker=row.tracker, rpc_key=row.rpc_key,
                        fingerprint=dict(row.fingerprint), protocol=dict(row.protocol), created_at=row.created_at)


def _check_choice(name: str, field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MeasurementError(f"device '{name}': {field} {value!r} is not one of {', '.join(allowed)}")


def _check_json_object(name: str, field: str, value: object) -> None:
    if not isinstance(value, dict):
        raise MeasurementError(f"device '{name}': {field} must be a JSON object (dict), got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise MeasurementError(f"device '{name}': {field} is not storable as JSON: {e}") from e


def _validate(*, name: str, kind: str, target: dict[str, Any], runtime: str, location: str, tracker: str | None,
              rpc_key: str | None, fingerprint: dict[str, Any], protocol: dict[str, Any]) -> None:
    if not isinstance(name, str) or not name.strip() or name != name.strip() or len(name) > _NAME_MAX_CHARS:
        raise MeasurementError(f"device name {name!r} must be 1 to {_NAME_MAX_CHARS} characters, "
                               f"without leading or trailing spaces")
    _check_choice(name, "kind", kind, DEVICE_KINDS)
    _check_choice(name, "runtime", runtime, DEVICE_RUNTIMES)
    _check_choice(name, "location", location, DEVICE_LOCATIONS)
    _check_json_object(name, "target", target)
    if not isinstance(target.get("kind"), str):
        raise MeasurementError(f"device '{name}': target needs a 'kind' (a TVM target dict such as "
                               f'{{"kind": "llvm", "mcpu": "znver4"}}), got {json.dumps(target)}')
    _check_json_object(name, "fingerprint", fingerprint)
    _check_json_object(name, "protocol", protocol)
    if location == "rpc":
        host, _, port = (tracker or "").rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise MeasurementError(f"device '{name}': tracker {tracker!r} is not 'host:port' "
                                   f"(location 'rpc' needs the TVM RPC tracker's address)")
        if not rpc_key:
            raise MeasurementError(f"device '{name}': rpc_key is required for location 'rpc' "
                                   f"(the key the board registers under at the tracker)")
    elif tracker is not None or rpc_key is not None:
        # Silently ignoring them would hide a forgotten location='rpc'.
        raise MeasurementError(f"device '{name}': tracker and rpc_key apply to location 'rpc' only, "
                               f"not {location!r}")


def add_device(db: Database, *, name: str, kind: str, target: dict[str, Any], runtime: str,
               location: str = "local", tracker: str | None = None, rpc_key: str | None = None,
               fingerprint: dict[str, Any], protocol: dict[str, Any]) -> DeviceRecord:
    """Register a device; a bad field is a MeasurementError, a taken name a DuplicateError."""
    _validate(name=name, kind=kind, target=target, runtime=runtime, location=location, tracker=tracker,
              rpc_key=rpc_key, fingerprint=fingerprint, protocol=protocol)
    taken = f"device '{name}' already exists; remove it first or choose another name"
    with db.session() as s:
        if s.scalar(select(Device.id).where(Device.name == name)) is not None:
            raise DuplicateError(taken)
        row = Device(name=name, kind=kind, target=target, runtime=runtime, location=location, tracker=tracker,
                     rpc_key=rpc_key, fingerprint=fingerprint, protocol=protocol)
        s.add(row)
        try:
            s.flush()
        except IntegrityError as e:  # another process registered the same name since the check above
            raise DuplicateError(taken) from e
        record = _record(row)
    return record


def _row(s: Session, name: str) -> Device:
    row = s.scalar(select(Device).where(Device.name == name))
    if row is None:
        known = list(s.scalars(select(Device.name).order_by(Device.name)))
        raise NotFoundError(f"unknown device '{name}' "
                            f"({'known: ' + ', '.join(known) if known else 'no devices are registered'})")
    return row


def get_device(db: Database, name: str) -> DeviceRecord:
    """The device registered as `name`; NotFoundError (a LookupError) lists the known names."""
    with db.session() as s:
        return _record(_row(s, name))


def list_devices(db: Database) -> list[DeviceRecord]:
    """Every registered device, by name."""
    with db.session() as s:
        return [_record(row) for row in s.scalars(select(Device).order_by(Device.name))]


def remove_device(db: Database, name: str) -> None:
    """Unregister `name`; its measurements and predictors are deleted with it (ON DELETE CASCADE)."""
    with db.session() as s:
        s.delete(_row(s, name))
