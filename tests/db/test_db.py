"""The results database on both backends (the `db` fixture: SQLite in tmp_path, and PostgreSQL on
127.0.0.1:5432 in a database made for this test session): migrations, transactions, the devices table
through its registry (`hwnas.latency.DeviceRegistry`) and error translation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select, text

from hwnas.db import Base, Database, Device, DeviceRevision, Measurement, Predictor, resolve_url, upgrade
from hwnas.exceptions import DuplicateError, HwnasError, MeasurementError, NotFoundError, StorageError
from hwnas.latency import DeviceProfile, DeviceRegistry, MeasureConfig

MODEL_TABLES = {"devices", "measurements", "predictors", "supernets"}
TARGET = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}
PROTOCOL = {"batch": 1, "source_tokens": 30, "warmup": 5, "runs": 20}
BUILT_IN = ["local-cpu", "local-cpu-torch", "local-cpu-ort"]


def _add(db: Database, name: str = "pi", **overrides: object) -> DeviceProfile:
    spec: dict[str, object] = dict(name=name, kind="cpu", target=TARGET, runtime="tvm",
                                   fingerprint={"cpu_model": "AMD EPYC", "cores": 2}, protocol=MeasureConfig())
    return DeviceRegistry(db).add(DeviceProfile(**{**spec, **overrides}))  # type: ignore[arg-type]


def _id(db: Database, name: str) -> int:
    with db.session() as s:
        return s.scalars(select(Device.id).where(Device.name == name)).one()


def _registered(db: Database) -> list[str]:
    return [d.name for d in DeviceRegistry(db).list() if d.name not in BUILT_IN]


def _revision(db: Database, device_id: int) -> int:
    """A revision row of the device (what the registry makes when it first measures there)."""
    with db.session() as s:
        row = DeviceRevision(device_id=device_id, number=1, fingerprint={"cores": 2}, fingerprint_key="k")
        s.add(row)
        s.flush()
        return row.id


def _measurement(device_id: int, revision_id: int, subnet_key: str = "0123456789abcdef") -> Measurement:
    return Measurement(device_id=device_id, revision_id=revision_id, space="quickstart", subnet_key=subnet_key,
                       subnet={"encoder_layer_num": 3},
                       protocol=PROTOCOL, protocol_key="p1", tuning_key="", status="ok",
                       encoder_ms=[1.0, 1.1], decoder_step_ms=[0.2, 0.21], latency_ms=7.3, latency_cv=0.02)


# -- migrations ------------------------------------------------------------------------------
def test_migrations_apply_from_empty_and_are_idempotent(db: Database) -> None:
    from alembic import command
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from hwnas.db import alembic_config

    cfg = alembic_config()
    with db.engine.begin() as conn:  # back to an empty schema...
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert not MODEL_TABLES & set(inspect(db.engine).get_table_names())
    upgrade(db.url)  # ...then up from it, by URL
    upgrade(db.url)  # a second time: a no-op
    Database(db.url).close()  # opening runs `upgrade head` too
    assert MODEL_TABLES <= set(inspect(db.engine).get_table_names())
    with db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    assert current == ScriptDirectory.from_config(cfg).get_current_head()


def test_rows_older_than_revisions_are_kept_apart(db: Database) -> None:
    """0005 gives every device a revision 1 marked 'legacy' and files older measurements and predictors under it:
    kept and listed, never matched by today's lookups (they hold no model key)."""
    from alembic import command

    from hwnas.db import alembic_config

    cfg = alembic_config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
        conn.execute(text("INSERT INTO devices (name, kind, target, runtime, location, fingerprint, protocol, "
                          "created_at) VALUES ('old', 'cpu', '{\"kind\": \"llvm\"}', 'tvm', 'local', "
                          "'{\"cores\": 2}', '{}', CURRENT_TIMESTAMP)"))
        dev = conn.scalar(text("SELECT id FROM devices WHERE name = 'old'"))
        conn.execute(text("INSERT INTO measurements (device_id, space, subnet_key, subnet, protocol, protocol_key, "
                          "tuning_key, status, created_at) VALUES (:d, 'quickstart', 'k', '{}', '{}', 'p', '', 'ok', "
                          "CURRENT_TIMESTAMP)"), {"d": dev})
        conn.execute(text("INSERT INTO predictors (device_id, kind, version, space, blob, metrics, fingerprint, "
                          "training_data_key, created_at) VALUES (:d, 'layerwise', 1, 'quickstart', :b, '{}', '{}', "
                          "'t', CURRENT_TIMESTAMP)"), {"d": dev, "b": b"x"})
    upgrade(db.url)
    with db.session() as s:
        (rev,) = s.scalars(select(DeviceRevision)).all()
        assert (rev.device_id, rev.number, rev.fingerprint_key, rev.fingerprint) == (dev, 1, "legacy", {"cores": 2})
        assert s.scalars(select(Measurement.revision_id)).all() == [rev.id]
        assert s.scalars(select(Predictor.model_key)).all() == [""]
    (listed,) = DeviceRegistry(db).revisions("old")
    assert (listed.number, listed.measurements, listed.predictors, listed.current) == (1, 1, 1, False)


def test_models_and_migration_agree(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.engine.connect() as conn:  # nothing left for autogenerate to write
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(context, Base.metadata) == []


def test_a_database_from_a_newer_hwnas_is_refused(db: Database) -> None:
    with db.engine.begin() as conn:
        head = conn.scalar(text("SELECT version_num FROM alembic_version"))
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    try:
        with pytest.raises(StorageError, match="newer hwnas"):
            Database(db.url)
    finally:
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})



def test_migrations_ship_with_the_package() -> None:
    """A non-editable install must carry the migration scripts: `upgrade` reads them at run time."""
    import tomllib

    root = Path(__file__).parents[2]
    setup = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert {"hwnas.db", "hwnas.db.migrations", "hwnas.db.migrations.versions"} <= set(setup["packages"])
    assert "script.py.mako" in setup["package-data"]["hwnas.db.migrations"]
    for package in ("migrations", "migrations/versions"):
        assert (root / "nas/db" / package / "__init__.py").is_file()


# -- transactions ----------------------------------------------------------------------------
def test_a_failed_transaction_writes_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as s:
        s.add(Device(name="ghost", kind="cpu", target=TARGET, runtime="tvm", location="local", fingerprint={},
                     protocol={}))
        s.flush()  # reached the database, inside the transaction
        raise RuntimeError("boom")
    assert _registered(db) == []


def test_unique_measurement_is_a_storage_error_and_the_session_recovers(db: Database) -> None:
    dev_id = _id(db, _add(db).name)
    rev_id = _revision(db, dev_id)
    with db.session() as s:
        s.add(_measurement(dev_id, rev_id))
    with pytest.raises(StorageError, match="database") as info, db.session() as s:
        s.add(_measurement(dev_id, rev_id, subnet_key="fedcba9876543210"))  # new, but rolled back with the duplicate
        s.flush()
        s.add(_measurement(dev_id, rev_id))  # same (device revision, space, model, subnet, protocol, tuning): once
    assert "\n" not in str(info.value)
    with db.session() as s:  # the database is still usable, and holds the first row only
        assert s.scalar(select(func.count()).select_from(Measurement)) == 1
        s.add(_measurement(dev_id, rev_id, subnet_key="fedcba9876543210"))
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Measurement)) == 2


def test_timestamps_are_utc_aware(db: Database) -> None:
    before = dt.datetime.now(dt.UTC)
    with db.session() as s:
        row = Device(name="pi", kind="cpu", target=TARGET, runtime="tvm", location="local", fingerprint={},
                     protocol={})
        s.add(row)
        s.flush()
        written = row.created_at
    assert written.tzinfo is not None and written.utcoffset() == dt.timedelta(0)
    with db.session() as s:  # read back: SQLite keeps no offset, PostgreSQL its session's zone
        stored = s.scalars(select(Device.created_at).where(Device.name == "pi")).one()
    assert stored.utcoffset() == dt.timedelta(0) and stored == written
    assert before - dt.timedelta(seconds=5) <= stored <= dt.datetime.now(dt.UTC)
    with pytest.raises(StorageError, match="naive datetime"), db.session() as s:
        s.add(Device(name="naive", kind="cpu", target=TARGET, runtime="tvm", location="local", fingerprint={},
                     protocol={}, created_at=dt.datetime(2025, 1, 1)))


# -- the devices table, through its registry --------------------------------------------------------
def test_device_lifecycle(db: Database) -> None:
    reg = DeviceRegistry(db)
    assert _registered(db) == []
    pi = _add(db, "rpi4", kind="iot", target={"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, location="rpc",
              tracker="10.0.0.1:9190", rpc_key="rpi4")
    cpu = _add(db, "epyc")
    assert isinstance(pi, DeviceProfile) and not isinstance(pi, Base)  # plain data, no session attached
    assert (pi.name, pi.kind, pi.location, pi.tracker, pi.rpc_key) == ("rpi4", "iot", "rpc", "10.0.0.1:9190", "rpi4")
    assert reg.get("rpi4") == pi
    assert reg.get("epyc").target == TARGET and reg.get("epyc").protocol == MeasureConfig()
    assert _registered(db) == ["epyc", "rpi4"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cpu.name = "other"  # type: ignore[misc]

    cpu_id = _id(db, "epyc")
    rev_id = _revision(db, cpu_id)
    with db.session() as s:  # removing a device removes its revisions, what was measured and trained on it
        s.add(_measurement(cpu_id, rev_id))
        s.add(Predictor(device_id=cpu_id, revision_id=rev_id, kind="hat-mlp", version=1, space="quickstart",
                        blob=b"\x00\x01", metrics={"rmse_ms": 0.1}, fingerprint={}, training_data_key="k"))
    reg.remove("epyc")
    assert _registered(db) == ["rpi4"]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Measurement)) == 0
        assert s.scalar(select(func.count()).select_from(Predictor)) == 0
        assert s.scalar(select(func.count()).select_from(DeviceRevision)) == 0


def test_duplicate_and_unknown_devices(db: Database) -> None:
    reg = DeviceRegistry(db)
    _add(db, "pi")
    _add(db, "jetson", kind="gpu", target={"kind": "cuda", "arch": "sm_87"})
    with pytest.raises(DuplicateError, match="device 'pi' already exists"):
        _add(db, "pi", kind="gpu")
    assert reg.get("pi").kind == "cpu"  # the first registration stands

    with pytest.raises(NotFoundError, match=r"unknown device 'nope' \(known: jetson, local-cpu, local-cpu-ort, "
                                            r"local-cpu-torch, pi\)") as info:
        reg.get("nope")
    assert isinstance(info.value, LookupError) and isinstance(info.value, HwnasError)
    with pytest.raises(NotFoundError, match="unknown device 'nope'"):
        reg.remove("nope")
    reg.remove("pi")
    reg.remove("jetson")
    with pytest.raises(NotFoundError,
                       match=r"unknown device 'pi' \(known: local-cpu, local-cpu-ort, local-cpu-torch\)"):
        reg.get("pi")


RPC = {"location": "rpc", "rpc_key": "pi"}
BAD_DEVICES: dict[str, tuple[dict[str, object], str]] = {
    "kind": ({"kind": "tpu"}, "kind 'tpu' is not one of cpu, gpu, iot"),
    "runtime": ({"runtime": "onnx"}, "runtime 'onnx' is not one of tvm, torch"),
    "location": ({"location": "cloud"}, "location 'cloud' is not one of local, rpc"),
    "rpc-no-tracker": (RPC, "an rpc device needs --tracker HOST:PORT and --key, got tracker=None key='pi'"),
    "rpc-tracker-no-port": ({**RPC, "tracker": "10.0.0.1"}, "bad tracker address '10.0.0.1' (expected HOST:PORT)"),
    "rpc-port-range": ({**RPC, "tracker": "10.0.0.1:99999"}, "bad tracker address '10.0.0.1:99999'"),
    "rpc-no-key": ({"location": "rpc", "tracker": "10.0.0.1:9190"}, "an rpc device needs --tracker HOST:PORT"),
    "tracker-on-local": ({"tracker": "10.0.0.1:9190"}, "apply to location 'rpc' only"),
    "target-string": ({"target": "llvm -mcpu=znver4"}, "target must be a JSON object"),
    "target-no-kind": ({"target": {"mcpu": "znver4"}}, "target needs a 'kind'"),
    "fingerprint-not-json": ({"fingerprint": {"when": dt.datetime(2025, 1, 1)}}, "fingerprint is not storable as JSON"),
    "empty-name": ({"name": ""}, "device name '' must be 1 to 128 characters"),
    "long-name": ({"name": "x" * 129}, "must be 1 to 128 characters"),
}


@pytest.mark.parametrize(("overrides", "fragment"), BAD_DEVICES.values(), ids=BAD_DEVICES.keys())
def test_bad_device_definitions_name_the_field(db: Database, overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(MeasurementError, match=re.escape(fragment)):
        _add(db, **overrides)
    assert _registered(db) == []


# -- URLs and unreachable databases ---------------------------------------------------------------
def test_unreachable_database_is_one_quick_masked_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        Database("postgresql://someone:s3cret@127.0.0.1:1/nope")
    assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert "s3cret" not in message and "someone:***@127.0.0.1:1/nope" in message and "\n" not in message


@pytest.mark.parametrize(("url", "fragment"), [
    pytest.param("not a url", "bad database URL", id="unparsable"),
    pytest.param("post gres://someone:s3cret@host/db", "bad database URL 'post gres://someone:***@host/db'",
                 id="unparsable-with-password"),
    pytest.param("nosuchdb://someone:s3cret@host/db", "unsupported backend 'nosuchdb'", id="unknown-backend"),
])
def test_bad_urls_are_storage_errors(url: str, fragment: str) -> None:
    with pytest.raises(StorageError, match=re.escape(fragment)) as info:
        Database(url)
    assert "s3cret" not in str(info.value)


def test_unopenable_sqlite_file_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="is unusable"):
        Database(f"sqlite:///{tmp_path / 'missing-dir' / 'hwnas.db'}")


def test_url_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HWNAS_HOME", str(home))
    monkeypatch.delenv("HWNAS_DB_URL", raising=False)
    assert resolve_url() == f"sqlite:///{home / 'hwnas.db'}"
    assert home.is_dir()  # created, so the default SQLite file can be opened
    monkeypatch.setenv("HWNAS_DB_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert resolve_url() == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert resolve_url("postgresql://x@h/db") == "postgresql://x@h/db"  # an explicit URL wins
    with Database() as db:
        assert db.url == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert (tmp_path / "elsewhere.db").is_file() and not (home / "hwnas.db").exists()


def test_cli_reports_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HWNAS_HOME": str(tmp_path), "HWNAS_DB_URL": "postgresql://nobody:s3cret@127.0.0.1:1/x"}
    result = subprocess.run([sys.executable, "-m", "hwnas.cli", "devices", "remove", "pi"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: database postgresql://nobody:***@127.0.0.1:1/x")
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
