from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from hwnas.exceptions import SearchSpaceError
from hwnas.search_spaces import SearchSpace, SubnetConfig, get_space, list_spaces
from tests.conftest import TINY_SPACE_DICT


def test_shipped_spaces() -> None:
    assert set(list_spaces()) == {"wmt14.en-de", "wmt14.en-fr", "wmt19.en-de", "iwslt14.de-en", "quickstart"}
    wmt = get_space("wmt14.en-de")
    assert wmt.encoder_ffn_embed_dim == (1024, 2048, 3072)
    assert wmt.decoder_layer_num == (1, 2, 3, 4, 5, 6)
    assert wmt.encoder_layer_num == (6,)
    assert wmt.decoder_arbitrary_ende_attn == (1, 2, 3)
    assert wmt.source_length_tokens == 30
    iwslt = get_space("iwslt14.de-en")
    assert iwslt.decoder_ffn_embed_dim == (512, 1024, 2048) and iwslt.decoder_self_attention_heads == (2, 4)
    assert iwslt.source_length_tokens == 23


def test_hat_space_size_and_genome_length() -> None:
    wmt = get_space("wmt14.en-de")
    encoder = 2 * (3 * 2) ** 6
    decoder = 2 * sum((3 * 2 * 2 * 3) ** n for n in range(1, 7))
    assert wmt.size() == encoder * decoder  # about 4.2e14, as HAT's space
    assert len(wmt.genes()) == 40


def _enumerate(space: SearchSpace) -> set[SubnetConfig]:
    """Every canonical subnet, by brute force over the genome."""
    genes = space.genes()
    out = set()
    for values in itertools.product(*(g.choices for g in genes)):
        fields: dict = {}
        for gene, v in zip(genes, values, strict=True):
            if gene.layer is None:
                fields[gene.field] = v
            else:
                fields.setdefault(gene.field, []).append(v)
        out.add(SubnetConfig.from_dict(fields))
    return out


def test_size_matches_brute_force_enumeration() -> None:
    small = SearchSpace.from_dict({**TINY_SPACE_DICT, "encoder_ffn_embed_dim": [32],
                                   "decoder_self_attention_heads": [2], "decoder_ffn_embed_dim": [32, 48]})
    assert small.size() == len(_enumerate(small))


def test_sampling_is_seeded_valid_and_covers_the_choices(tiny_space: SearchSpace) -> None:
    a = [tiny_space.sample(np.random.default_rng(7)) for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same subnet
    rng = np.random.default_rng(0)
    samples = [tiny_space.sample(rng) for _ in range(300)]
    for cfg in samples:
        assert tiny_space.validate(cfg) is cfg
    assert {c.decoder_layer_num for c in samples} == {1, 2}
    assert {c.decoder_embed_dim for c in samples} == {16, 24}
    assert {h for c in samples for h in c.decoder_ende_attention_heads} == {2, 4}


def test_mutation(tiny_space: SearchSpace) -> None:
    rng = np.random.default_rng(1)
    parent = tiny_space.sample(rng)
    assert tiny_space.mutate(parent, 0.0, rng) == parent
    children = [tiny_space.mutate(parent, 1.0, rng) for _ in range(50)]
    assert sum(c != parent for c in children) > 40
    for c in children:
        tiny_space.validate(c)
    with pytest.raises(ValueError, match="probability"):
        tiny_space.mutate(parent, 1.5, rng)


def test_crossover_takes_genes_from_the_parents(tiny_space: SearchSpace) -> None:
    rng = np.random.default_rng(2)
    a, b = tiny_space.largest(), tiny_space.smallest()
    for _ in range(50):
        child = tiny_space.crossover(a, b, rng)
        tiny_space.validate(child)
        assert child.encoder_embed_dim in (a.encoder_embed_dim, b.encoder_embed_dim)
        for i, f in enumerate(child.encoder_ffn_embed_dim):
            assert f in (a.encoder_ffn_embed_dim[i], b.encoder_ffn_embed_dim[i])
    assert tiny_space.crossover(a, a, rng) == a


def test_validate_names_field_value_and_allowed_values(tiny_space: SearchSpace) -> None:
    cfg = tiny_space.largest()
    bad = SubnetConfig.from_dict({**cfg.to_dict(), "decoder_ffn_embed_dim": [48, 64]})
    with pytest.raises(SearchSpaceError) as info:
        tiny_space.validate(bad)
    msg = str(info.value)
    assert "decoder_ffn_embed_dim[1]" in msg and "64" in msg and "[32, 48]" in msg
    assert not tiny_space.contains(bad) and tiny_space.contains(cfg)


def test_largest_and_smallest(tiny_space: SearchSpace) -> None:
    big, small = tiny_space.largest(), tiny_space.smallest()
    assert big.decoder_layer_num == 2 and big.encoder_embed_dim == 24 and big.decoder_arbitrary_ende_attn == (2, 2)
    assert small.decoder_layer_num == 1 and small.encoder_ffn_embed_dim == (32, 32)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"qkv_dim": 18}, "not divisible by 4 heads"),
        ({"decoder_arbitrary_ende_attn": [1, 2, 3]}, "needs at least that many encoder layers"),
        ({"decoder_layer_num": []}, "'decoder_layer_num' must be a non-empty list"),
        ({"extra": 1}, "unknown field 'extra'"),
    ],
)
def test_bad_spaces(change: dict, fragment: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace.from_dict({**TINY_SPACE_DICT, **change})
    assert fragment in str(info.value)


def test_space_from_user_file(tmp_path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(TINY_SPACE_DICT))
    assert get_space(path).to_dict() == SearchSpace.from_dict(TINY_SPACE_DICT).to_dict()
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SearchSpaceError, match="not valid JSON"):
        get_space(bad)
    with pytest.raises(SearchSpaceError, match="unknown search space 'nope'"):
        get_space("nope")
