from __future__ import annotations

import json

import pytest

from hwnas.exceptions import SearchSpaceError
from hwnas.search_spaces import SubnetConfig

BASE = {
    "encoder_embed_dim": 512,
    "encoder_layer_num": 2,
    "encoder_ffn_embed_dim": [1024, 2048],
    "encoder_self_attention_heads": [4, 8],
    "decoder_embed_dim": 640,
    "decoder_layer_num": 2,
    "decoder_ffn_embed_dim": [3072, 1024],
    "decoder_self_attention_heads": [8, 4],
    "decoder_ende_attention_heads": [4, 4],
    "decoder_arbitrary_ende_attn": [1, 2],
}


def test_json_round_trip() -> None:
    cfg = SubnetConfig.from_dict(BASE)
    again = SubnetConfig.from_json(cfg.to_json(indent=2))
    assert again == cfg
    assert json.loads(cfg.to_json()) == BASE


def test_inactive_layer_genes_are_dropped_so_equal_subnets_compare_and_hash_equal() -> None:
    a = SubnetConfig.from_dict({**BASE, "decoder_ffn_embed_dim": [3072, 1024, 2048, 2048],
                                "decoder_arbitrary_ende_attn": [1, 2, 3, 3, 1, 1]})
    b = SubnetConfig.from_dict({**BASE, "decoder_ffn_embed_dim": [3072, 1024, 1024],
                                "decoder_arbitrary_ende_attn": [1, 2]})
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    assert a.decoder_ffn_embed_dim == (3072, 1024)
    assert len({a, b}) == 1


def test_different_active_genes_differ() -> None:
    a = SubnetConfig.from_dict(BASE)
    b = SubnetConfig.from_dict({**BASE, "decoder_ende_attention_heads": [4, 8]})
    assert a != b and a.key() != b.key()


def test_hat_nested_form_maps_arbitrary_attention() -> None:
    hat = {
        "encoder": {"encoder_embed_dim": 512, "encoder_layer_num": 2, "encoder_ffn_embed_dim": [1024, 2048],
                    "encoder_self_attention_heads": [4, 8]},
        "decoder": {"decoder_embed_dim": 640, "decoder_layer_num": 2, "decoder_ffn_embed_dim": [3072, 1024],
                    "decoder_self_attention_heads": [8, 4], "decoder_ende_attention_heads": [4, 4],
                    "decoder_arbitrary_ende_attn": [-1, 1, 2, 2, 2, 2]},
    }
    assert SubnetConfig.from_dict(hat) == SubnetConfig.from_dict(BASE)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"encoder_embed_dim": 0}, "encoder_embed_dim"),
        ({"encoder_embed_dim": True}, "encoder_embed_dim"),
        ({"decoder_layer_num": "2"}, "decoder_layer_num"),
        ({"decoder_ffn_embed_dim": [3072]}, "'decoder_ffn_embed_dim' has 1 values but 'decoder_layer_num' is 2"),
        ({"encoder_self_attention_heads": "48"}, "encoder_self_attention_heads"),
        ({"decoder_self_attention_heads": [8, -4]}, "decoder_self_attention_heads[1]"),
        ({"decoder_arbitrary_ende_attn": [1, 3]}, "asks for 3 encoder layers"),
        ({"bogus": 1}, "unknown subnet field 'bogus'"),
    ],
)
def test_bad_configs_name_the_field(change: dict, fragment: str) -> None:
    with pytest.raises(SearchSpaceError, match=None) as info:
        SubnetConfig.from_dict({**BASE, **change})
    assert fragment in str(info.value)


def test_missing_field_and_malformed_json() -> None:
    data = dict(BASE)
    del data["decoder_embed_dim"]
    with pytest.raises(SearchSpaceError, match="missing field 'decoder_embed_dim'"):
        SubnetConfig.from_dict(data)
    with pytest.raises(SearchSpaceError, match="malformed subnet JSON"):
        SubnetConfig.from_json("{not json")
    with pytest.raises(SearchSpaceError, match="JSON object"):
        SubnetConfig.from_json("[1, 2]")
