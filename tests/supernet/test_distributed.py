"""Data-parallel training on Ray Train (2 CPU workers, gloo) against one process: same updates, exact resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from hwnas.exceptions import CheckpointError, ClusterError
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import DataSpec, TrainConfig, read_checkpoint, train_supernet

pytestmark = pytest.mark.slow  # each data-parallel run starts a Ray Train worker group (~10-20 s)

# dropout 0: ranks draw their own dropout masks, one process draws one; everything else must agree
CFG = TrainConfig(steps=4, max_tokens=300, warmup_steps=2, vocab_size=300, checkpoint_every=2, lr=3e-3,
                  dropout=0.0, sandwich=True)


@pytest.fixture(scope="module")
def ray_local():
    from hwnas.cluster import init_ray

    init_ray(num_cpus=2)
    yield
    import ray

    ray.shutdown()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def test_two_workers_equal_one_with_update_freq_two_and_resume_exactly(
        tmp_path: Path, tiny_space: SearchSpace, bible_dir: Path, ray_local: None) -> None:
    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    single = train_supernet(space=tiny_space, data=data, out=tmp_path / "one", progress=False,
                            config=dataclasses.replace(CFG, update_freq=2))
    dp = train_supernet(space=tiny_space, data=data, out=tmp_path / "dp", config=CFG, workers=2,
                        cpus_per_worker=1, progress=False)
    assert dp.step == single.step == 4 and dp.workers == 2
    a, b = _weights(single.checkpoint), _weights(dp.checkpoint)
    assert read_checkpoint(dp.checkpoint)["history"] == pytest.approx(read_checkpoint(single.checkpoint)["history"],
                                                                       abs=1e-5)
    compared = 0
    for k, v in a.items():
        if k.endswith("k_proj.bias"):
            # softmax ignores a bias added to every key: its gradient is exactly zero, so what reaches it is
            # rounding noise, which Adam scales up to full-size steps; no summation order can agree on noise
            continue
        torch.testing.assert_close(b[k], v, rtol=0, atol=1e-5, msg=k)
        compared += 1
    assert compared > 20

    # resume under data parallelism: 2 updates, then 2 more, equals 4 at once
    short = dataclasses.replace(CFG, steps=2)
    train_supernet(space=tiny_space, data=data, out=tmp_path / "dp2", config=short, workers=2, cpus_per_worker=1,
                   progress=False)
    resumed = train_supernet(space=tiny_space, data=data, out=tmp_path / "dp2", config=CFG, workers=2,
                             cpus_per_worker=1, progress=False)
    assert resumed.step == 4
    for k, v in _weights(dp.checkpoint).items():
        assert torch.equal(_weights(resumed.checkpoint)[k], v), k
    with pytest.raises(CheckpointError, match="trained with 2 worker"):
        train_supernet(space=tiny_space, data=data, out=tmp_path / "dp2", config=CFG, progress=False)


def test_a_worker_group_the_cluster_cannot_place_is_one_error(
        tmp_path: Path, tiny_space: SearchSpace, bible_dir: Path, ray_local: None) -> None:
    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    with pytest.raises(ClusterError, match="cannot place 3 workers of 1 CPU"):
        train_supernet(space=tiny_space, data=data, out=tmp_path / "x", config=CFG, workers=3, cpus_per_worker=1,
                       progress=False)
    with pytest.raises(ClusterError, match="1 GPU"):
        train_supernet(space=tiny_space, data=data, out=tmp_path / "y", config=CFG, workers=2, gpus_per_worker=1,
                       progress=False)
    assert not (tmp_path / "x" / "checkpoint.pt").exists()
