"""Search-strategy test stand-ins (named so: a latency formula and a loss formula, never measurements)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from hwnas.search import Evaluation, LatencyConstraint, Problem, Strategy, create_strategy
from hwnas.search_spaces import SearchSpace, SubnetConfig

STAND_IN_DEVICE = "stand-in-device"
# Small sizes of every strategy, so a whole search takes well under a second
SIZES: dict[str, dict[str, Any]] = {
    "evo": {"population": 12, "parents": 4, "mutations": 4, "crossovers": 4, "generations": 4},
    "nsga2": {"batch_size": 8, "batches": 4},
    "tpe": {"batch_size": 8, "batches": 4},
    "random": {"batch_size": 8, "batches": 4},
}


def _stand_in_weights(cfg: SubnetConfig, qkv_dim: int = 16) -> int:
    """Weights of the attention and FFN matrices (the tiny space's qkv_dim), embeddings left out."""
    d, big_d, q = cfg.encoder_embed_dim, cfg.decoder_embed_dim, qkv_dim
    enc = sum(4 * d * q + 2 * d * f for f in cfg.encoder_ffn_embed_dim)
    dec = sum(4 * big_d * q + 2 * big_d * q + 2 * d * q + 2 * big_d * f for f in cfg.decoder_ffn_embed_dim)
    return enc + dec


def stand_in_latency_ms(subnets: Sequence[SubnetConfig]) -> np.ndarray:
    """Test stand-in latency model (ms), never a measurement: proportional to the weight count, plus
    per-layer terms for depth, heads and cross-attention reach, so every gene moves it."""
    return np.array([
        1e-4 * _stand_in_weights(c) + 0.01 * (c.encoder_layer_num + c.decoder_layer_num)
        + 0.002 * (sum(c.encoder_self_attention_heads) + sum(c.decoder_self_attention_heads)
                   + sum(c.decoder_ende_attention_heads)) + 0.003 * sum(c.decoder_arbitrary_ende_attn)
        for c in subnets], dtype=float)


def stand_in_loss(cfg: SubnetConfig) -> float:
    """Test stand-in fitness: deterministic, and lower for bigger subnets (as a real validation loss is)."""
    heads = (*cfg.encoder_self_attention_heads, *cfg.decoder_self_attention_heads, *cfg.decoder_ende_attention_heads)
    return 2.0 + 2000.0 / _stand_in_weights(cfg) + 0.01 * sum(1 / h for h in heads) \
        - 0.005 * sum(cfg.decoder_arbitrary_ende_attn)


def stand_in_evaluate(cfg: SubnetConfig) -> Evaluation:
    return Evaluation(stand_in_loss(cfg))


def stand_in_problem(space: SearchSpace, budget_ms: float | None = None) -> Problem:
    """`space` under one stand-in latency budget; by default the median over 400 seeded samples (about half meet it)."""
    if budget_ms is None:
        rng = np.random.default_rng(0)
        budget_ms = float(np.median(stand_in_latency_ms([space.sample(rng) for _ in range(400)])))
    return Problem(space, (LatencyConstraint(STAND_IN_DEVICE, budget_ms, stand_in_latency_ms),))


def make_strategy(name: str, problem: Problem, *, seed: int = 0, **options: Any) -> Strategy:
    return create_strategy(name, problem, seed=seed, **{**SIZES[name], **options})


def run(strategy: Strategy, evaluate: Callable[[SubnetConfig], Evaluation] = stand_in_evaluate,
        max_batches: int | None = None) -> list[list[str]]:
    """Ask/tell until done (or `max_batches`); returns every batch as subnet keys."""
    batches: list[list[str]] = []
    while (max_batches is None or len(batches) < max_batches) and (batch := strategy.ask()) is not None:
        strategy.tell(batch, [evaluate(c) for c in batch])
        batches.append([c.key() for c in batch])
    return batches


@pytest.fixture(scope="session")
def stand_in(tiny_space: SearchSpace) -> Problem:
    """The tiny space under a stand-in latency budget that about half of it meets."""
    return stand_in_problem(tiny_space)
