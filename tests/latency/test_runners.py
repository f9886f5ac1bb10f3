"""Runner contract, bound to every runner; protocol and result records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hwnas.exceptions import MeasurementError
from hwnas.kernels import BuildInput, build_one, host_target
from hwnas.latency import (
    MeasureConfig,
    OrtRunner,
    RPCRunner,
    RunInput,
    Runner,
    RunResult,
    TorchRunner,
    TVMLocalRunner,
    cv,
    loopback_rpc,
    median,
    time_calls,
    trimmed_mean,
)
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig

RPC_KEY = "loopback-test"
PROTOCOL = MeasureConfig(source_length_tokens=6, decode_steps=4, warmup_runs=1, timed_runs=5, threads=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_space: SearchSpace, tiny_mc: ModelConfig) -> list[RunInput]:
    root = tmp_path_factory.mktemp("runner-libs")
    out = []
    for i, cfg in enumerate((tiny_space.smallest(), tiny_space.largest())):
        b = BuildInput(cfg, tiny_mc, host_target(), source_length_tokens=6, cache_len=4)
        out.append(RunInput(b, build_one(b, str(root / str(i)))))
    return out


@pytest.fixture(scope="module")
def rpc_tracker() -> Iterator[str]:
    """A TVM RPC tracker and one server on loopback: the stand-in for a remote board."""
    with loopback_rpc(RPC_KEY) as tracker:
        yield tracker


@pytest.fixture(params=["tvm-local", "torch", "onnxruntime", "tvm-rpc"])
def runner(request: pytest.FixtureRequest) -> Runner:
    if request.param == "tvm-rpc":
        return RPCRunner(tracker=request.getfixturevalue("rpc_tracker"), key=RPC_KEY, timeout_s=120)
    if request.param == "onnxruntime":
        return OrtRunner(timeout_s=120)
    return TVMLocalRunner(timeout_s=120) if request.param == "tvm-local" else TorchRunner(timeout_s=120)


class TestRunnerContract:
    def test_one_result_per_input_with_raw_runs(self, runner: Runner, inputs: list[RunInput]) -> None:
        results = runner.run(inputs, PROTOCOL)
        assert len(results) == len(inputs)
        for r in results:
            assert r.ok, r.error
            assert len(r.encoder_ms or ()) == len(r.decoder_step_ms or ()) == PROTOCOL.timed_runs
            assert all(t > 0 for t in (*r.encoder_ms, *r.decoder_step_ms))  # type: ignore[misc]
            assert r.latency_ms(PROTOCOL.decode_steps) == pytest.approx(
                median(r.encoder_ms) + 4 * median(r.decoder_step_ms))  # type: ignore[arg-type]

    def test_a_failure_is_recorded_and_the_batch_goes_on(self, runner: Runner, inputs: list[RunInput],
                                                          tmp_path: Path) -> None:
        broken = RunInput(inputs[0].build.__class__(**{**inputs[0].build.__dict__, "weights": str(tmp_path / "x.pt")}),
                          str(tmp_path / "missing-library"))
        results = runner.run([broken, inputs[0]], PROTOCOL)
        assert not results[0].ok and results[0].error
        assert results[1].ok


def test_rpc_setup_errors_are_one_clear_error(rpc_tracker: str, inputs: list[RunInput]) -> None:
    with pytest.raises(MeasurementError, match="cannot reach TVM RPC tracker 127.0.0.1:1"):
        RPCRunner(tracker="127.0.0.1:1", key=RPC_KEY).run(inputs, PROTOCOL)
    with pytest.raises(MeasurementError, match="has no device with key 'no-such-board'"):
        RPCRunner(tracker=rpc_tracker, key="no-such-board").run(inputs, PROTOCOL)
    with pytest.raises(MeasurementError, match="bad tracker address"):
        RPCRunner(tracker="localhost", key=RPC_KEY).run(inputs, PROTOCOL)


def test_timeout_is_a_failed_record(inputs: list[RunInput]) -> None:
    slow = MeasureConfig(source_length_tokens=6, decode_steps=4, timed_runs=30, cooldown_ms=100)  # >= 3 s
    results = TorchRunner(timeout_s=1.0).run(inputs[:1], slow)
    assert not results[0].ok and "timed out" in (results[0].error or "")


def test_run_result_holds_timings_or_an_error() -> None:
    with pytest.raises(ValueError):
        RunResult()
    with pytest.raises(ValueError):
        RunResult(encoder_ms=(1.0,), decoder_step_ms=(1.0,), error="both")
    with pytest.raises(ValueError):
        RunResult(encoder_ms=(), decoder_step_ms=())
    failed = RunResult(error="boom")
    with pytest.raises(ValueError, match="boom"):
        failed.latency_ms(30)
    ok = RunResult(encoder_ms=(2.0, 4.0, 3.0), decoder_step_ms=(1.0, 1.0, 1.0))
    assert ok.latency_ms(10) == 13.0 and ok.latency_cv() == pytest.approx(cv([2.0, 4.0, 3.0]))


def test_protocol_is_frozen_validated_and_keyed() -> None:
    p = MeasureConfig()
    assert p.timed_runs >= 20 and p.batch_size == 1 and p.source_length_tokens == p.decode_steps == 30
    assert MeasureConfig.from_dict(p.to_dict()) == p and p.key() == MeasureConfig().key()
    assert MeasureConfig(timed_runs=21).key() != p.key()
    with pytest.raises(ValueError, match="timed_runs"):
        MeasureConfig(timed_runs=0)
    with pytest.raises(Exception):
        p.timed_runs = 3  # type: ignore[misc]


def test_statistics() -> None:
    runs = [10.0, 11.0, 9.0, 10.0, 100.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    assert median(runs) == 10.0
    assert trimmed_mean(runs) == pytest.approx(10.125)  # the outlier is cut
    assert cv([5.0, 5.0]) == 0.0 and cv([1.0, 3.0]) == pytest.approx(0.7071, abs=1e-3)


def test_time_calls_counts_and_syncs() -> None:
    calls, syncs = [], []
    times = time_calls(lambda: calls.append(1), warmup=2, runs=3, number=4, sync=lambda: syncs.append(1))
    assert len(times) == 3 and len(calls) == 2 + 12 and len(syncs) == 4


@pytest.mark.gpu
def test_tvm_cuda_library_runs_on_the_gpu(tmp_path: Path, tiny_space: SearchSpace, tiny_mc: ModelConfig) -> None:
    """Only with `-m gpu` on a machine with a CUDA driver: build for the local GPU and time it."""
    b = BuildInput(tiny_space.largest(), tiny_mc, {"kind": "cuda", "arch": "sm_90"}, source_length_tokens=6,
                   cache_len=4)
    result = TVMLocalRunner().run([RunInput(b, build_one(b, str(tmp_path / "lib")))], PROTOCOL)[0]
    assert result.ok, result.error
    torch_result = TorchRunner(device="cuda").run([RunInput(b)], PROTOCOL)[0]
    assert torch_result.ok, torch_result.error


def test_protocol_follows_the_space_sentence_length() -> None:
    from hwnas.latency import local_cpu_profile, protocol_for
    from hwnas.search_spaces import get_space

    device = local_cpu_profile()
    iwslt, wmt = protocol_for(device, get_space("iwslt14.de-en")), protocol_for(device, get_space("wmt14.en-de"))
    assert iwslt.source_length_tokens == iwslt.decode_steps == 23  # HAT: IWSLT's average sentence
    assert wmt.source_length_tokens == wmt.decode_steps == 30
    assert iwslt.timed_runs == device.protocol.timed_runs and iwslt.key() != wmt.key()
