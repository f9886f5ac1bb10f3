"""Retraining a found subnet: from scratch or fine-tuned, checkpoint averaging, test BLEU, and an export
that carries those weights and says what they are."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from hwnas.exceptions import CheckpointError, TrainingError
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import (
    DataSpec,
    TrainConfig,
    count_params,
    load_subtransformer,
    load_supernet,
    subtransformer_provenance,
    train_subtransformer,
    train_supernet,
)

CFG = TrainConfig(steps=6, max_tokens=300, warmup_steps=2, vocab_size=300, checkpoint_every=2, lr=3e-3)


@pytest.fixture(scope="module")
def supernet(tmp_path_factory: pytest.TempPathFactory, tiny_space: SearchSpace, bible_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("retrain-supernet")
    data = DataSpec.parse(f"files:{bible_dir}:de-en")
    return train_supernet(space=tiny_space, data=data, out=out, config=dataclasses.replace(CFG, steps=10),
                          progress=False).checkpoint


def test_retraining_from_scratch_averages_the_last_checkpoints(supernet: Path, tiny_space: SearchSpace,
                                                               tmp_path: Path) -> None:
    cfg = tiny_space.smallest()
    r = train_subtransformer(supernet=supernet, subnet=cfg, out=tmp_path, config=CFG, init="scratch",
                             average_last=3, progress=False, beam=2, test_limit=8)
    kept = sorted(tmp_path.glob("weights-*.pt"))
    assert [p.name for p in kept] == ["weights-0000002.pt", "weights-0000004.pt", "weights-0000006.pt"]
    model, _ = load_subtransformer(r.model)
    name = "encoder_layers.0.ffn.fc1.weight"
    mean = sum(torch.load(p, weights_only=True)[name] for p in kept) / 3
    torch.testing.assert_close(model.state_dict()[name], mean)
    assert r.params == count_params(cfg, model.mc) == sum(p.numel() for p in model.parameters())
    assert r.weights == "retrained" and r.averaged == 3 and r.steps == 6 and r.test_sentences == 8
    assert r.test_bleu is not None and 0 <= r.test_bleu <= 100 and r.test_loss is not None and r.test_loss > 0
    assert subtransformer_provenance(r.model) == r.provenance()


def test_fine_tuning_starts_from_the_inherited_weights_and_exports_them(supernet: Path, tiny_space: SearchSpace,
                                                                        tmp_path: Path) -> None:
    from hwnas.export import export_bundle, load_bundle

    cfg = tiny_space.largest()
    one_step = dataclasses.replace(CFG, steps=1, lr=0.0, warmup_steps=0, dropout=0.0)  # lr 0: weights stay put
    r = train_subtransformer(supernet=supernet, subnet=cfg, out=tmp_path / "ft", config=one_step,
                             init="inherited", progress=False, test_limit=0)
    model, tok = load_subtransformer(r.model)
    inherited = load_supernet(supernet).model.extract_subnet(cfg)
    assert all(torch.equal(v, inherited.state_dict()[k]) for k, v in model.state_dict().items())
    assert r.weights == "fine-tuned" and r.test_bleu is None

    bundle_dir = export_bundle(model=model, tokenizer=tok, out_dir=tmp_path / "bundle", fmt="torchscript",
                               provenance=r.provenance())
    bundle = load_bundle(bundle_dir)
    assert bundle.weights == r.provenance()
    exported = bundle.load_pytorch()
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in model.parameters())
    src = torch.tensor([[5, 6, 7, 8, 2]])
    tgt = torch.tensor([[1, 9, 10]])
    torch.testing.assert_close(exported(src, tgt), model.eval()(src, tgt), rtol=0, atol=0)


def test_bad_retraining_input(supernet: Path, tiny_space: SearchSpace, tmp_path: Path) -> None:
    from hwnas.search_spaces import SubnetConfig

    with pytest.raises(TrainingError, match="unknown init 'warm'"):
        train_subtransformer(supernet=supernet, subnet=tiny_space.smallest(), out=tmp_path, config=CFG, init="warm")
    with pytest.raises(TrainingError, match="needs at least 5 of them"):
        train_subtransformer(supernet=supernet, subnet=tiny_space.smallest(), out=tmp_path, config=CFG,
                             average_last=5)
    with pytest.raises(CheckpointError, match="does not exist"):
        train_subtransformer(supernet=tmp_path / "none.pt", subnet=tiny_space.smallest(), out=tmp_path, config=CFG)
    outside = SubnetConfig.from_dict(tiny_space.largest().to_dict() | {"decoder_ffn_embed_dim": [64, 64]})
    with pytest.raises(ValueError):
        train_subtransformer(supernet=supernet, subnet=outside, out=tmp_path, config=CFG)
    assert not list(tmp_path.iterdir())
    train_subtransformer(supernet=supernet, subnet=tiny_space.smallest(), out=tmp_path / "r", progress=False,
                         config=dataclasses.replace(CFG, steps=1), test_limit=0)
    with pytest.raises(CheckpointError, match="subtransformer training run, not a supernet"):
        load_supernet(tmp_path / "r" / "checkpoint.pt")  # a retraining run is not a supernet to search
