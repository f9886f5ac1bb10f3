"""The `passes` protocol: min of pass medians, keyed like before at passes=1, interleaved across a batch."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from hwnas.kernels import BuildInput, build_one, host_target
from hwnas.latency import (
    MeasureConfig,
    MeasurementRecord,
    OrtRunner,
    RunInput,
    RunResult,
    TorchRunner,
    TVMLocalRunner,
    cv,
    median,
    split_passes,
)
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig

STEPS = 4


def _old_key(p: MeasureConfig) -> str:
    """The key as computed before `passes` existed: sha1 of the dict of the eight older fields."""
    d = {f: getattr(p, f) for f in ("batch_size", "source_length_tokens", "decode_steps", "warmup_runs",
                                    "timed_runs", "number", "threads", "cooldown_ms")}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def test_passes_1_keeps_the_old_key_and_dict() -> None:
    for p in (MeasureConfig(), MeasureConfig(threads=2), MeasureConfig(decode_steps=23, source_length_tokens=23)):
        assert p.passes == 1 and "passes" not in p.to_dict()
        assert p.key() == _old_key(p)
        assert MeasureConfig.from_dict(p.to_dict()) == p
    # keys of stored records and predictors, as the code before `passes` computed them
    assert MeasureConfig().key() == "dfdc57a1b48c22dc"
    assert MeasureConfig(threads=2, source_length_tokens=23, decode_steps=23).key() == "28134cbb5466c9b2"
    five = MeasureConfig(passes=5)
    assert five.to_dict()["passes"] == 5 and five.key() != MeasureConfig().key()
    assert MeasureConfig.from_dict(five.to_dict()) == five and five.runs_per_pass == 20


def test_passes_1_gives_exactly_the_old_latency() -> None:
    enc, dec = (2.0, 4.0, 3.0, 9.5, 2.5, 3.1), (1.0, 1.2, 0.9, 1.1, 1.05, 0.95)
    r = RunResult(encoder_ms=enc, decoder_step_ms=dec)
    old = median(enc) + STEPS * median(dec)
    assert r.latency_ms(STEPS) == old and r.latency_ms(STEPS, passes=1) == old  # exact, not approx
    assert r.latency_cv() == r.latency_cv(1) == max(cv(enc), cv(dec))
    assert r.parts_ms(STEPS) == (median(enc), median(dec))


def test_latency_is_the_minimum_of_pass_medians() -> None:
    quiet_enc, quiet_dec = [10.0, 10.2, 9.8, 10.1], [1.0, 1.02, 0.98, 1.01]
    burst_enc, burst_dec = [14.0, 15.0, 13.5, 10.3], [1.6, 1.5, 1.4, 1.0]  # a slow spell of the shared CPU
    mid_enc, mid_dec = [10.5, 10.6, 10.4, 10.5], [1.05, 1.06, 1.04, 1.05]
    r = RunResult(encoder_ms=tuple(burst_enc + quiet_enc + mid_enc),
                  decoder_step_ms=tuple(burst_dec + quiet_dec + mid_dec))
    per_pass = r.pass_latencies_ms(STEPS, 3)
    assert per_pass == pytest.approx([median(burst_enc) + STEPS * median(burst_dec),
                                      median(quiet_enc) + STEPS * median(quiet_dec),
                                      median(mid_enc) + STEPS * median(mid_dec)])
    assert r.best_pass(STEPS, 3) == 1
    assert r.latency_ms(STEPS, 3) == pytest.approx(median(quiet_enc) + STEPS * median(quiet_dec))
    assert r.parts_ms(STEPS, 3) == (median(quiet_enc), median(quiet_dec))
    assert r.latency_ms(STEPS, 3) < r.latency_ms(STEPS)  # the burst moved the all-runs median
    # CV: the quiet pass's runs, not all runs (the between-pass drift is what the minimum drops)
    assert r.latency_cv(3, decode_steps=STEPS) == pytest.approx(max(cv(quiet_enc), cv(quiet_dec)))
    assert r.latency_cv(3, decode_steps=STEPS) < r.latency_cv()
    # the raw runs stay as they were, in run order
    assert list(r.encoder_ms or ()) == burst_enc + quiet_enc + mid_enc


def test_a_record_derives_its_figures_under_its_own_protocol(tiny_space: SearchSpace) -> None:
    r = RunResult(encoder_ms=(20.0, 21.0, 10.0, 10.0), decoder_step_ms=(2.0, 2.0, 1.0, 1.0))
    protocol = MeasureConfig(decode_steps=STEPS, timed_runs=4, passes=2)
    rec = MeasurementRecord("local-cpu", tiny_space.name, tiny_space.smallest(), protocol, "", r)
    assert rec.latency_ms() == 10.0 + STEPS * 1.0 == rec.sample().latency_ms
    assert rec.latency_cv() == 0.0
    classic = dataclasses.replace(rec, protocol=MeasureConfig(decode_steps=STEPS, timed_runs=4))
    assert classic.latency_ms() == median(r.encoder_ms) + STEPS * median(r.decoder_step_ms)  # type: ignore[arg-type]


def test_validation() -> None:
    with pytest.raises(ValueError, match="passes must be >= 1"):
        MeasureConfig(passes=0)
    with pytest.raises(ValueError, match=r"timed_runs \(100\) must be a multiple of passes \(3\)"):
        MeasureConfig(passes=3)
    with pytest.raises(ValueError, match="do not split into 3 equal passes"):
        split_passes([1.0, 2.0, 3.0, 4.0], 3)
    r = RunResult(encoder_ms=(1.0, 2.0, 3.0, 4.0), decoder_step_ms=(1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="do not split"):
        r.latency_ms(STEPS, 3)
    with pytest.raises(ValueError, match="needs decode_steps"):
        r.latency_cv(2)
    with pytest.raises(ValueError, match="boom"):
        RunResult(error="boom").latency_ms(STEPS, 2)


PASSES = MeasureConfig(source_length_tokens=6, decode_steps=STEPS, warmup_runs=1, timed_runs=6, threads=1, passes=3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_space: SearchSpace, tiny_mc: ModelConfig) -> list[RunInput]:
    root = tmp_path_factory.mktemp("passes-libs")
    out = []
    for i, cfg in enumerate((tiny_space.smallest(), tiny_space.largest())):
        b = BuildInput(cfg, tiny_mc, host_target(), source_length_tokens=6, cache_len=STEPS)
        out.append(RunInput(b, build_one(b, str(root / str(i)))))
    return out


@pytest.mark.parametrize("runner_cls", [TVMLocalRunner, TorchRunner, OrtRunner])
def test_interleaved_run_gives_each_subnet_all_its_passes(runner_cls: type, inputs: list[RunInput]) -> None:
    runner = runner_cls(timeout_s=120)
    results = runner.run(inputs, PASSES)
    assert len(results) == 2
    for r in results:
        assert r.ok, r.error
        assert len(r.encoder_ms or ()) == len(r.decoder_step_ms or ()) == PASSES.timed_runs
        assert all(t > 0 for t in (*r.encoder_ms, *r.decoder_step_ms))  # type: ignore[misc]
        assert r.latency_ms(STEPS, PASSES.passes) == min(r.pass_latencies_ms(STEPS, PASSES.passes))
        assert r.latency_ms(STEPS, PASSES.passes) <= max(r.pass_latencies_ms(STEPS, PASSES.passes))


def test_interleaving_order(monkeypatch: pytest.MonkeyPatch, inputs: list[RunInput]) -> None:
    """Pass 1 of every subnet, then pass 2 of every subnet, ...: one worker call per (pass, subnet)."""
    calls: list[str] = []

    class Done:
        def __init__(self, value: object):
            self.value = value

        def result(self) -> object:
            return self.value

    class Pool:
        def submit(self, fn, slot, *args):  # noqa: ANN001, ANN202
            calls.append(slot.rsplit(":", 1)[1])
            i = len(calls)
            return Done(([float(i)] * PASSES.runs_per_pass, [0.1 * i] * PASSES.runs_per_pass))

        def shutdown(self, wait: bool = True) -> None:
            calls.append("shutdown")

    runner = TVMLocalRunner()
    monkeypatch.setattr(runner, "_new_pool", Pool)
    results = runner.run(inputs, PASSES)
    assert calls == ["0", "1", "0", "1", "0", "1", "shutdown"]
    assert results[0].encoder_ms == (1.0, 1.0, 3.0, 3.0, 5.0, 5.0)  # its passes, in run order
    assert results[1].encoder_ms == (2.0, 2.0, 4.0, 4.0, 6.0, 6.0)


@pytest.mark.parametrize("runner_cls", [TVMLocalRunner, TorchRunner, OrtRunner])
def test_a_failing_subnet_is_an_error_record_and_the_others_go_on(runner_cls: type, inputs: list[RunInput],
                                                                  tmp_path: Path) -> None:
    good = inputs[0]
    broken = RunInput(dataclasses.replace(good.build, weights=str(tmp_path / "missing.pt")),
                      str(tmp_path / "missing-library"))
    results = runner_cls(timeout_s=120).run([broken, good], PASSES)
    assert not results[0].ok and "pass 1/3" in (results[0].error or "")
    assert results[1].ok, results[1].error
    assert len(results[1].encoder_ms or ()) == PASSES.timed_runs


def test_passes_without_interleaving_time_each_pass_back_to_back(inputs: list[RunInput]) -> None:
    """The one-subnet job (RPC, bench/noise.py's same-process case) also times `passes` passes."""
    from hwnas.latency import measure_tvm_local

    enc, dec = measure_tvm_local(inputs[0].artifact, PASSES)  # type: ignore[arg-type]
    assert len(enc) == len(dec) == PASSES.timed_runs
