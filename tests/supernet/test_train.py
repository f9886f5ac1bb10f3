from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hwnas.exceptions import CheckpointError, SearchSpaceError
from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet import (
    DataSpec,
    ModelConfig,
    SuperTransformer,
    TrainConfig,
    evaluate_subnet,
    load_supernet,
    read_checkpoint,
    train_supernet,
)
from tests.conftest import TINY_SPACE_DICT

CFG = TrainConfig(steps=8, max_tokens=300, warmup_steps=3, vocab_size=300, checkpoint_every=3, lr=3e-3)


class Interrupted(Exception):
    pass


def _kill_at(step_to_die: int):
    def hook(step: int) -> None:
        if step == step_to_die:
            raise Interrupted
    return hook


def test_resume_is_exact(tmp_path: Path, tiny_space: SearchSpace, bible_dir: Path) -> None:
    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    straight = train_supernet(space=tiny_space, data=data, out=tmp_path / "a", config=CFG, progress=False)
    with pytest.raises(Interrupted):  # dies after step 5; the last checkpoint is step 3
        train_supernet(space=tiny_space, data=data, out=tmp_path / "b", config=CFG, progress=False,
                       on_step=_kill_at(5))
    assert read_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 3
    resumed = train_supernet(space=tiny_space, data=data, out=tmp_path / "b", config=CFG, progress=False)
    assert straight.step == resumed.step == 8
    a, b = read_checkpoint(straight.checkpoint), read_checkpoint(resumed.checkpoint)
    assert a["history"] == b["history"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], b["optimizer"]["state"][k]["exp_avg_sq"])
    assert not list((tmp_path / "b").glob("*.tmp"))  # atomic writes leave nothing behind


def test_training_lowers_loss_and_evaluates(tmp_path: Path, tiny_space: SearchSpace, bible_dir: Path) -> None:
    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    cfg = TrainConfig(steps=60, max_tokens=400, warmup_steps=10, vocab_size=300, lr=5e-3, sandwich=True)
    result = train_supernet(space=tiny_space, data=data, out=tmp_path, config=cfg, progress=False)
    history = read_checkpoint(result.checkpoint)["history"]
    assert sum(history[-10:]) / 10 < sum(history[:10]) / 10 - 0.5
    assert result.tokens_per_s > 0 and result.seconds_per_step > 0
    loaded = load_supernet(result.checkpoint)
    valid = data.load("valid")
    big = evaluate_subnet(loaded, tiny_space.largest(), valid, beam=2)
    small = evaluate_subnet(loaded, tiny_space.smallest(), valid, with_bleu=False)
    assert 0 < big.valid_loss < 6.0 and big.bleu is not None and 0 <= big.bleu <= 100
    assert small.bleu is None and small.params < big.params


def test_fixed_subnet_training_updates_only_its_slice(tmp_path: Path, tiny_space: SearchSpace,
                                                     bible_dir: Path) -> None:
    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    cfg = TrainConfig(steps=3, max_tokens=300, vocab_size=300)
    small = tiny_space.smallest()
    result = train_supernet(space=tiny_space, data=data, out=tmp_path, config=cfg, subnet=small, progress=False)
    state = read_checkpoint(result.checkpoint)
    assert state["subnet"] == small.to_dict()
    torch.manual_seed(cfg.seed)  # training initialises the supernet from this seed
    init = SuperTransformer(tiny_space, ModelConfig(**state["model_config"])).state_dict()
    name = "model.encoder_layers.0.ffn.fc1.weight"  # (48, 24) in the supernet; (32, 16) in `small`
    trained = state["model"][name]
    assert not torch.equal(trained[:32, :16], init[name][:32, :16])
    assert torch.equal(trained[32:], init[name][32:]) and torch.equal(trained[:, 16:], init[name][:, 16:])
    unused = "model.decoder_layers.1.ffn.fc1.weight"  # `small` has one decoder layer
    assert torch.equal(state["model"][unused], init[unused])
    bad = SubnetConfig.from_dict(tiny_space.largest().to_dict() | {"decoder_ffn_embed_dim": [64, 64]})
    with pytest.raises(SearchSpaceError):
        train_supernet(space=tiny_space, data=data, out=tmp_path / "x", config=cfg, subnet=bad, progress=False)


def test_corrupt_and_foreign_checkpoints(tmp_path: Path, tiny_space: SearchSpace, bible_dir: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_supernet(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_supernet(tmp_path / "missing.pt")
    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    cfg = TrainConfig(steps=2, max_tokens=300, vocab_size=300)
    good = train_supernet(space=tiny_space, data=data, out=tmp_path / "ok", config=cfg, progress=False)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError):
        load_supernet(truncated)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an hwnas supernet checkpoint"):
        load_supernet(tmp_path / "other.pt")
    other_space = SearchSpace.from_dict({**TINY_SPACE_DICT, "name": "other", "decoder_layer_num": [1]})
    with pytest.raises(CheckpointError, match="trained on space 'tiny-test-space'"):
        train_supernet(space=other_space, data=data, out=tmp_path / "ok", config=cfg, progress=False)


def test_bf16_autocast_trains_on_cpu_and_fp16_is_refused(tmp_path: Path, tiny_space: SearchSpace,
                                                         bible_dir: Path) -> None:
    import dataclasses

    from hwnas.exceptions import TrainingError

    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    cfg = TrainConfig(steps=3, max_tokens=300, warmup_steps=1, vocab_size=300, dropout=0.0)
    fp32 = train_supernet(space=tiny_space, data=data, out=tmp_path / "fp32", config=cfg, progress=False)
    bf16 = train_supernet(space=tiny_space, data=data, out=tmp_path / "bf16", progress=False,
                          config=dataclasses.replace(cfg, precision="bf16"))
    a, b = read_checkpoint(fp32.checkpoint), read_checkpoint(bf16.checkpoint)
    assert bf16.precision == "bf16" and all(v.dtype == torch.float32 for v in b["model"].values())  # fp32 master
    # the same updates in lower precision: close losses, different weights (autocast did run in bf16)
    assert b["history"] == pytest.approx(a["history"], rel=0.05)
    name = "model.encoder_layers.0.ffn.fc1.weight"
    assert not torch.equal(a["model"][name], b["model"][name])
    with pytest.raises(TrainingError, match="fp16 training needs a CUDA device"):
        train_supernet(space=tiny_space, data=data, out=tmp_path / "fp16", progress=False,
                       config=dataclasses.replace(cfg, precision="fp16"))
    with pytest.raises(TrainingError, match="unknown precision 'fp8'"):
        dataclasses.replace(cfg, precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA device"):
            train_supernet(space=tiny_space, data=data, out=tmp_path / "cuda", config=cfg, device="cuda",
                           progress=False)
    assert not (tmp_path / "fp16").exists() and not (tmp_path / "cuda").exists()


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path: Path, tiny_space: SearchSpace,
                                                             bible_dir: Path) -> None:
    import dataclasses

    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    cfg = TrainConfig(steps=2, max_tokens=300, warmup_steps=1, vocab_size=300)
    train_supernet(space=tiny_space, data=data, out=tmp_path, config=cfg, progress=False)
    with pytest.raises(CheckpointError, match=r"lr 0.002 -> 0.001, update_freq 1 -> 2"):
        train_supernet(space=tiny_space, data=data, out=tmp_path, progress=False,
                       config=dataclasses.replace(cfg, lr=1e-3, update_freq=2))
    longer = train_supernet(space=tiny_space, data=data, out=tmp_path, progress=False,
                            config=dataclasses.replace(cfg, steps=3))  # more updates: a resume
    assert longer.step == 3


def test_update_frequency_accumulates_batches_into_one_update(tmp_path: Path, tiny_space: SearchSpace,
                                                              bible_dir: Path) -> None:
    import dataclasses

    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    cfg = TrainConfig(steps=2, max_tokens=300, warmup_steps=1, vocab_size=300, dropout=0.0)
    one = train_supernet(space=tiny_space, data=data, out=tmp_path / "a", config=cfg, progress=False)
    two = train_supernet(space=tiny_space, data=data, out=tmp_path / "b", progress=False,
                         config=dataclasses.replace(cfg, update_freq=2))
    a, b = read_checkpoint(one.checkpoint), read_checkpoint(two.checkpoint)
    assert (a["epoch"], a["pos"]) == (0, 2) and (b["epoch"], b["pos"]) == (0, 4)  # twice the batches per update
    assert b["history"] != a["history"]


def test_schedules_and_recipes() -> None:
    from hwnas.exceptions import TrainingError
    from hwnas.supernet import RECIPES, get_recipe

    cos = TrainConfig(steps=100, lr=1e-3, schedule="cosine", warmup_steps=10, warmup_init_lr=1e-7, min_lr=1e-7)
    assert cos.lr_at(1) == pytest.approx(1e-7 + (1e-3 - 1e-7) / 10)
    assert cos.lr_at(10) == pytest.approx(1e-3)
    assert cos.lr_at(55) == pytest.approx((1e-3 + 1e-7) / 2)
    assert cos.lr_at(100) == pytest.approx(1e-7)
    inv = TrainConfig(lr=2e-3, warmup_steps=200)
    assert inv.lr_at(800) == pytest.approx(1e-3)
    wmt = get_recipe("wmt14.en-de", "wmt14.en-de")
    cfg = wmt.config(workers=8)
    assert (cfg.max_tokens, cfg.update_freq, cfg.steps, cfg.schedule, cfg.warmup_steps) == (
        4096, 16, 40_000, "cosine", 10_000)  # HAT: 8 GPUs x 16 x 4096 tokens per update
    assert wmt.config(workers=1).update_freq == 128
    assert wmt.config(workers=2, steps=10, lr=None).steps == 10  # overrides; None keeps the recipe's value
    sub = wmt.config(subnet=True)
    assert sub.warmup_steps == 4000 and sub.steps == 40_000
    assert RECIPES["iwslt14.de-en"].config(subnet=True).keep_checkpoints == 10  # HAT averages the last 10
    with pytest.raises(TrainingError, match="recipe 'wmt14.en-de' is for space 'wmt14.en-de', not 'quickstart'"):
        get_recipe("wmt14.en-de", "quickstart")
    with pytest.raises(TrainingError, match="unknown recipe"):
        get_recipe("wmt16", "quickstart")
    with pytest.raises(TrainingError, match="unknown schedule"):
        TrainConfig(schedule="linear")
