"""MeasurementStore contract over every store (and both database backends); device revisions; the predictor
registry and its provenance (a lookup never answers with a near predictor)."""

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
    latency_model_key,
    load_predictor,
    local_cpu_profile,
    protocol_for,
    save_predictor,
    train_predictors,
)
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig
from tests.conftest import BACKENDS, open_db

PROTOCOL = MeasureConfig(decode_steps=4)
ZEN4 = {"cpu_model": "AMD EPYC 9R14", "cores": 2, "llvm_cpu": "znver4", "tvm": "0.27.0", "memory_gib": 24}
ROCKET = {**ZEN4, "cpu_model": "Intel Xeon", "llvm_cpu": "rocketlake"}


@pytest.fixture(params=["memory", *BACKENDS])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MeasurementStore]:
    if request.param == "memory":
        yield InMemoryStore()
        return
    with open_db(request.param, request, tmp_path) as database:
        yield SQLMeasurementStore(database)


def _record(space: SearchSpace, seed: int, ok: bool = True, tuning: str = "", model_key: str = "vocab=40,qkv=64",
            fingerprint: dict[str, object] | None = None, device: str = "local-cpu") -> MeasurementRecord:
    cfg = space.sample(np.random.default_rng(seed))
    result = RunResult((1.0, 1.2), (0.1, 0.11)) if ok else RunResult(error="build failed: boom")
    return MeasurementRecord(device, space.name, cfg, PROTOCOL, tuning, result, model_key=model_key,
                             fingerprint=dict(fingerprint or {}))


class TestStoreContract:
    def test_round_trip_and_filters(self, store: MeasurementStore, tiny_space: SearchSpace) -> None:
        a, b, c = _record(tiny_space, 1), _record(tiny_space, 2, ok=False), _record(tiny_space, 3, tuning="t1")
        d = _record(tiny_space, 4, model_key="vocab=32768,qkv=64")
        for r in (a, b, c, d):
            store.add(r)
        got = store.records(device="local-cpu", space=tiny_space.name)
        assert [r.subnet for r in got] == [a.subnet, b.subnet, c.subnet, d.subnet]
        assert got[0].result == a.result and got[1].result.error == "build failed: boom"
        assert got[0].protocol == PROTOCOL and got[0].model_key == "vocab=40,qkv=64"
        assert got[0].sample().latency_ms == pytest.approx(1.1 + 4 * 0.105)
        rev = got[0].revision
        assert rev is not None and {r.revision for r in got} == {rev}
        assert store.measured_keys(device="local-cpu", space=tiny_space.name, revision=rev,
                                   model_key="vocab=40,qkv=64", protocol_key=PROTOCOL.key(),
                                   tuning_key="") == {a.subnet.key(), b.subnet.key()}
        assert store.records(device="local-cpu", space="other") == []
        assert len(store.records(device="local-cpu", space=tiny_space.name, tuning_key="t1")) == 1
        assert [r.subnet for r in store.records(device="local-cpu", space=tiny_space.name,
                                                model_key="vocab=32768,qkv=64")] == [d.subnet]

    def test_a_changed_fingerprint_is_a_new_revision(self, store: MeasurementStore, tiny_space: SearchSpace) -> None:
        store.add(_record(tiny_space, 1, fingerprint=ZEN4))
        store.add(_record(tiny_space, 2, fingerprint={**ZEN4, "memory_gib": 32}))  # not what a latency depends on
        store.add(_record(tiny_space, 3, fingerprint=ROCKET))
        store.add(_record(tiny_space, 4, fingerprint=ZEN4))  # the first machine again: its revision again
        revs = [r.revision for r in store.records(device="local-cpu", space=tiny_space.name)]
        assert revs[0] == revs[1] == revs[3] != revs[2]
        assert [r.subnet for r in store.records(device="local-cpu", space=tiny_space.name, revision=revs[2])] == \
            [tiny_space.sample(np.random.default_rng(3))]
        device = dataclasses.replace(local_cpu_profile(), fingerprint=ROCKET)
        assert store.revision(device) == revs[2]
        assert store.revision(dataclasses.replace(device, fingerprint={**ROCKET, "cores": 8})) is None

    def test_the_board_that_timed_a_record_is_kept(self, store: MeasurementStore, tiny_space: SearchSpace) -> None:
        timed = dataclasses.replace(_record(tiny_space, 1), result=RunResult((1.0,), (0.1,), board="10.0.0.7:9090"))
        lost = dataclasses.replace(_record(tiny_space, 2), result=RunResult(
            error="board 10.0.0.8:9090 vanished mid-measurement", board="10.0.0.8:9090"))
        store.add(timed)
        store.add(lost)
        got = store.records(device="local-cpu", space=tiny_space.name)
        assert [r.result.board for r in got] == ["10.0.0.7:9090", "10.0.0.8:9090"]
        assert got[0].result == timed.result and got[1].result == lost.result

    def test_the_sessions_reference_latency_is_kept(self, store: MeasurementStore, tiny_space: SearchSpace) -> None:
        rec = dataclasses.replace(_record(tiny_space, 1), protocol=dataclasses.replace(PROTOCOL, reference=True),
                                  reference_ms=1.25)
        store.add(rec)
        (got,) = store.records(device="local-cpu", space=tiny_space.name)
        assert got.reference_ms == 1.25 and got.protocol.reference and got == dataclasses.replace(
            rec, revision=got.revision)


def test_device_registry(db: Database) -> None:
    reg = DeviceRegistry(db)
    pi = DeviceProfile(name="rpi4", kind="iot", target={"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
                       location="rpc", tracker="10.0.0.2:9190", rpc_key="rpi4")
    reg.add(pi)
    assert reg.get("rpi4") == pi
    names = [d.name for d in reg.list()]
    assert names[:3] == ["local-cpu", "local-cpu-torch", "local-cpu-ort"] and "rpi4" in names
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


def test_a_registered_local_device_is_probed_where_it_is_used(db: Database) -> None:
    """A local device is this machine: its fingerprint is the one probed here, not the one stored with it."""
    reg = DeviceRegistry(db)
    reg.add(DeviceProfile(name="box", kind="cpu", target={"kind": "llvm"}, fingerprint=ROCKET))
    assert reg.get("box").fingerprint == local_cpu_profile().fingerprint != ROCKET


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


# -- revisions and provenance, on a board whose fingerprint the test sets (a stand-in for a probed one) ----------

def _board(db: Database, fingerprint: dict[str, object]) -> DeviceProfile:
    reg = DeviceRegistry(db)
    if "pi" not in {d.name for d in reg.list()}:
        reg.add(DeviceProfile(name="pi", kind="iot", target={"kind": "llvm"}, location="rpc",
                              tracker="127.0.0.1:9190", rpc_key="pi", protocol=PROTOCOL))
    return dataclasses.replace(reg.get("pi"), fingerprint=fingerprint)


def _measured(db: Database, space: SearchSpace, fingerprint: dict[str, object], *, n: int, seed: int,
              scale: float = 1.0, model_key: str = "vocab=40,qkv=64") -> None:
    """Stand-in measurements: latency grows with depth, times `scale` (a slower board)."""
    store, rng = SQLMeasurementStore(db), np.random.default_rng(seed)
    protocol = protocol_for(_board(db, fingerprint), space)
    for _ in range(n):
        cfg = space.sample(rng)
        enc, dec = scale * (1.0 + cfg.encoder_layer_num), scale * 0.1 * cfg.decoder_layer_num
        store.add(MeasurementRecord("pi", space.name, cfg, protocol, "", RunResult((enc,) * 5, (dec,) * 5),
                                    model_key=model_key, fingerprint=fingerprint))


def test_training_on_a_new_revision_ignores_the_old_ones(db: Database, tiny_space: SearchSpace) -> None:
    mc = ModelConfig(vocab_size=40, qkv_dim=64)
    old = _board(db, ZEN4)
    _measured(db, tiny_space, ZEN4, n=30, seed=0)
    (v1,) = train_predictors(db, device=old, space=tiny_space, model_config=mc, kinds=["layerwise"], tuning_dir=None)
    new = _board(db, ROCKET)  # the board was swapped: nothing is measured on it yet
    with pytest.raises(NotFoundError, match=r"new revision \(cpu_model 'AMD EPYC 9R14' -> 'Intel Xeon', llvm_cpu "
                                            r"'znver4' -> 'rocketlake'\).*revisions: 1: AMD EPYC 9R14"):
        train_predictors(db, device=new, space=tiny_space, model_config=mc, kinds=["layerwise"], tuning_dir=None)
    _measured(db, tiny_space, ROCKET, n=30, seed=1, scale=3.0)
    (v2,) = train_predictors(db, device=new, space=tiny_space, model_config=mc, kinds=["layerwise"], tuning_dir=None)
    assert (v1["revision"], v2["revision"]) == (1, 2)
    assert v2["train"] + v2["test"] == 30 and v2["metrics"]["mape"] < 0.01  # the old board's 30 left out
    reg = DeviceRegistry(db)
    by_rev = {r.number: (r.measurements, r.predictors) for r in reg.revisions("pi")}
    assert by_rev == {1: (30, 1), 2: (30, 1)}
    big = tiny_space.largest()
    for device, scale in ((old, 1.0), (new, 3.0)):
        pred, info = load_predictor(db, reg.provenance(device, tiny_space, mc, None), kind="layerwise")
        expected = scale * (1 + big.encoder_layer_num + 1.2 * big.decoder_layer_num)
        assert pred.predict([big])[0] == pytest.approx(expected, rel=0.02)
    # the old revision's predictor, pinned, does not predict for the new one
    with pytest.raises(NotFoundError, match="was trained for pi rev 1 .*revision 1 \\(not 2\\)"):
        load_predictor(db, reg.provenance(new, tiny_space, mc, None), kind="layerwise", version=v1["version"])
    with pytest.raises(NotFoundError, match="device 'pi' has no revision 7 \\(revisions: 1: AMD"):
        reg.provenance(new, tiny_space, mc, None, revision=7)


def test_a_board_swapped_back_is_its_old_revision_again(db: Database, tiny_space: SearchSpace) -> None:
    """A remote device is not probed to predict: its row follows the board measured last, swaps included."""
    reg = DeviceRegistry(db)
    _board(db, ZEN4)
    for fingerprint in (ZEN4, ROCKET, ZEN4):
        _measured(db, tiny_space, fingerprint, n=1, seed=len(reg.revisions("pi")))
        assert reg.get("pi").fingerprint == fingerprint
    assert [(r.number, r.measurements, r.current) for r in reg.revisions("pi")] == [(1, 2, True), (2, 1, False)]
    with pytest.raises(NotFoundError, match="predictor version 3 of pi asked without its kind"):
        load_predictor(db, reg.provenance(reg.get("pi"), tiny_space, ModelConfig(vocab_size=40, qkv_dim=64), None),
                       version=3)


def test_each_space_and_model_gets_its_own_predictor(db: Database, tiny_space: SearchSpace) -> None:
    """Two spaces' predictors on one device: each lookup takes its own, a foreign one is refused by name."""
    other = SearchSpace.from_dict({**tiny_space.to_dict(), "name": "tiny-twin"})  # same choices, another space
    mc, wide = ModelConfig(vocab_size=40, qkv_dim=64), ModelConfig(vocab_size=32768, qkv_dim=64)
    board, reg = _board(db, ZEN4), DeviceRegistry(db)
    _measured(db, tiny_space, ZEN4, n=20, seed=0)
    _measured(db, other, ZEN4, n=20, seed=1, scale=10.0)
    (a,) = train_predictors(db, device=board, space=tiny_space, model_config=mc, kinds=["layerwise"], tuning_dir=None)
    (b,) = train_predictors(db, device=board, space=other, model_config=mc, kinds=["layerwise"], tuning_dir=None)
    big = tiny_space.largest()
    pa, ia = load_predictor(db, reg.provenance(board, tiny_space, mc, None))
    pb, ib = load_predictor(db, reg.provenance(board, other, mc, None))
    assert (ia["space"], ia["version"], ib["space"], ib["version"]) == (tiny_space.name, a["version"], "tiny-twin",
                                                                      b["version"])
    assert pb.predict([big])[0] == pytest.approx(10 * pa.predict([big])[0], rel=0.02)
    with pytest.raises(NotFoundError, match="trained for pi rev 1 on space 'tiny-twin'.*space 'tiny-twin' "
                                            "\\(not 'tiny-test-space'\\)"):
        load_predictor(db, reg.provenance(board, tiny_space, mc, None), kind="layerwise", version=b["version"])
    # the same space with another output layer is another model: its latency was never measured
    with pytest.raises(NotFoundError, match=r"no latency predictor for pi rev 1 on space 'tiny-test-space' "
                                            r"\(vocab=32768,qkv=64, .*stored: pi rev 1 on space 'tiny-test-space' "
                                            r"\(vocab=40,qkv=64"):
        load_predictor(db, reg.provenance(board, tiny_space, wide, None))
    assert latency_model_key(wide) == "vocab=32768,qkv=64"


def test_predictor_registry_versions(db: Database, tiny_space: SearchSpace) -> None:
    device = local_cpu_profile()
    rng = np.random.default_rng(0)
    samples = [Sample(c, 1.0 + c.encoder_layer_num, 0.1 * c.decoder_layer_num, 4)
               for c in (tiny_space.sample(rng) for _ in range(40))]
    pred = LayerwisePredictor(tiny_space, 4).fit(samples)
    reg = DeviceRegistry(db)
    with pytest.raises(NotFoundError, match="nothing was measured on device 'local-cpu'"):
        reg.provenance(device, tiny_space, ModelConfig(vocab_size=40, qkv_dim=64), None)
    reg.revision(device, create=True)
    prov = reg.provenance(device, tiny_space, ModelConfig(vocab_size=40, qkv_dim=64), None)
    with pytest.raises(NotFoundError, match="no latency predictor for local-cpu rev 1 on space 'tiny-test-space'"
                                            ".*stored: none"):
        load_predictor(db, prov)
    kw = {"device": device, "provenance": prov, "predictor": pred}
    assert save_predictor(db, **kw, metrics={"mape": 0.01}, data_key="d1") == 1  # type: ignore[arg-type]
    assert save_predictor(db, **kw, metrics={"mape": 0.02}, data_key="d2") == 2  # type: ignore[arg-type]
    latest, info = load_predictor(db, prov, kind="layerwise")
    assert info["version"] == 2 and info["metrics"] == {"mape": 0.02} and info["fingerprint"] == device.fingerprint
    assert info["revision"] == 1 and info["model_key"] == prov.model_key
    first, info1 = load_predictor(db, prov, kind="layerwise", version=1)
    assert info1["training_data_key"] == "d1"
    np.testing.assert_allclose(latest.predict([tiny_space.largest()]), pred.predict([tiny_space.largest()]))
    with pytest.raises(MeasurementError, match="cannot be stored as one of local-cpu rev 1 on space 'other'"):
        save_predictor(db, device=device, provenance=dataclasses.replace(prov, space="other"), predictor=pred,
                       metrics={}, data_key="d3")
