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
