"""The results database on both backends: migrations, transactions, error translation."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from hwnas.db import Base, Database, Device, Measurement, resolve_url
from hwnas.exceptions import StorageError


def test_migrations_create_the_models_tables_and_are_idempotent(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    tables = set(inspect(db.engine).get_table_names())
    assert {"devices", "measurements", "predictors", "supernets", "alembic_version"} <= tables
    with db.engine.connect() as conn:  # the migration and the models agree: nothing left to autogenerate
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    Database(db.url)  # opening again re-runs `upgrade head`: a no-op


def _device(name: str = "pi") -> Device:
    return Device(name=name, kind="iot", target={"kind": "llvm"}, runtime="tvm", location="local",
                  fingerprint={}, protocol={})


def test_a_failed_transaction_writes_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as s:
        s.add(_device("ghost"))
        s.flush()
        raise RuntimeError("boom")
    with db.session() as s:
        assert s.scalar(select(Device).where(Device.name == "ghost")) is None


def test_constraint_violation_is_a_storage_error_and_the_session_recovers(db: Database) -> None:
    with db.session() as s:
        s.add(_device("dup"))
    with pytest.raises(StorageError, match="database"), db.session() as s:
        s.add(_device("dup"))
    with db.session() as s:  # still usable
        dev = s.scalar(select(Device).where(Device.name == "dup"))
        assert dev is not None
        row = dict(device_id=dev.id, space="s", subnet_key="k", subnet={}, protocol={}, protocol_key="p",
                   tuning_key="", status="ok")
        s.add(Measurement(**row))
    with pytest.raises(StorageError), db.session() as s:
        s.add(Measurement(**row))  # same identity: measured once


def test_unreachable_database_is_one_clear_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        Database("postgresql://someone:secret@127.0.0.1:1/nope")
    assert time.monotonic() - t0 < 15
    assert "secret" not in str(info.value) and "***" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(StorageError, match="bad database URL"):
        Database("not a url")


def test_url_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path))
    monkeypatch.delenv("HWNAS_DB_URL", raising=False)
    assert resolve_url() == f"sqlite:///{tmp_path / 'hwnas.db'}"
    monkeypatch.setenv("HWNAS_DB_URL", "sqlite:///elsewhere.db")
    assert resolve_url() == "sqlite:///elsewhere.db"
    assert resolve_url("postgresql://x@h/db") == "postgresql://x@h/db"
    assert os.environ["HWNAS_DB_URL"] == "sqlite:///elsewhere.db"
