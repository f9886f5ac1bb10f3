"""`SearchSpace`: the choices per gene, with HAT's sampling, mutation and crossover."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.exceptions import SearchSpaceError
from hwnas.search_spaces._config import PER_LAYER_FIELDS, SCALAR_FIELDS, SubnetConfig

_CHOICE_FIELDS: tuple[str, ...] = (*SCALAR_FIELDS, *PER_LAYER_FIELDS)


@dataclasses.dataclass(frozen=True)
class Gene:
    """One position of the flat genome: a scalar field, or one layer of a per-layer field."""

    field: str
    layer: int | None
    choices: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Allowed values of every `SubnetConfig` field, plus the fixed SuperTransformer settings.

    `qkv_dim` is fixed, as in HAT: the head count only changes the head size, not the
    parameter count. `source_length_tokens` is the latency protocol's input length
    (30 for the WMT spaces, 23 for IWSLT).
    """

    name: str
    description: str
    qkv_dim: int
    source_length_tokens: int
    encoder_embed_dim: tuple[int, ...]
    encoder_layer_num: tuple[int, ...]
    encoder_ffn_embed_dim: tuple[int, ...]
    encoder_self_attention_heads: tuple[int, ...]
    decoder_embed_dim: tuple[int, ...]
    decoder_layer_num: tuple[int, ...]
    decoder_ffn_embed_dim: tuple[int, ...]
    decoder_self_attention_heads: tuple[int, ...]
    decoder_ende_attention_heads: tuple[int, ...]
    decoder_arbitrary_ende_attn: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in _CHOICE_FIELDS:
            raw = getattr(self, name)
            if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
                raise SearchSpaceError(f"space '{self.name}': '{name}' must be a non-empty list of integers")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in raw):
                raise SearchSpaceError(f"space '{self.name}': '{name}' has a non-positive or non-integer choice")
            object.__setattr__(self, name, tuple(sorted(set(raw))))
        heads = (*self.encoder_self_attention_heads, *self.decoder_self_attention_heads,
                 *self.decoder_ende_attention_heads)
        bad = [h for h in heads if self.qkv_dim % h]
        if bad:
            raise SearchSpaceError(f"space '{self.name}': qkv_dim {self.qkv_dim} is not divisible by {bad[0]} heads")
        if max(self.decoder_arbitrary_ende_attn) > min(self.encoder_layer_num):
            raise SearchSpaceError(
                f"space '{self.name}': arbitrary attention up to {max(self.decoder_arbitrary_ende_attn)} "
                f"encoder layers needs at least that many encoder layers in every subnet"
            )

    # -- genome ---------------------------------------------------------------------------
    def genes(self) -> list[Gene]:
        """The flat genome (HAT's 40 genes for its WMT space): scalars, then every layer slot."""
        out: list[Gene] = []
        for name in _CHOICE_FIELDS:
            choices = getattr(self, name)
            if name in PER_LAYER_FIELDS:
                layers = max(getattr(self, PER_LAYER_FIELDS[name]))
                out.extend(Gene(name, i, choices) for i in range(layers))
            else:
                out.append(Gene(name, None, choices))
        return out

    def _decode(self, values: Sequence[int]) -> SubnetConfig:
        fields: dict[str, Any] = {name: [] for name in PER_LAYER_FIELDS}
        for gene, value in zip(self.genes(), values, strict=True):
            if gene.layer is None:
                fields[gene.field] = int(value)
            else:
                fields[gene.field].append(int(value))
        return SubnetConfig(**fields)

    def _encode(self, cfg: SubnetConfig, rng: np.random.Generator) -> list[int]:
        """Genome of `cfg`; slots of inactive layers get fresh uniform draws (HAT keeps random ones)."""
        values: list[int] = []
        for gene in self.genes():
            current = getattr(cfg, gene.field)
            if gene.layer is None:
                values.append(current)
            elif gene.layer < len(current):
                values.append(current[gene.layer])
            else:
                values.append(int(rng.choice(gene.choices)))
        return values

    # -- operators ------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> SubnetConfig:
        """A subnet with every gene drawn uniformly from its choices (HAT's sampler)."""
        return self._decode([int(rng.choice(g.choices)) for g in self.genes()])

    def mutate(self, cfg: SubnetConfig, prob: float, rng: np.random.Generator) -> SubnetConfig:
        """Resample each gene uniformly with probability `prob` (HAT: 0.3)."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mutation probability must be in [0, 1], got {prob}")
        self.validate(cfg)
        values = self._encode(cfg, rng)
        genes = self.genes()
        for i, gene in enumerate(genes):
            if rng.random() < prob:
                values[i] = int(rng.choice(gene.choices))
        return self._decode(values)

    def crossover(self, a: SubnetConfig, b: SubnetConfig, rng: np.random.Generator) -> SubnetConfig:
        """Take each gene from either parent with probability 1/2."""
        self.validate(a)
        self.validate(b)
        va, vb = self._encode(a, rng), self._encode(b, rng)
        picks = rng.random(len(va)) < 0.5
        return self._decode([x if p else y for x, y, p in zip(va, vb, picks, strict=True)])

    def validate(self, cfg: SubnetConfig) -> SubnetConfig:
        """Return `cfg` if it lies in this space; otherwise name the field, value and choices."""
        for name in _CHOICE_FIELDS:
            choices = getattr(self, name)
            value = getattr(cfg, name)
            items = enumerate(value) if name in PER_LAYER_FIELDS else [(None, value)]
            for i, v in items:
                if v not in choices:
                    where = name if i is None else f"{name}[{i}]"
                    raise SearchSpaceError(
                        f"subnet field '{where}' = {v} is not in space '{self.name}' "
                        f"(allowed values: {list(choices)})"
                    )
        return cfg

    def contains(self, cfg: SubnetConfig) -> bool:
        try:
            self.validate(cfg)
        except SearchSpaceError:
            return False
        return True

    def size(self) -> int:
        """Number of distinct canonical subnets."""
        def stack(embeds: int, depths: Sequence[int], per_layer: int) -> int:
            return embeds * sum(per_layer**n for n in depths)

        enc = stack(len(self.encoder_embed_dim), self.encoder_layer_num,
                    len(self.encoder_ffn_embed_dim) * len(self.encoder_self_attention_heads))
        dec_layer = math.prod(len(getattr(self, f)) for f in PER_LAYER_FIELDS if f.startswith("decoder"))
        dec = stack(len(self.decoder_embed_dim), self.decoder_layer_num, dec_layer)
        return enc * dec

    def largest(self) -> SubnetConfig:
        return self._decode([max(g.choices) for g in self.genes()])

    def smallest(self) -> SubnetConfig:
        return self._decode([min(g.choices) for g in self.genes()])

    # -- data -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        names = {f.name for f in dataclasses.fields(cls)}
        label = data.get("name", "?") if isinstance(data, Mapping) else "?"
        if not isinstance(data, Mapping):
            raise SearchSpaceError("a search space must be a JSON object")
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data))
        if unknown or missing:
            what = f"unknown field '{unknown[0]}'" if unknown else f"missing field '{missing[0]}'"
            raise SearchSpaceError(f"space '{label}': {what}")
        return cls(**data)


def _builtin_dir() -> Any:
    return resources.files("hwnas.search_spaces").joinpath("data")


def list_spaces() -> list[str]:
    """Names of the shipped spaces."""
    return sorted(p.name.removesuffix(".json") for p in _builtin_dir().iterdir() if p.name.endswith(".json"))


def get_space(name_or_path: str | Path) -> SearchSpace:
    """A shipped space by name, or a user's space from a JSON file path."""
    text: str
    if str(name_or_path) in list_spaces():
        text = _builtin_dir().joinpath(f"{name_or_path}.json").read_text()
    else:
        path = Path(name_or_path)
        if path.suffix != ".json" or not path.is_file():
            raise SearchSpaceError(
                f"unknown search space '{name_or_path}' (shipped: {', '.join(list_spaces())}; "
                "or give a path to a .json file)"
            )
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SearchSpaceError(f"search space file '{name_or_path}' is not valid JSON: {e}") from e
    return SearchSpace.from_dict(data)
