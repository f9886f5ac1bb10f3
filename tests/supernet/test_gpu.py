"""CUDA paths of training and scoring (marker `gpu`): run where torch sees a GPU, skipped elsewhere."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from hwnas.search_spaces import SearchSpace
from hwnas.supernet import DataSpec, TrainConfig, read_checkpoint, train_supernet

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CFG = TrainConfig(steps=4, max_tokens=300, warmup_steps=1, vocab_size=300, dropout=0.0)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_tracks_the_cpu(tmp_path: Path, tiny_space: SearchSpace, bible_dir: Path,
                                         precision: str) -> None:
    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    cpu = train_supernet(space=tiny_space, data=data, out=tmp_path / "cpu", config=CFG, progress=False)
    gpu = train_supernet(space=tiny_space, data=data, out=tmp_path / "gpu", device="cuda", progress=False,
                         config=dataclasses.replace(CFG, precision=precision))
    assert gpu.device == "cuda" and gpu.precision == precision
    a, b = read_checkpoint(cpu.checkpoint), read_checkpoint(gpu.checkpoint)
    tolerance = 1e-3 if precision == "fp32" else 0.05  # TF32/cuBLAS vs CPU; half precision's rounding
    assert b["history"] == pytest.approx(a["history"], rel=tolerance)
    if precision == "fp16":
        assert b["scaler"] is not None  # the loss scale is checkpointed, so a resume continues it


def test_scoring_on_cuda_equals_the_cpu_within_two_percent(tmp_path: Path, tiny_space: SearchSpace,
                                                           bible_dir: Path) -> None:
    from hwnas.jobs import FitnessConfig
    from hwnas.jobs._scoring import Scorer

    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    ckpt = train_supernet(space=tiny_space, data=data, out=tmp_path, config=CFG, progress=False).checkpoint
    subnets = [tiny_space.largest(), tiny_space.smallest()]
    cpu = Scorer(ckpt, FitnessConfig(valid_sentences=8))
    for precision in ("fp32", "bf16", "fp16"):
        gpu = Scorer(ckpt, FitnessConfig(valid_sentences=8, precision=precision), device="cuda")
        for cfg in subnets:
            want, got = cpu.score(cfg), gpu.score(cfg)
            assert got.error is None and got.valid_loss == pytest.approx(want.valid_loss, rel=0.02)
