"""SubTransformer: a plain encoder-decoder Transformer with heterogeneous layers (HAT).

It is both the standalone model that `extract_subnet` returns and the template the
SuperTransformer runs with sliced weights, so the two can never drift apart.
Pre-norm layers; the Q/K/V width `qkv_dim` is fixed and the head count only sets the head
size (as in HAT); decoder layer i attends to the concatenation, along time, of the last
`decoder_arbitrary_ende_attn[i]` encoder layers (HAT's arbitrary encoder-decoder attention).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwnas.search_spaces import SubnetConfig

Cache = list[dict[str, Tensor]]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Settings shared by the SuperTransformer and every SubTransformer cut from it."""

    vocab_size: int
    qkv_dim: int
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


class EncoderOut(NamedTuple):
    states: tuple[Tensor, ...]  # one (B, S, C) per encoder layer, final-normed
    pad_mask: Tensor  # (B, S), True at padding


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal position encodings for integer positions (...,) -> (..., dim)."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float32)
                     * (-math.log(10000.0) / max(half - 1, 1)))
    angles = positions.to(torch.float32).unsqueeze(-1) * freq  # (..., half)
    enc = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return F.pad(enc, (0, dim - 2 * half))


class Attention(nn.Module):
    def __init__(self, embed_dim: int, kv_dim: int, qkv_dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q_proj = nn.Linear(embed_dim, qkv_dim)
        self.k_proj = nn.Linear(kv_dim, qkv_dim)
        self.v_proj = nn.Linear(kv_dim, qkv_dim)
        self.out_proj = nn.Linear(qkv_dim, embed_dim)

    def split(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, -1).transpose(1, 2)  # (B, H, T, hd)

    def keys_values(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        return self.split(self.k_proj(kv)), self.split(self.v_proj(kv))  # 2 x (B, H, S, hd)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        q = self.split(self.q_proj(x))  # (B, H, T, hd)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
        if mask is not None:  # mask: True where attention is NOT allowed
            att = att.masked_fill(mask, torch.finfo(att.dtype).min)
        att = F.dropout(att.softmax(dim=-1), self.dropout, self.training)
        y = (att @ v).transpose(1, 2).flatten(2)  # (B, T, qkv)
        return self.out_proj(y)


class FeedForward(nn.Module):
    def __init__(self, embed_dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2, self.dropout = nn.Linear(embed_dim, ffn_dim), nn.Linear(ffn_dim, embed_dim), dropout

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(x)), self.dropout, self.training))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, ffn: int, heads: int, mc: ModelConfig):
        super().__init__()
        self.dropout = mc.dropout
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn = Attention(d, d, mc.qkv_dim, heads, mc.attention_dropout)
        self.final_layer_norm = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn, mc.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.self_attn_layer_norm(x)  # (B, S, C)
        x = x + F.dropout(self.self_attn(h, *self.self_attn.keys_values(h), mask), self.dropout, self.training)
        return x + F.dropout(self.ffn(self.final_layer_norm(x)), self.dropout, self.training)


class DecoderLayer(nn.Module):
    def __init__(self, d: int, enc_d: int, ffn: int, heads: int, ende_heads: int, mc: ModelConfig):
        super().__init__()
        self.dropout = mc.dropout
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn = Attention(d, d, mc.qkv_dim, heads, mc.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = Attention(d, enc_d, mc.qkv_dim, ende_heads, mc.attention_dropout)
        self.final_layer_norm = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn, mc.dropout)

    def forward(self, x: Tensor, enc_kv: Tensor | None, enc_mask: Tensor | None, self_mask: Tensor | None,
                cache: dict[str, Tensor] | None) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.self_attn_layer_norm(x)  # (B, T, C)
        k, v = self.self_attn.keys_values(h)
        if cache is not None and "self_k" in cache:  # incremental: append this step's keys/values
            k, v = torch.cat([cache["self_k"], k], dim=2), torch.cat([cache["self_v"], v], dim=2)
        x = x + F.dropout(self.self_attn(h, k, v, self_mask), self.dropout, self.training)
        if cache is not None and "cross_k" in cache:
            ck, cv = cache["cross_k"], cache["cross_v"]
        elif enc_kv is not None:
            ck, cv = self.encoder_attn.keys_values(enc_kv)  # (B, H, a*S, hd)
        else:
            raise ValueError("decoder layer needs encoder states or cached encoder keys/values")
        x = x + F.dropout(self.encoder_attn(self.encoder_attn_layer_norm(x), ck, cv, enc_mask),
                          self.dropout, self.training)
        x = x + F.dropout(self.ffn(self.final_layer_norm(x)), self.dropout, self.training)
        return x, {"self_k": k, "self_v": v, "cross_k": ck, "cross_v": cv}


class SubTransformer(nn.Module):
    """Standalone model of one subnet; shared source/target embedding tied to the output layer."""

    def __init__(self, cfg: SubnetConfig, mc: ModelConfig):
        super().__init__()
        self.cfg, self.mc = cfg, mc
        enc_d, dec_d = cfg.encoder_embed_dim, cfg.decoder_embed_dim
        self.embed_tokens = nn.Embedding(mc.vocab_size, max(enc_d, dec_d))
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(enc_d, f, h, mc)
            for f, h in zip(cfg.encoder_ffn_embed_dim, cfg.encoder_self_attention_heads, strict=True))
        self.encoder_layer_norm = nn.LayerNorm(enc_d)
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(dec_d, enc_d, f, h, eh, mc)
            for f, h, eh in zip(cfg.decoder_ffn_embed_dim, cfg.decoder_self_attention_heads,
                                cfg.decoder_ende_attention_heads, strict=True))
        self.decoder_layer_norm = nn.LayerNorm(dec_d)

    def embed(self, tokens: Tensor, dim: int, start: int = 0) -> Tensor:
        x = F.embedding(tokens, self.embed_tokens.weight[:, :dim]) * math.sqrt(dim)  # (B, T, C)
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        return F.dropout(x + sinusoid(pos, dim), self.mc.dropout, self.training)

    def encode(self, src: Tensor) -> EncoderOut:
        pad = src.eq(self.mc.pad_id)  # (B, S)
        x = self.embed(src, self.cfg.encoder_embed_dim)
        mask = pad[:, None, None, :]  # (B, 1, 1, S)
        states = []
        for layer in self.encoder_layers:
            x = layer(x, mask)
            states.append(self.encoder_layer_norm(x))
        return EncoderOut(tuple(states), pad)

    def _decode(self, tgt: Tensor, enc: EncoderOut, cache: Cache | None, start: int) -> tuple[Tensor, Cache]:
        x = self.embed(tgt, self.cfg.decoder_embed_dim, start)  # (B, T, C)
        T = tgt.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt.device).triu(1) if T > 1 else None
        new_cache: Cache = []
        for i, layer in enumerate(self.decoder_layers):
            a = self.cfg.decoder_arbitrary_ende_attn[i]
            enc_kv = torch.cat(enc.states[-a:], dim=1)  # (B, a*S, C_enc)
            enc_mask = enc.pad_mask.repeat(1, a)[:, None, None, :]  # (B, 1, 1, a*S)
            x, layer_cache = layer(x, enc_kv, enc_mask, causal, cache[i] if cache else None)
            new_cache.append(layer_cache)
        x = self.decoder_layer_norm(x)
        return F.linear(x, self.embed_tokens.weight[:, : self.cfg.decoder_embed_dim]), new_cache  # (B, T, V)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits: src (B, S), tgt_in (B, T) -> (B, T, V)."""
        return self._decode(tgt_in, self.encode(src), None, 0)[0]

    def decode_step(self, prev: Tensor, enc: EncoderOut, cache: Cache | None) -> tuple[Tensor, Cache]:
        """One incremental step: prev (B, 1) -> logits (B, V), with the key/value cache grown by one."""
        start = cache[0]["self_k"].shape[2] if cache else 0
        logits, cache = self._decode(prev, enc, cache, start)
        return logits[:, -1], cache


def init_weights(model: nn.Module, pad_id: int) -> None:
    """Xavier for projections, scaled normal for the shared embedding (pad row zero)."""
    for name, p in model.named_parameters():
        if name == "embed_tokens.weight":
            nn.init.normal_(p, mean=0.0, std=p.shape[1] ** -0.5)
            with torch.no_grad():
                p[pad_id].zero_()
        elif p.dim() == 2:
            nn.init.xavier_uniform_(p)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
        else:
            nn.init.ones_(p)  # LayerNorm gains


def count_params(cfg: SubnetConfig, mc: ModelConfig, *, embeddings: bool = True) -> int:
    """Parameters of the standalone subnet (HAT reports them without the embedding table)."""
    with torch.device("meta"):
        model = SubTransformer(cfg, mc)
    return sum(p.numel() for n, p in model.named_parameters() if embeddings or n != "embed_tokens.weight")



def count_flops(cfg: SubnetConfig, mc: ModelConfig, *, source_len: int = 30, target_len: int = 30) -> int:
    """FLOPs (2 x multiply-adds of every matmul) of one teacher-forced sentence, output projection included.

    Written out rather than traced: tracing costs ~0.2 s a subnet, too slow for thousands of
    search candidates (a test checks this formula against torch's FlopCounterMode).
    """
    S, T, q = source_len, target_len, mc.qkv_dim
    d, D = cfg.encoder_embed_dim, cfg.decoder_embed_dim
    macs = sum(4 * S * d * q + 2 * S * S * q + 2 * S * d * f for f in cfg.encoder_ffn_embed_dim)
    for f, a in zip(cfg.decoder_ffn_embed_dim, cfg.decoder_arbitrary_ende_attn, strict=True):
        self_attn = 4 * T * D * q + 2 * T * T * q
        cross_attn = 2 * T * D * q + 2 * a * S * d * q + 2 * T * a * S * q
        macs += self_attn + cross_attn + 2 * T * D * f
    macs += T * D * mc.vocab_size
    return 2 * macs
