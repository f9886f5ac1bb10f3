"""Autoregressive decoding with a key/value cache: greedy and beam search.

Works with any model object offering `encode(src)` and `decode_step(prev, enc, cache)`:
a standalone `SubTransformer` or a `SubnetView` of the supernet.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from hwnas.supernet._model import Cache, EncoderOut

PAD, BOS, EOS = 0, 1, 2


class Decodable(Protocol):
    def encode(self, src: Tensor) -> EncoderOut: ...

    def decode_step(self, prev: Tensor, enc: EncoderOut, cache: Cache | None) -> tuple[Tensor, Cache]: ...


def _select(obj: Any, index: Tensor) -> Any:
    """Index the batch dimension of every tensor in a nested cache / encoder output."""
    if isinstance(obj, Tensor):
        return obj.index_select(0, index)
    if isinstance(obj, EncoderOut):
        return EncoderOut(tuple(_select(s, index) for s in obj.states), _select(obj.pad_mask, index))
    if isinstance(obj, dict):
        return {k: _select(v, index) for k, v in obj.items()}
    return [_select(v, index) for v in obj]


def _max_len(src: Tensor, max_len_a: float, max_len_b: int) -> int:
    return int(max_len_a * src.shape[1] + max_len_b)


@torch.no_grad()
def greedy_decode(model: Decodable, src: Tensor, *, max_len_a: float = 1.5, max_len_b: int = 10) -> list[list[int]]:
    """Token ids (without specials, at most max_len_a * S + max_len_b) of each row's greedy translation."""
    enc = model.encode(src)
    B = src.shape[0]
    prev = torch.full((B, 1), BOS, dtype=torch.long, device=src.device)
    out: list[list[int]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    cache: Cache | None = None
    for _ in range(_max_len(src, max_len_a, max_len_b)):
        logits, cache = model.decode_step(prev, enc, cache)  # (B, V)
        logits[:, PAD] = float("-inf")
        nxt = logits.argmax(-1)  # (B,)
        for b in torch.nonzero(~done).flatten().tolist():
            if nxt[b] != EOS:
                out[b].append(int(nxt[b]))
        done |= nxt.eq(EOS)
        if bool(done.all()):
            break
        prev = nxt[:, None]
    return out


@torch.no_grad()
def beam_search(model: Decodable, src: Tensor, *, beam: int = 4, lenpen: float = 0.6,
                max_len_a: float = 1.5, max_len_b: int = 10) -> list[list[int]]:
    """Best hypothesis per source row by beam search; score = sum log p / length**lenpen."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    B, dev = src.shape[0], src.device
    enc = _select(model.encode(src), torch.arange(B, device=dev).repeat_interleave(beam))  # (B*K, ...)
    scores = torch.full((B, beam), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: keep only one alive at step 0
    tokens = torch.full((B * beam, 1), BOS, dtype=torch.long, device=dev)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    cache: Cache | None = None
    max_len = _max_len(src, max_len_a, max_len_b)
    for step in range(max_len + 1):  # at most max_len tokens, then </s>
        logits, cache = model.decode_step(tokens[:, -1:], enc, cache)
        logp = logits.float().log_softmax(-1)  # (B*K, V)
        logp[:, PAD] = float("-inf")
        if step == max_len:  # force an end
            logp[:, :EOS] = float("-inf")
            logp[:, EOS + 1:] = float("-inf")
        V = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(B, beam * V)
        top_scores, top_idx = cand.topk(2 * beam, dim=-1)  # (B, 2K)
        new_scores = torch.full((B, beam), float("-inf"), device=dev)
        src_rows = torch.zeros(B, beam, dtype=torch.long, device=dev)
        new_tok = torch.full((B, beam), EOS, dtype=torch.long, device=dev)
        for b in range(B):
            kept = 0
            for s, idx in zip(top_scores[b].tolist(), top_idx[b].tolist(), strict=True):
                if s == float("-inf") or kept == beam:
                    break
                k, tok = divmod(idx, V)
                if tok == EOS:
                    if len(finished[b]) < beam:
                        hyp = tokens[b * beam + k, 1:].tolist()
                        finished[b].append((s / (len(hyp) + 1) ** lenpen, hyp))
                    continue
                new_scores[b, kept], src_rows[b, kept], new_tok[b, kept] = s, b * beam + k, tok
                kept += 1
            if len(finished[b]) >= beam:
                new_scores[b] = float("-inf")  # this sentence is done
        if all(len(f) >= beam for f in finished) or bool(torch.isinf(new_scores).all()):
            break
        rows = src_rows.view(-1)
        cache = _select(cache, rows)
        tokens = torch.cat([tokens.index_select(0, rows), new_tok.view(-1, 1)], dim=1)
        scores = new_scores
    return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]
