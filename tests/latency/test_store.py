"""MeasurementStore contract over every store (and both database backends); device and predictor registries."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hwnas.db import Database
from hwnas.exceptions import DuplicateError, MeasurementError, NotFoundError
from hwnas.latency import (
    DeviceProfile,
    DeviceRegistry,
    InMemoryStore,
    LayerwisePredictor,
    MeasureConfig,
    MeasurementRecord,
    MeasurementStore,
    RunResult,
    Sample,
    SQLMeasurementStore,
    load_predictor,
    local_cpu_profile,
    save_predictor,
)
from hwnas.search_spaces import SearchSpace
from tests.conftest import BACKENDS, open_db

PROTOCOL = MeasureConfig(decode_steps=4)


@pytest.fixture(params=["memory", *BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MeasurementStore]:
    if request.param == "memory":
        yield InMemoryStore()
        return
    with open_db(request.param, request, tmp_path) as database:
        yield SQLMeasurementStore(database)


def _record(space: SearchSpace, seed: int, ok: bool = True, tuning: str = "") -> MeasurementRecord:
    cfg = space.sample(np.random.default_rng(seed))
    result = RunResult((1.0, 1.2), (0.1, 0.11)) if ok else RunResult(error="build failed: boom")
    return MeasurementRecord("local-cpu", space.name, cfg, PROTOCOL, tuning, result)


class TestStoreContract:
    def test_round_trip_and_filters(self, store: MeasurementStore, tiny_space: SearchSpace) -> None:
        a, b, c = _record(tiny_space, 1), _record(tiny_space, 2, ok=False), _record(tiny_space, 3, tuning="t1")
        for r in (a, b, c):
            store.add(r)
        got = store.records(device="local-cpu", space=tiny_space.name)
        assert [r.subnet for r in got] == [a.subnet, b.subnet, c.subnet]
        assert got[0].result == a.result and got[1].result.error == "build failed: boom"
        assert got[0].protocol == PROTOCOL
        assert got[0].sample().latency_ms == pytest.approx(1.1 + 4 * 0.105)
        assert store.measured_keys(device="local-cpu", space=tiny_space.name, protocol_key=PROTOCOL.key(),
                                   tuning_key="") == {a.subnet.key(), b.subnet.key()}
        assert store.records(device="local-cpu", space="other") == []
        assert len(store.records(device="local-cpu", space=tiny_space.name, tuning_key="t1")) == 1

    def test_the_sessions_reference_latency_is_kept(self, store: MeasurementStore, tiny_space: SearchSpace) -> None:
        rec = dataclasses.replace(_record(tiny_space, 1), protocol=dataclasses.replace(PROTOCOL, reference=True),
                                  reference_ms=1.25)
        store.add(rec)
        (got,) = store.records(device="local-cpu", space=tiny_space.name)
        assert got.reference_ms == 1.25 and got.protocol.reference and got == rec


def test_device_registry(db: Database) -> None:
    reg = DeviceRegistry(db)
    pi = DeviceProfile(name="rpi4", kind="iot", target={"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
                       location="rpc", tracker="10.0.0.2:9190", rpc_key="rpi4")
    reg.add(pi)
    assert reg.get("rpi4") == pi
    names = [d.name for d in reg.list()]
    assert names[:2] == ["local-cpu", "local-cpu-torch"] and "rpi4" in names
    with pytest.raises(DuplicateError, match="already exists"):
        reg.add(pi)
    with pytest.raises(DuplicateError, match="built in"):
        reg.add(local_cpu_profile())
    reg.remove("rpi4")
    with pytest.raises(NotFoundError, match="unknown device 'rpi4'"):
        reg.get("rpi4")
    with pytest.raises(MeasurementError, match="rpc device needs"):
        DeviceProfile(name="x", kind="iot", target={"kind": "llvm"}, location="rpc")
    with pytest.raises(MeasurementError, match="kind 'fpga' is not one of"):
        DeviceProfile(name="x", kind="fpga", target={"kind": "llvm"})


def test_a_builtin_devices_row_follows_its_current_protocol(db: Database) -> None:
    """An older release stored local-cpu with its protocol then (one pass): the row is brought up to date."""
    from sqlalchemy import select

    from hwnas.db import Device

    def stored() -> Device:
        with db.session() as s:
            row = s.scalar(select(Device).where(Device.name == "local-cpu"))
            assert row is not None
            s.expunge(row)
            return row

    reg, current = DeviceRegistry(db), local_cpu_profile()
    older = dataclasses.replace(current, protocol=dataclasses.replace(current.protocol, passes=1),
                                fingerprint={**current.fingerprint, "tvm": "0.26"})
    row_id = reg.row_id(older)
    assert stored().protocol == older.protocol.to_dict()
    assert reg.row_id(current) == row_id
    row = stored()
    assert row.protocol == current.protocol.to_dict() and row.fingerprint == current.fingerprint


def test_predictor_registry_versions(db: Database, tiny_space: SearchSpace) -> None:
    device = local_cpu_profile()
    rng = np.random.default_rng(0)
    samples = [Sample(c, 1.0 + c.encoder_layer_num, 0.1 * c.decoder_layer_num, 4)
               for c in (tiny_space.sample(rng) for _ in range(40))]
    pred = LayerwisePredictor(tiny_space, 4).fit(samples)
    with pytest.raises(NotFoundError, match="no latency predictor"):
        load_predictor(db, device="local-cpu")
    assert save_predictor(db, device=device, predictor=pred, metrics={"mape": 0.01}, data_key="d1") == 1
    assert save_predictor(db, device=device, predictor=pred, metrics={"mape": 0.02}, data_key="d2") == 2
    latest, info = load_predictor(db, device="local-cpu", kind="layerwise")
    assert info["version"] == 2 and info["metrics"] == {"mape": 0.02} and info["fingerprint"] == device.fingerprint
    first, info1 = load_predictor(db, device="local-cpu", kind="layerwise", version=1)
    assert info1["training_data_key"] == "d1"
    np.testing.assert_allclose(latest.predict([tiny_space.largest()]), pred.predict([tiny_space.largest()]))
