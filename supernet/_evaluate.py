"""Validation loss and BLEU (sacrebleu) of any subnet, with inherited or its own weights."""

from __future__ import annotations

import dataclasses

import sacrebleu
import torch
from tokenizers import Tokenizer
from torch import nn

from hwnas.search_spaces import SubnetConfig
from hwnas.supernet._checkpoint import LoadedSupernet
from hwnas.supernet._data import ParallelCorpus, collate, encode_corpus, make_batches
from hwnas.supernet._generate import Decodable, beam_search, greedy_decode
from hwnas.supernet._model import count_params


@dataclasses.dataclass(frozen=True)
class EvalResult:
    subnet: SubnetConfig
    split: str
    sentences: int
    valid_loss: float  # mean NLL per target token (nats), no label smoothing
    bleu: float | None  # sacreBLEU on detokenized output; None when not asked for
    params: int  # standalone subnet, embeddings included
    params_no_embed: int  # HAT's convention (no embedding table)


@torch.no_grad()
def corpus_loss(model: nn.Module | Decodable, tok: Tokenizer, corpus: ParallelCorpus, *,
                max_tokens: int = 4096, device: str | torch.device = "cpu") -> float:
    """Mean per-token NLL of `corpus` under a model called as `model(src, tgt_in)` (on `device`)."""
    data = encode_corpus(tok, corpus)
    total, count = 0.0, 0
    for idx in make_batches(data, max_tokens):
        src, tgt_in, tgt_out = (t.to(device) for t in collate(data, idx))
        logits = model(src, tgt_in)  # type: ignore[operator]
        total += float(torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=0, reduction="sum"))
        count += int(tgt_out.ne(0).sum())
    return total / count


@torch.no_grad()
def translate(model: Decodable, tok: Tokenizer, sentences: list[str], *, beam: int = 4,
              batch_size: int = 32, device: str | torch.device = "cpu") -> list[str]:
    """Detokenized translations, in input order (beam 1 = greedy)."""
    eos = 2
    encoded = [e.ids + [eos] for e in tok.encode_batch(sentences)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        src = torch.tensor([encoded[i] + [0] * (width - len(encoded[i])) for i in chunk], device=device)
        hyps = greedy_decode(model, src) if beam == 1 else beam_search(model, src, beam=beam)
        out.update({i: tok.decode(h) for i, h in zip(chunk, hyps, strict=True)})
    return [out[i] for i in range(len(sentences))]


def bleu(hypotheses: list[str], references: list[str]) -> float:
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def evaluate_subnet(supernet: LoadedSupernet, cfg: SubnetConfig, corpus: ParallelCorpus, *,
                    with_bleu: bool = True, beam: int = 4) -> EvalResult:
    """Valid loss (and BLEU) of subnet `cfg` with weights inherited from the supernet."""
    model = supernet.model.eval()
    view = model.subnet(cfg)
    loss = corpus_loss(view, supernet.tokenizer, corpus)
    score = None
    if with_bleu:
        hyps = translate(view, supernet.tokenizer, list(corpus.source), beam=beam)
        score = bleu(hyps, list(corpus.target))
    split = corpus.name.rsplit(":", 1)[-1]
    return EvalResult(cfg, split, len(corpus), loss, score, count_params(cfg, model.mc),
                      count_params(cfg, model.mc, embeddings=False))
