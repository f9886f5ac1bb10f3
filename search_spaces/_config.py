"""`SubnetConfig`: one SubTransformer architecture, as in HAT (heterogeneous layers)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from hwnas.exceptions import SearchSpaceError

# (per-layer field, the layer-count field it follows)
PER_LAYER_FIELDS: dict[str, str] = {
    "encoder_ffn_embed_dim": "encoder_layer_num",
    "encoder_self_attention_heads": "encoder_layer_num",
    "decoder_ffn_embed_dim": "decoder_layer_num",
    "decoder_self_attention_heads": "decoder_layer_num",
    "decoder_ende_attention_heads": "decoder_layer_num",
    "decoder_arbitrary_ende_attn": "decoder_layer_num",
}
SCALAR_FIELDS: tuple[str, ...] = (
    "encoder_embed_dim",
    "encoder_layer_num",
    "decoder_embed_dim",
    "decoder_layer_num",
)


def _as_int(field: str, value: Any) -> int:
    # bool is an int subclass; `true` in a JSON file is a mistake, not a dimension.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SearchSpaceError(f"subnet field '{field}' must be a positive integer, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class SubnetConfig:
    """A SubTransformer: embed dims, depths and per-layer widths of encoder and decoder.

    Always held in canonical form: per-layer tuples are cut to the active layer count on
    construction, so two configs that differ only in genes of inactive layers are equal
    and hash equal. `decoder_arbitrary_ende_attn[i]` is how many of the last encoder
    layers decoder layer `i` attends to (1, 2 or 3; HAT's -1, 1, 2).
    """

    encoder_embed_dim: int
    encoder_layer_num: int
    encoder_ffn_embed_dim: tuple[int, ...]
    encoder_self_attention_heads: tuple[int, ...]
    decoder_embed_dim: int
    decoder_layer_num: int
    decoder_ffn_embed_dim: tuple[int, ...]
    decoder_self_attention_heads: tuple[int, ...]
    decoder_ende_attention_heads: tuple[int, ...]
    decoder_arbitrary_ende_attn: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in SCALAR_FIELDS:
            _as_int(name, getattr(self, name))
        for name, count_field in PER_LAYER_FIELDS.items():
            raw = getattr(self, name)
            if isinstance(raw, str | bytes) or not hasattr(raw, "__len__"):
                raise SearchSpaceError(f"subnet field '{name}' must be a list of integers, got {raw!r}")
            count = getattr(self, count_field)
            if len(raw) < count:
                raise SearchSpaceError(
                    f"subnet field '{name}' has {len(raw)} values but '{count_field}' is {count}"
                )
            values = tuple(_as_int(f"{name}[{i}]", v) for i, v in enumerate(raw[:count]))
            object.__setattr__(self, name, values)  # canonical: inactive layers dropped
        too_deep = [a for a in self.decoder_arbitrary_ende_attn if a > self.encoder_layer_num]
        if too_deep:
            raise SearchSpaceError(
                f"subnet field 'decoder_arbitrary_ende_attn' asks for {max(too_deep)} encoder layers "
                f"but 'encoder_layer_num' is {self.encoder_layer_num}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=indent is None)

    def key(self) -> str:
        """Stable short id of the canonical form (for caches and database rows)."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubnetConfig:
        """Build from our flat form, or from HAT's nested `{"encoder": ..., "decoder": ...}` form."""
        if not isinstance(data, Mapping):
            raise SearchSpaceError(f"a subnet config must be a JSON object, got {type(data).__name__}")
        if "encoder" in data and "decoder" in data:
            data = _from_hat(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SearchSpaceError(f"unknown subnet field '{unknown[0]}' (known: {', '.join(sorted(names))})")
        missing = sorted(names - set(data))
        if missing:
            raise SearchSpaceError(f"subnet config is missing field '{missing[0]}'")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SearchSpaceError(f"malformed subnet JSON: {e}") from e
        return cls.from_dict(data)


def _from_hat(data: Mapping[str, Any]) -> dict[str, Any]:
    """HAT's config dict; its arbitrary-attention values -1/1/2 mean 1/2/3 encoder layers."""
    enc, dec = data["encoder"], data["decoder"]
    try:
        return {
            "encoder_embed_dim": enc["encoder_embed_dim"],
            "encoder_layer_num": enc["encoder_layer_num"],
            "encoder_ffn_embed_dim": enc["encoder_ffn_embed_dim"],
            "encoder_self_attention_heads": enc["encoder_self_attention_heads"],
            "decoder_embed_dim": dec["decoder_embed_dim"],
            "decoder_layer_num": dec["decoder_layer_num"],
            "decoder_ffn_embed_dim": dec["decoder_ffn_embed_dim"],
            "decoder_self_attention_heads": dec["decoder_self_attention_heads"],
            "decoder_ende_attention_heads": dec["decoder_ende_attention_heads"],
            "decoder_arbitrary_ende_attn": [1 if a == -1 else a + 1 for a in dec["decoder_arbitrary_ende_attn"]],
        }
    except (KeyError, TypeError) as e:
        raise SearchSpaceError(f"HAT-style subnet config is missing field {e}") from e
