"""SuperTransformer training: one uniformly sampled subnet per step (HAT), optional sandwich rule.

A run is a pure function of (data, space, TrainConfig): the subnet sampler, dropout RNG and
batch order are all checkpointed, so a resumed run reaches the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tokenizers import Tokenizer

from hwnas.exceptions import CheckpointError
from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet._checkpoint import read_checkpoint, save_checkpoint
from hwnas.supernet._data import (
    DataSpec,
    EncodedCorpus,
    collate,
    encode_corpus,
    epoch_order,
    load_tokenizer,
    make_batches,
    train_tokenizer,
)
from hwnas.supernet._model import ModelConfig
from hwnas.supernet._super import SuperTransformer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; defaults fit the quickstart space on a 2-core CPU in minutes."""

    steps: int = 1200
    max_tokens: int = 2048  # padded tokens per batch
    lr: float = 2e-3  # peak, after linear warmup; then inverse square root decay
    warmup_steps: int = 200
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    weight_decay: float = 0.0
    dropout: float = 0.1
    sandwich: bool = False  # largest + smallest + one random subnet per step
    vocab_size: int = 4000
    max_len: int = 96  # training pairs longer than this (in tokens) are left out
    checkpoint_every: int = 200
    seed: int = 0

    def lr_at(self, step: int) -> float:
        """Learning rate for update `step` (1-based)."""
        if step <= self.warmup_steps:
            return self.lr * step / max(self.warmup_steps, 1)
        return self.lr * math.sqrt(self.warmup_steps / step)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    step: int
    train_loss: float  # label-smoothed, per target token, mean of the last 50 steps
    tokens_per_s: float  # target tokens processed per second, this invocation
    seconds_per_step: float
    dropped_pairs: int


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, eps: float) -> tuple[torch.Tensor, int]:
    """Sum over non-pad target tokens of the label-smoothed cross entropy, and their count."""
    ntok = int(target.ne(0).sum())
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0, label_smoothing=eps,
                           reduction="sum")
    return loss, ntok


def _step_subnets(space: SearchSpace, rng: np.random.Generator, sandwich: bool,
                  fixed: SubnetConfig | None) -> list[SubnetConfig]:
    if fixed is not None:
        return [fixed]
    cfg = space.sample(rng)
    return [space.largest(), space.smallest(), cfg] if sandwich else [cfg]


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console)


def train_supernet(
    *,
    space: SearchSpace,
    data: DataSpec,
    out: Path,
    config: TrainConfig = TrainConfig(),
    subnet: SubnetConfig | None = None,
    resume: bool = True,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train (or resume) a supernet and keep its checkpoint at `out/checkpoint.pt`.

    Args:
        subnet: train only this subnet, always (a subnet "trained alone", for comparisons).
        resume: continue from an existing checkpoint in `out` instead of starting over.
        on_step: called after every update with the step number (tests use it to interrupt).
    """
    if subnet is not None:
        space.validate(subnet)
    path = out / "checkpoint.pt"
    state: dict[str, Any] | None = read_checkpoint(path) if resume and path.exists() else None
    if state is not None and state["space"] != space.to_dict():
        trained_on = state["space"]["name"]
        raise CheckpointError(f"checkpoint '{path}' was trained on space '{trained_on}', not '{space.name}'")

    train_text = data.load("train")
    tok: Tokenizer = load_tokenizer(state["tokenizer"]) if state else train_tokenizer(train_text, config.vocab_size)
    train: EncodedCorpus = encode_corpus(tok, train_text, max_len=config.max_len)
    batches = make_batches(train, config.max_tokens)

    mc = ModelConfig(vocab_size=tok.get_vocab_size(), qkv_dim=space.qkv_dim, dropout=config.dropout,
                     attention_dropout=config.dropout)
    torch.manual_seed(config.seed)
    model = SuperTransformer(space, mc)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98), eps=1e-8,
                           weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    step, epoch, pos, history = 0, 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        step, epoch, pos, history = state["step"], state["epoch"], state["pos"], list(state["history"])

    def checkpoint() -> None:
        save_checkpoint(path, {
            "space": space.to_dict(), "model_config": dataclasses.asdict(mc),
            "train_config": dataclasses.asdict(config), "subnet": subnet.to_dict() if subnet else None,
            "tokenizer": tok.to_str(), "data": str(data), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "step": step, "epoch": epoch, "pos": pos, "history": history,
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
        })

    model.train()
    console = Console(stderr=True)
    start_step, tokens, t0 = step, 0, time.perf_counter()
    with _progress(console) as bar:
        task = bar.add_task("train supernet", total=config.steps, completed=step, info="", visible=progress)
        while step < config.steps:
            order = epoch_order(len(batches), config.seed, epoch)
            src, tgt_in, tgt_out = collate(train, batches[order[pos]])
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for cfg in _step_subnets(space, rng, config.sandwich, subnet):
                loss_sum, ntok = label_smoothed_loss(model(src, tgt_in, cfg), tgt_out, config.label_smoothing)
                (loss_sum / ntok).backward()
                step_loss, tokens = loss_sum.item() / ntok, tokens + ntok
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            step += 1
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            opt.step()
            history.append(round(step_loss, 5))
            pos += 1
            if pos == len(batches):
                epoch, pos = epoch + 1, 0
            bar.update(task, completed=step, info=f"loss {step_loss:.3f} lr {config.lr_at(step):.2e}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
            if on_step is not None:
                on_step(step)
    if state is None and step == 0:
        checkpoint()
    seconds = time.perf_counter() - t0
    done = max(step - start_step, 1)
    recent = history[-50:] or [float("nan")]
    return TrainResult(path, step, float(np.mean(recent)), tokens / seconds if seconds else 0.0,
                       seconds / done, train.dropped)
