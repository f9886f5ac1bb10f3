"""The built-in GPU device: present only with a CUDA device; tuned, measured and predicted like the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hwnas.exceptions import MeasurementError
from hwnas.kernels import host_target, tune_space
from hwnas.latency import DeviceProfile, MeasureConfig, builtin_device, builtin_devices, tuning_runner, tuning_target
from hwnas.search_spaces import SearchSpace, get_space
from hwnas.supernet import ModelConfig


def test_without_a_gpu_there_is_no_local_gpu_device() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert "local-gpu" not in builtin_devices() and "local-gpu-torch" not in builtin_devices()
    with pytest.raises(MeasurementError, match="unknown device 'local-gpu' \\(built-in: local-cpu, "):
        builtin_device("local-gpu")


def test_only_tvm_devices_here_or_behind_a_tracker_are_tuned() -> None:
    def profile(**kw: object) -> DeviceProfile:
        return DeviceProfile(**{"name": "d", "kind": "cpu", "target": host_target(), **kw})  # type: ignore[arg-type]

    assert tuning_runner(profile()) is None  # this machine: MetaSchedule's local runner
    bare = {k: v for k, v in host_target().items() if k != "num-cores"}
    assert tuning_target(profile(target=bare)) == {**bare, "num-cores": os.cpu_count()}  # MetaSchedule needs them
    pinned = profile(target=bare, protocol=MeasureConfig(threads=1))
    assert tuning_target(pinned)["num-cores"] == 1  # tuned for the threads it is timed with
    with pytest.raises(MeasurementError, match="a CPU target needs 'num-cores'"):
        tune_space(space=get_space("quickstart"), mc=ModelConfig(vocab_size=40, qkv_dim=64), target=bare,
                   work_dir="unused", trials=1, decode_steps=1)
    with pytest.raises(MeasurementError, match="runs torch, not TVM: it has no kernels to tune"):
        tuning_runner(profile(runtime="torch"))
    with pytest.raises(MeasurementError, match="is a Ray node: tune it there"):
        tuning_runner(profile(location="ray"))
    with pytest.raises(MeasurementError, match="cannot reach TVM RPC tracker 127.0.0.1:1"):
        tuning_runner(profile(location="rpc", tracker="127.0.0.1:1", rpc_key="pi"))


@pytest.mark.gpu
def test_local_gpu_is_tuned_and_measured_on_the_gpu(tmp_path: Path, tiny_space: SearchSpace,
                                                    tiny_mc: ModelConfig) -> None:
    """Only with `-m gpu` on a machine with a CUDA device: MetaSchedule tunes CUDA kernels on it, and a subnet
    built with them runs there."""
    from hwnas.latency import measure

    gpu = builtin_device("local-gpu")
    assert gpu.kind == "gpu" and gpu.target["kind"] == "cuda" and gpu.fingerprint.get("gpu_model")
    report = tune_space(space=tiny_space, mc=tiny_mc, target=gpu.target, work_dir=tmp_path, trials=16,
                        decode_steps=tiny_space.source_length_tokens, runner=tuning_runner(gpu))
    assert report.trials == 16 and any(t.best_us for t in report.tasks)
    [rec] = measure(device=gpu, space=tiny_space, model_config=tiny_mc, subnets=[tiny_space.largest()],
                    tuning_dir=str(tmp_path))
    assert rec.result.ok, rec.result.error
    [eager] = measure(device=builtin_device("local-gpu-torch"), space=tiny_space, model_config=tiny_mc,
                      subnets=[tiny_space.largest()])
    assert eager.result.ok, eager.result.error
    print(f"\ntiny largest on {gpu.fingerprint['gpu_model']}: TVM tuned {rec.latency_ms():.3f} ms, "
          f"torch eager {eager.latency_ms():.3f} ms")
