"""The two fixed-shape graphs a latency measurement times: the encoder and one decoder step.

Compilers (TVM MetaSchedule in particular) tune fixed shapes only, so the decoder step
attends over a key/value cache of fixed length `cache_len` with a validity mask; one
sentence costs `encoder + steps x decoder_step`. The encoder graph also projects the
encoder-decoder attention keys/values of every decoder layer, which real decoding does
once per sentence.
"""

from __future__ import annotations

from typing import Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn

from hwnas.search_spaces import SubnetConfig
from hwnas.supernet import ModelConfig, SubTransformer, sinusoid


class _KeysValues(Protocol):
    # What the graph uses of a decoder layer's `encoder_attn` (an `nn.Module` attribute, typed `Tensor | Module`).
    def keys_values(self, kv: Tensor) -> tuple[Tensor, Tensor]: ...


class EncoderGraph(nn.Module):
    """src (B, S) -> per decoder layer: cross-attention keys and values (B, H, a*S, hd)."""

    def __init__(self, model: SubTransformer):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> tuple[Tensor, ...]:
        enc = self.model.encode(src)
        out: list[Tensor] = []
        for i, layer in enumerate(self.model.decoder_layers):
            a = self.model.cfg.decoder_arbitrary_ende_attn[i]
            out.extend(cast(_KeysValues, layer.encoder_attn).keys_values(torch.cat(enc.states[-a:], dim=1)))
        return tuple(out)


class DecoderStepGraph(nn.Module):
    """One greedy step with a fixed-length self-attention cache.

    Inputs: token (B, 1), position (1,) int64, cache_mask (1, 1, 1, L) bool (True = empty slot),
    then per decoder layer: self_k, self_v (B, H, L, hd), cross_k, cross_v (B, H, a*S, hd).
    Outputs: logits (B, V), then per layer the new self key and value (B, H, 1, hd).
    """

    def __init__(self, model: SubTransformer):
        super().__init__()
        self.model = model

    def forward(self, token: Tensor, position: Tensor, cache_mask: Tensor, *kv: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        x = self._embed(token, position)  # (B, 1, C)
        self_mask = torch.cat([cache_mask, torch.zeros_like(cache_mask[..., :1])], dim=-1)  # (1, 1, 1, L+1)
        new_kv: list[Tensor] = []
        for i, layer in enumerate(m.decoder_layers):
            self_k, self_v, cross_k, cross_v = kv[4 * i: 4 * i + 4]
            cache = {"self_k": self_k, "self_v": self_v, "cross_k": cross_k, "cross_v": cross_v}
            x, grown = layer(x, None, None, self_mask, cache)
            new_kv.extend((grown["self_k"][:, :, -1:], grown["self_v"][:, :, -1:]))
        # Squeeze before the projection: TVM 0.27 miscompiles matmul followed by `[:, -1]` (NaN/garbage rows).
        h = m.decoder_layer_norm(x).squeeze(1)  # (B, C)
        logits = nn.functional.linear(h, m.embed_tokens.weight[:, : m.cfg.decoder_embed_dim])  # (B, V)
        return (logits, *new_kv)

    def _embed(self, token: Tensor, position: Tensor) -> Tensor:
        d = self.model.cfg.decoder_embed_dim
        x = nn.functional.embedding(token, self.model.embed_tokens.weight[:, :d]) * d**0.5
        return x + sinusoid(position, d)[None]  # (B, 1, C)


GraphSpec = tuple[str, tuple[int, ...], str]  # (name, shape, dtype)


def input_specs(cfg: SubnetConfig, mc: ModelConfig, *, batch: int, src_len: int,
                cache_len: int) -> dict[str, list[GraphSpec]]:
    """(name, shape, dtype) of every input of the two graphs, in call order."""
    step: list[GraphSpec] = [("token", (batch, 1), "int64"), ("position", (1,), "int64"),
                        ("cache_mask", (1, 1, 1, cache_len), "bool")]
    for i in range(cfg.decoder_layer_num):
        h, eh = cfg.decoder_self_attention_heads[i], cfg.decoder_ende_attention_heads[i]
        self_kv = (batch, h, cache_len, mc.qkv_dim // h)
        cross = (batch, eh, cfg.decoder_arbitrary_ende_attn[i] * src_len, mc.qkv_dim // eh)
        step += [(f"self_k{i}", self_kv, "float32"), (f"self_v{i}", self_kv, "float32"),
                 (f"cross_k{i}", cross, "float32"), (f"cross_v{i}", cross, "float32")]
    return {"encoder": [("src", (batch, src_len), "int64")], "decoder_step": step}


def random_inputs(specs: list[GraphSpec], *, vocab_size: int, seed: int = 0) -> list[np.ndarray]:
    """Inputs for timing: valid token ids, a half-filled cache, normal keys/values."""
    rng = np.random.default_rng(seed)
    cache_len = next((shape[-1] for name, shape, _ in specs if name == "cache_mask"), 0)
    out: list[np.ndarray] = []
    for name, shape, dtype in specs:
        if name == "position":
            out.append(np.array([cache_len // 2], dtype=np.int64))
        elif name == "cache_mask":
            out.append(np.arange(cache_len).reshape(shape) >= cache_len // 2)
        elif dtype == "int64":
            out.append(rng.integers(4, vocab_size, size=shape, dtype=np.int64))
        else:
            out.append(rng.standard_normal(shape).astype(np.float32))
    return out


def example_inputs(model: SubTransformer, *, batch: int, src_len: int, cache_len: int,
                   seed: int = 0) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Torch inputs of the encoder and decoder-step graphs (for export and eager timing)."""
    specs = input_specs(model.cfg, model.mc, batch=batch, src_len=src_len, cache_len=cache_len)
    enc = tuple(torch.from_numpy(a) for a in random_inputs(specs["encoder"], vocab_size=model.mc.vocab_size,
                                                            seed=seed))
    step = tuple(torch.from_numpy(a) for a in random_inputs(specs["decoder_step"], vocab_size=model.mc.vocab_size,
                                                             seed=seed))
    return enc, step
