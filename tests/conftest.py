"""Shared fixtures. Test stand-ins are named as such: the product never uses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig, load_bible

TINY_SPACE_DICT = {
    "name": "tiny-test-space",  # a test stand-in: small enough for a train step in milliseconds
    "description": "test stand-in",
    "qkv_dim": 16,
    "source_length_tokens": 12,
    "encoder_embed_dim": [16, 24],
    "encoder_layer_num": [2],
    "encoder_ffn_embed_dim": [32, 48],
    "encoder_self_attention_heads": [2, 4],
    "decoder_embed_dim": [16, 24],
    "decoder_layer_num": [1, 2],
    "decoder_ffn_embed_dim": [32, 48],
    "decoder_self_attention_heads": [2, 4],
    "decoder_ende_attention_heads": [2, 4],
    "decoder_arbitrary_ende_attn": [1, 2],
}


@pytest.fixture(scope="session")
def tiny_space() -> SearchSpace:
    return SearchSpace.from_dict(TINY_SPACE_DICT)


@pytest.fixture(scope="session")
def tiny_mc() -> ModelConfig:
    return ModelConfig(vocab_size=97, qkv_dim=16, dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="session")
def bible_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `files:` data directory holding a small slice of the real Bible corpus (German -> English)."""
    d = tmp_path_factory.mktemp("bible-files")
    for split, n in (("train", 300), ("valid", 24), ("test", 24)):
        corpus = load_bible("de", "en", split).head(n)
        (d / f"{split}.de").write_text("\n".join(corpus.source) + "\n", encoding="utf-8")
        (d / f"{split}.en").write_text("\n".join(corpus.target) + "\n", encoding="utf-8")
    return d
