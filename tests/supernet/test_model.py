from __future__ import annotations

import numpy as np
import pytest
import torch

from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet import ModelConfig, SuperTransformer, beam_search, count_params, greedy_decode


@pytest.fixture()
def supernet(tiny_space: SearchSpace, tiny_mc: ModelConfig) -> SuperTransformer:
    torch.manual_seed(0)
    return SuperTransformer(tiny_space, tiny_mc).eval()


def _batch(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (3, 9), generator=g)
    src[0, -3:] = 0  # padding must be masked, not attended to
    tgt = torch.randint(3, vocab, (3, 6), generator=g)
    return src, tgt


def _subnets(space: SearchSpace, n: int = 6) -> list[SubnetConfig]:
    rng = np.random.default_rng(3)
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(n))]


def test_extracted_subnet_equals_supernet_slice(supernet: SuperTransformer, tiny_mc: ModelConfig) -> None:
    src, tgt = _batch(tiny_mc.vocab_size)
    for cfg in _subnets(supernet.space):
        standalone = supernet.extract_subnet(cfg).eval()
        torch.testing.assert_close(standalone(src, tgt), supernet(src, tgt, cfg), atol=1e-5, rtol=0)


def _expected_params(cfg: SubnetConfig, mc: ModelConfig) -> int:
    """Independent count: attention, FFN and LayerNorm parameters written out by hand."""
    q = mc.qkv_dim

    def attn(d: int, kv: int) -> int:
        return (d * q + q) + 2 * (kv * q + q) + (q * d + d)

    def ffn(d: int, f: int) -> int:
        return d * f + f + f * d + d

    e, dd = cfg.encoder_embed_dim, cfg.decoder_embed_dim
    total = mc.vocab_size * max(e, dd) + 2 * e + 2 * dd  # shared embedding + final norms
    total += sum(attn(e, e) + ffn(e, f) + 4 * e for f in cfg.encoder_ffn_embed_dim)
    total += sum(attn(dd, dd) + attn(dd, e) + ffn(dd, f) + 6 * dd for f in cfg.decoder_ffn_embed_dim)
    return total


def test_parameter_count_is_the_subnets_own(supernet: SuperTransformer, tiny_mc: ModelConfig) -> None:
    super_count = sum(p.numel() for p in supernet.parameters())
    for cfg in _subnets(supernet.space):
        model = supernet.extract_subnet(cfg)
        own = sum(p.numel() for p in model.parameters())
        assert own == _expected_params(cfg, tiny_mc) == count_params(cfg, tiny_mc)
        if cfg != supernet.space.largest():
            assert own < super_count
    cfg = supernet.space.smallest()
    no_embed = count_params(cfg, tiny_mc, embeddings=False)
    assert no_embed == count_params(cfg, tiny_mc) - tiny_mc.vocab_size * cfg.encoder_embed_dim


def test_extraction_copies_weights(supernet: SuperTransformer, tiny_mc: ModelConfig) -> None:
    cfg = supernet.space.smallest()
    src, tgt = _batch(tiny_mc.vocab_size)
    model = supernet.extract_subnet(cfg).eval()
    before = model(src, tgt)
    with torch.no_grad():
        for p in supernet.parameters():
            p.add_(1.0)
    torch.testing.assert_close(model(src, tgt), before)


def test_no_state_leaks_between_subnets(supernet: SuperTransformer, tiny_mc: ModelConfig) -> None:
    a, b = supernet.space.smallest(), supernet.space.largest()
    src, tgt = _batch(tiny_mc.vocab_size)
    first = supernet(src, tgt, a)
    supernet(src, tgt, b)
    assert torch.equal(supernet(src, tgt, a), first)
    assert first.shape == (3, 6, tiny_mc.vocab_size)


def test_gradients_reach_only_the_front_slices(supernet: SuperTransformer, tiny_mc: ModelConfig) -> None:
    cfg = supernet.space.smallest()
    src, tgt = _batch(tiny_mc.vocab_size)
    supernet.train()
    supernet(src, tgt, cfg).sum().backward()
    w = supernet.model.encoder_layers[0].ffn.fc1.weight  # (48, 24) in the supernet; (32, 16) in cfg
    assert w.grad is not None and w.grad[:32, :16].abs().sum() > 0
    assert w.grad[32:].abs().sum() == 0 and w.grad[:, 16:].abs().sum() == 0
    unused = supernet.model.decoder_layers[1].ffn.fc1.weight  # smallest has one decoder layer
    assert unused.grad is None or unused.grad.abs().sum() == 0


def test_incremental_decoding_matches_teacher_forcing(supernet: SuperTransformer, tiny_mc: ModelConfig) -> None:
    src, tgt = _batch(tiny_mc.vocab_size, seed=1)
    for cfg in _subnets(supernet.space, n=3):
        for model in (supernet.extract_subnet(cfg).eval(), supernet.subnet(cfg)):
            full = model(src, tgt)
            enc, cache, steps = model.encode(src), None, []
            for t in range(tgt.shape[1]):
                logits, cache = model.decode_step(tgt[:, t:t + 1], enc, cache)
                steps.append(logits)
            torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=0)
            assert cache[0]["self_k"].shape[2] == tgt.shape[1]


def test_greedy_and_beam_search(supernet: SuperTransformer, tiny_mc: ModelConfig) -> None:
    src, _ = _batch(tiny_mc.vocab_size, seed=2)
    cfg = supernet.space.sample(np.random.default_rng(5))
    view, standalone = supernet.subnet(cfg), supernet.extract_subnet(cfg).eval()
    greedy = greedy_decode(view, src, max_len_a=0, max_len_b=7)
    assert greedy == greedy_decode(standalone, src, max_len_a=0, max_len_b=7)
    assert all(len(h) <= 7 and 0 not in h and 2 not in h for h in greedy)
    # beam 1 keeps the arg-max token at each step: it is greedy search
    assert beam_search(view, src, beam=1, max_len_a=0, max_len_b=7) == greedy
    beams = beam_search(standalone, src, beam=3, max_len_a=0, max_len_b=7)
    assert len(beams) == 3 and all(len(h) <= 7 for h in beams)
    with pytest.raises(ValueError):
        beam_search(view, src, beam=0)


def test_subnet_outside_space_is_rejected(supernet: SuperTransformer) -> None:
    from hwnas.exceptions import SearchSpaceError

    cfg = SubnetConfig.from_dict({**supernet.space.largest().to_dict(), "encoder_embed_dim": 32})
    with pytest.raises(SearchSpaceError, match="encoder_embed_dim"):
        supernet.extract_subnet(cfg)


def test_count_flops_matches_torch_flop_counter(tiny_space: SearchSpace, tiny_mc: ModelConfig) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from hwnas.supernet import SubTransformer, count_flops

    for cfg in _subnets(tiny_space):
        with torch.device("meta"):
            model = SubTransformer(cfg, tiny_mc).eval()
            src, tgt = torch.ones(1, 7, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(src, tgt)
        assert count_flops(cfg, tiny_mc, source_len=7, target_len=5) == counter.get_total_flops()
    assert count_flops(tiny_space.largest(), tiny_mc) > count_flops(tiny_space.smallest(), tiny_mc)
