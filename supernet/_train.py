"""Training: the SuperTransformer (one uniformly sampled subnet per update, HAT; optionally the sandwich rule)
and standalone SubTransformers (a found subnet retrained from scratch or fine-tuned from inherited weights).

One loop serves one process and every rank of a data-parallel run (`_distributed.py`). A run is a pure
function of (data, space, TrainConfig, workers): the subnet of update `u` and each rank's dropout come from
(seed, u[, rank]), the batch order from (seed, epoch), so a resumed run reaches the same weights as an
uninterrupted one. The loss is summed over target tokens and the gradient divided by the update's token
count over all batches and ranks (fairseq's normalisation), so `workers` x `update_freq` batches give one
update whatever their split: 2 workers equal 1 worker with update_freq 2.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tokenizers import Tokenizer
from torch import nn

from hwnas.exceptions import CheckpointError, TrainingError
from hwnas.io import atomic_write
from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet._checkpoint import load_supernet, read_checkpoint, save_checkpoint
from hwnas.supernet._data import (
    DataSpec,
    TokenPairs,
    collate,
    encode_corpus,
    epoch_order,
    load_tokenizer,
    make_batches,
    train_tokenizer,
)
from hwnas.supernet._model import ModelConfig, SubTransformer, init_weights
from hwnas.supernet._prepared import PreparedData
from hwnas.supernet._super import SuperTransformer

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("inverse_sqrt", "cosine")
DEVICES = ("auto", "cpu", "cuda")
LOOP_VERSION = 2  # checkpoints of earlier loops (stateful sampler) evaluate fine but cannot be resumed
# may differ between a checkpoint and the run that resumes it; everything else must match
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; defaults fit the quickstart space on a 2-core CPU in minutes.

    `max_tokens` and `update_freq` are per worker: an update sees workers x update_freq batches.
    """

    steps: int = 1200  # updates
    max_tokens: int = 2048  # padded tokens per batch
    update_freq: int = 1  # batches accumulated per update (fairseq's --update-freq)
    lr: float = 2e-3  # peak, reached after warmup
    schedule: str = "inverse_sqrt"  # after warmup: lr * sqrt(warmup / step), or cosine down to min_lr
    warmup_steps: int = 200  # linear from warmup_init_lr to lr
    warmup_init_lr: float = 0.0
    min_lr: float = 0.0  # the cosine schedule's floor
    clip_norm: float = 1.0  # 0: no clipping (HAT's recipes)
    label_smoothing: float = 0.1
    weight_decay: float = 0.0
    dropout: float = 0.1
    attention_dropout: float | None = None  # None: the same as dropout
    sandwich: bool = False  # largest + smallest + one random subnet per update
    vocab_size: int = 4000  # of the tokenizer trained at the start (a prepared data set brings its own)
    max_len: int = 96  # training pairs longer than this (in tokens) are left out
    checkpoint_every: int = 200
    keep_checkpoints: int = 0  # also keep the weights of the last K checkpoints (for averaging)
    precision: str = "fp32"  # autocast dtype of forward and backward; weights and optimizer stay fp32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"unknown schedule '{self.schedule}' (known: {', '.join(SCHEDULES)})")
        if self.precision not in PRECISIONS:
            raise TrainingError(f"unknown precision '{self.precision}' (known: {', '.join(PRECISIONS)})")
        for name in ("steps", "max_tokens", "update_freq", "checkpoint_every", "vocab_size", "max_len"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "warmup_steps", "warmup_init_lr", "min_lr", "clip_norm", "weight_decay",
                     "keep_checkpoints"):
            if not getattr(self, name) >= 0:  # NaN fails too
                raise TrainingError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("label_smoothing", "dropout", "attention_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise TrainingError(f"{name} must be in [0, 1), got {value}")

    def lr_at(self, step: int) -> float:
        """Learning rate for update `step` (1-based)."""
        if step <= self.warmup_steps:
            return self.warmup_init_lr + (self.lr - self.warmup_init_lr) * step / max(self.warmup_steps, 1)
        if self.schedule == "cosine":  # fairseq's cosine, one period over the updates after warmup
            t = min((step - self.warmup_steps) / max(self.steps - self.warmup_steps, 1), 1.0)
            return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))
        return self.lr * math.sqrt(max(self.warmup_steps, 1) / step)

    @property
    def attention_dropout_value(self) -> float:
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    step: int
    train_loss: float  # label-smoothed, per target token, mean of the last 50 updates
    tokens_per_s: float  # target tokens processed per second over all workers, this invocation
    seconds_per_step: float
    dropped_pairs: int
    workers: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    sync_s_per_step: float = 0.0  # rank 0's wait in the gradient all-reduce (communication + slower ranks)


@dataclasses.dataclass(frozen=True)
class TrainTask:
    """One training run as every rank needs it; plain data, so Ray Train can ship it to its workers.

    kind "supernet": the SuperTransformer of `space` (only `subnet` when it is given, HAT's way of training
    one subnet alone). kind "subtransformer": a standalone model of `subnet`, from scratch or, with
    `init_from`, from the weights it inherits in that supernet checkpoint.
    """

    kind: str
    space: dict[str, Any]
    data: str
    out: str
    config: TrainConfig
    tokenizer: str  # JSON, fixed by the driver so every rank encodes alike
    subnet: dict[str, Any] | None = None
    init_from: str | None = None
    workers: int = 1

    @property
    def checkpoint(self) -> Path:
        return Path(self.out) / "checkpoint.pt"


@dataclasses.dataclass(frozen=True)
class Rank:
    """Where this copy of the loop runs: rank, world size, torch device. world > 1 needs torch.distributed."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    def all_reduce(self, tensor: torch.Tensor) -> None:
        if self.world > 1:
            torch.distributed.all_reduce(tensor)


OnUpdate = Callable[[int, float, float], None]  # (step, loss, lr) after each update, on rank 0


def resolve_device(device: str) -> str:
    """'auto' is CUDA when torch sees a GPU; asking for CUDA without one is an error, not a CPU run."""
    if device not in DEVICES:
        raise TrainingError(f"unknown device '{device}' (known: {', '.join(DEVICES)})")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: torch sees no CUDA device here (this torch build or machine has none)")
    return device


def check_precision(precision: str, device: str) -> None:
    if precision == "fp16" and device != "cuda":
        raise TrainingError("fp16 training needs a CUDA device (its loss scaling is CUDA's); use bf16 on CPU, or "
                            "give data-parallel workers GPUs (--gpus-per-worker)")


def precision_context(precision: str, device: str | torch.device) -> AbstractContextManager[Any]:
    """Autocast to `precision`'s dtype on `device` (training and scoring alike); fp32 runs as it is."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype else nullcontext()


def label_smoothed_loss(logits: torch.Tensor, target: torch.Tensor, eps: float) -> tuple[torch.Tensor, int]:
    """Sum over non-pad target tokens of the label-smoothed cross entropy, and their count."""
    ntok = int(target.ne(0).sum())
    loss = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=0, label_smoothing=eps,
                           reduction="sum")
    return loss, ntok


def step_subnets(space: SearchSpace, seed: int, step: int, sandwich: bool,
                 fixed: SubnetConfig | None) -> list[SubnetConfig]:
    """The subnets trained at update `step` (0-based): a function of (seed, step), the same on every rank."""
    if fixed is not None:
        return [fixed]
    cfg = space.sample(np.random.default_rng([seed, step]))
    return [space.largest(), space.smallest(), cfg] if sandwich else [cfg]


def _dropout_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console)


def open_train_data(spec: DataSpec, tok: Tokenizer) -> TokenPairs:
    """The training split as token ids: memory-mapped when prepared, else encoded here."""
    if spec.kind == "prepared":
        return PreparedData.open(spec.directory or ".").split("train")
    return encode_corpus(tok, spec.load("train"))


def check_resumable(state: dict[str, Any], task: TrainTask, space: SearchSpace) -> None:
    """A checkpoint resumes only the run it belongs to; name what differs instead of mixing two runs."""
    path = task.checkpoint
    if state.get("loop") != LOOP_VERSION:
        raise CheckpointError(f"checkpoint '{path}' was written by an earlier hwnas training loop: it evaluates and "
                              f"searches as before but cannot be resumed (train anew in another --out)")
    if state["space"] != space.to_dict():
        raise CheckpointError(f"checkpoint '{path}' was trained on space '{state['space']['name']}', "
                              f"not '{space.name}'")
    if state.get("kind") != task.kind:
        raise CheckpointError(f"checkpoint '{path}' holds a {state.get('kind')} run, not a {task.kind} run")
    if state["data"] != task.data:
        raise CheckpointError(f"checkpoint '{path}' was trained on '{state['data']}', not '{task.data}'")
    if state.get("workers", 1) != task.workers:
        raise CheckpointError(f"checkpoint '{path}' was trained with {state.get('workers', 1)} worker(s); resume it "
                              f"with --workers {state.get('workers', 1)} (or train anew in another --out)")
    if state["subnet"] != task.subnet or state.get("init_from") != task.init_from:
        raise CheckpointError(f"checkpoint '{path}' trains another subnet or initialisation than asked")
    theirs, ours = state["train_config"], task.config.to_dict()
    changed = sorted(k for k in ours if k not in _RESUMABLE_CHANGES and theirs.get(k) != ours[k])
    if changed:
        diffs = ", ".join(f"{k} {theirs.get(k)!r} -> {ours[k]!r}" for k in changed)
        raise CheckpointError(f"checkpoint '{path}' was trained with other settings ({diffs}); resume with the "
                              f"same ones, or train anew in another --out")


def build_model(task: TrainTask, space: SearchSpace, mc: ModelConfig) -> nn.Module:
    """The model a task trains, initialised from `task.config.seed` (identical on every rank)."""
    torch.manual_seed(task.config.seed)
    if task.kind == "supernet":
        return SuperTransformer(space, mc)
    assert task.subnet is not None
    cfg = space.validate(SubnetConfig.from_dict(task.subnet))
    if task.init_from is None:
        model = SubTransformer(cfg, mc)
        init_weights(model, mc.pad_id)
        return model
    inherited = load_supernet(task.init_from).model.extract_subnet(cfg)  # weights as the search scored them
    model = SubTransformer(cfg, mc)  # this run's dropout
    model.load_state_dict(inherited.state_dict())
    return model


def run_task(task: TrainTask, where: Rank = Rank(), *, on_update: OnUpdate | None = None,
             on_step: Callable[[int], None] | None = None, resume: bool = True) -> TrainResult:
    """Train `task` on this rank until `task.config.steps`; rank 0 writes the checkpoints (atomically)."""
    cfg, device = task.config, torch.device(where.device)
    space = SearchSpace.from_dict(task.space)
    fixed = SubnetConfig.from_dict(task.subnet) if task.kind == "supernet" and task.subnet else None
    state = read_checkpoint(task.checkpoint) if resume and task.checkpoint.exists() else None
    if state is not None:
        check_resumable(state, task, space)

    tok = load_tokenizer(task.tokenizer)
    train = open_train_data(DataSpec.parse(task.data), tok)
    batches = make_batches(train, cfg.max_tokens, max_len=cfg.max_len)
    if not batches:
        raise TrainingError(f"no training pair of '{task.data}' is at most max_len={cfg.max_len} tokens long")
    dropped = len(train.lengths()[0]) - sum(len(b) for b in batches)
    mc = ModelConfig(vocab_size=tok.get_vocab_size(), qkv_dim=space.qkv_dim, dropout=cfg.dropout,
                     attention_dropout=cfg.attention_dropout_value)
    model = build_model(task, space, mc).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    step, epoch, pos, history = 0, 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, pos, history = state["step"], state["epoch"], state["pos"], list(state["history"])

    def checkpoint() -> None:
        if where.rank != 0:
            return
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_checkpoint(task.checkpoint, {
            "loop": LOOP_VERSION, "kind": task.kind, "space": space.to_dict(), "model_config": dataclasses.asdict(mc),
            "train_config": cfg.to_dict(), "subnet": task.subnet, "init_from": task.init_from,
            "tokenizer": task.tokenizer, "data": task.data, "workers": task.workers, "model": weights,
            "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "step": step, "epoch": epoch, "pos": pos, "history": history,
        })
        if cfg.keep_checkpoints:
            out = Path(task.out)
            atomic_write(out / f"weights-{step:07d}.pt", lambda tmp: torch.save(weights, tmp))
            for old in sorted(out.glob("weights-*.pt"))[:-cfg.keep_checkpoints]:
                old.unlink()

    def forward(src: torch.Tensor, tgt_in: torch.Tensor, sub: SubnetConfig | None) -> torch.Tensor:
        with precision_context(cfg.precision, device):
            return model(src, tgt_in, sub) if task.kind == "supernet" else model(src, tgt_in)

    model.train()
    per_update = cfg.update_freq * where.world
    if where.world > 1:  # ranks finish loading at different times: start the clock together
        torch.distributed.barrier()
    start_step, tokens, t0, sync_s = step, 0.0, time.perf_counter(), 0.0
    while step < cfg.steps:
        torch.manual_seed(_dropout_seed(cfg.seed, step, where.rank))
        subnets: list[SubnetConfig | None] = (
            list(step_subnets(space, cfg.seed, step, cfg.sandwich, fixed)) if task.kind == "supernet" else [None])
        # this update's batches over all ranks: positions cursor .. cursor + per_update, rank r takes r, r + world..
        positions, e, p = [], epoch, pos
        for _ in range(per_update):
            positions.append((e, p))
            e, p = (e + 1, 0) if p + 1 == len(batches) else (e, p + 1)
        opt.zero_grad(set_to_none=True)
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # target tokens, loss sum of the last subnet
        for e_, p_ in positions[where.rank::where.world]:
            src, tgt_in, tgt_out = (t.to(device) for t in collate(train, batches[epoch_order(len(batches),
                                                                                         cfg.seed, e_)[p_]]))
            for j, sub in enumerate(subnets):
                loss_sum, ntok = label_smoothed_loss(forward(src, tgt_in, sub), tgt_out, cfg.label_smoothing)
                scaler.scale(loss_sum).backward()
                if j == len(subnets) - 1:
                    sums[1] += loss_sum.detach()
            sums[0] += ntok
        grads = [q.grad for q in params if q.grad is not None]
        t_sync = time.perf_counter()
        if where.world > 1:  # one flat all-reduce (fairseq's no_c10d way): DDP would need unused-parameter scans
            flat = torch._utils._flatten_dense_tensors(grads)
            where.all_reduce(flat)
            for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
                g.copy_(reduced)
        where.all_reduce(sums)
        ntok_total = float(sums[0])
        sync_s += time.perf_counter() - t_sync
        for g in grads:
            g.div_(ntok_total)
        scaler.unscale_(opt)
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        step += 1
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        scaler.step(opt)
        scaler.update()
        loss = float(sums[1]) / ntok_total
        history.append(round(loss, 5))
        epoch, pos = e, p
        tokens += ntok_total * len(subnets)
        if on_update is not None and where.rank == 0:
            on_update(step, loss, cfg.lr_at(step))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
        if on_step is not None:
            on_step(step)
    if state is None and step == 0:
        checkpoint()
    seconds = time.perf_counter() - t0
    done = max(step - start_step, 1)
    recent = history[-50:] or [float("nan")]
    return TrainResult(task.checkpoint, step, float(np.mean(recent)), tokens / seconds if seconds else 0.0,
                       seconds / done, dropped, task.workers, where.device, cfg.precision, sync_s / done)


def write_result(path: Path, result: TrainResult) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(
        {**dataclasses.asdict(result), "checkpoint": str(result.checkpoint)})))


def read_result(path: Path) -> TrainResult:
    data = json.loads(path.read_text())
    return TrainResult(**{**data, "checkpoint": Path(data["checkpoint"])})


def task_tokenizer(spec: DataSpec, out: Path, vocab_size: int, *, resume: bool) -> str:
    """The tokenizer of a run: the checkpoint's when resuming, a prepared data set's, else trained now."""
    path = out / "checkpoint.pt"
    if resume and path.exists():
        return str(read_checkpoint(path)["tokenizer"])
    if spec.kind == "prepared":
        return PreparedData.open(spec.directory or ".", verify=False).tokenizer_json  # run_task verifies
    return str(train_tokenizer(spec.load("train"), vocab_size).to_str())


def run_here(task: TrainTask, *, device: str, resume: bool, progress: bool,
             on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Run a task in this process, with a progress bar."""
    console = Console(stderr=True)
    with _progress(console) as bar:
        label = "train supernet" if task.kind == "supernet" else "train subnet"
        bar_task = bar.add_task(label, total=task.config.steps, completed=0, info="", visible=progress)

        def on_update(step: int, loss: float, lr: float) -> None:
            bar.update(bar_task, completed=step, info=f"loss {loss:.3f} lr {lr:.2e}")

        return run_task(task, Rank(0, 1, device), on_update=on_update, on_step=on_step, resume=resume)


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
    device: str = "cpu",
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    address: str | None = None,
) -> TrainResult:
    """Train (or resume) a supernet and keep its checkpoint at `out/checkpoint.pt`.

    Args:
        subnet: train only this subnet, always (a subnet "trained alone", for comparisons).
        resume: continue from an existing checkpoint in `out` instead of starting over.
        on_step: called after every update with the step number (tests use it to interrupt; one process only).
        device: 'cpu', 'cuda' or 'auto' for one process; data-parallel workers take what Ray gives them.
        workers: > 1 trains data-parallel on Ray Train (gloo on CPUs, NCCL on GPUs), each worker with
            `gpus_per_worker` GPUs and `cpus_per_worker` CPUs, on the cluster at `address` or a local Ray.
    """
    if subnet is not None:
        space.validate(subnet)
    if workers < 1:
        raise TrainingError(f"workers must be at least 1, got {workers}")
    task = TrainTask("supernet", space.to_dict(), str(data), str(out), config,
                     task_tokenizer(data, out, config.vocab_size, resume=resume),
                     subnet.to_dict() if subnet else None, workers=workers)
    return run(task, device=device, resume=resume, progress=progress, on_step=on_step,
               gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, address=address)


def run(task: TrainTask, *, device: str = "cpu", resume: bool = True, progress: bool = True,
        on_step: Callable[[int], None] | None = None, gpus_per_worker: float = 0.0,
        cpus_per_worker: float | None = None, address: str | None = None) -> TrainResult:
    """Run a task here (one worker) or data-parallel on Ray Train."""
    if resume and task.checkpoint.exists():  # refuse a mismatched resume before any worker starts
        check_resumable(read_checkpoint(task.checkpoint), task, SearchSpace.from_dict(task.space))
    if task.workers == 1 and not gpus_per_worker and address is None:
        dev = resolve_device(device)
        check_precision(task.config.precision, dev)
        return run_here(task, device=dev, resume=resume, progress=progress, on_step=on_step)
    from hwnas.supernet._distributed import run_distributed  # imports this module: a cycle at the top

    return run_distributed(task, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                           address=address, progress=progress)
