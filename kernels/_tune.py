"""MetaSchedule tuning of a whole search space into one on-disk database per (device, space).

Every subnet of a space is made of the same per-layer operators, so two "covering" models
(one per embed-dim pairing) that hold every per-layer combination of the space contain every
workload any subnet will ever compile. Their tasks are tuned once; every subnet build then
applies the database (`compile_module(..., tuning_dir=...)`). The database is MetaSchedule's
JSON database: re-running `tune_space` adds trials to it and loses none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.exceptions import MeasurementError
from hwnas.kernels._build import DECODER_STEP, ENCODER, export_relax, make_target, prepare
from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet import ModelConfig, SubTransformer, init_weights


def covering_subnets(space: SearchSpace) -> list[SubnetConfig]:
    """Models (not subnets of the space: deeper) whose layers hold every per-layer combination.

    One per embed pairing; encoder and decoder dims vary independently, so pairing them
    round-robin covers each. Layer shapes do not depend on depth, so depth is free here.
    """
    enc_layers = list(itertools.product(space.encoder_ffn_embed_dim, space.encoder_self_attention_heads))
    dec_layers = list(itertools.product(space.decoder_ffn_embed_dim, space.decoder_self_attention_heads,
                                        space.decoder_ende_attention_heads, space.decoder_arbitrary_ende_attn))
    while len(enc_layers) < max(space.decoder_arbitrary_ende_attn):
        enc_layers.append(enc_layers[-1])  # arbitrary attention needs that many encoder states
    pairs = max(len(space.encoder_embed_dim), len(space.decoder_embed_dim))
    return [
        SubnetConfig(
            encoder_embed_dim=space.encoder_embed_dim[i % len(space.encoder_embed_dim)],
            encoder_layer_num=len(enc_layers),
            encoder_ffn_embed_dim=tuple(f for f, _ in enc_layers),
            encoder_self_attention_heads=tuple(h for _, h in enc_layers),
            decoder_embed_dim=space.decoder_embed_dim[i % len(space.decoder_embed_dim)],
            decoder_layer_num=len(dec_layers),
            decoder_ffn_embed_dim=tuple(d[0] for d in dec_layers),
            decoder_self_attention_heads=tuple(d[1] for d in dec_layers),
            decoder_ende_attention_heads=tuple(d[2] for d in dec_layers),
            decoder_arbitrary_ende_attn=tuple(d[3] for d in dec_layers),
        )
        for i in range(pairs)
    ]


@dataclasses.dataclass(frozen=True)
class TaskReport:
    name: str
    weight: float  # calls per sentence (decoder-step tasks count once per step)
    trials: int
    best_us: float | None
    gflops: float | None  # reached by the best schedule
    peak_fraction: float | None  # of the device's measured peak


@dataclasses.dataclass(frozen=True)
class TuneReport:
    work_dir: str
    tasks: list[TaskReport]
    trials: int
    seconds: float  # all of it: task extraction, tuning, the report
    tuning_s: float  # the trials alone (building and timing candidates)
    peak_gflops: float | None  # this CPU's, measured when it tuned here; None for a board or a GPU

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fast_build(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default build without importing tvm.s_tir.tensor_intrin in every worker:
    that import alone takes ~26 s here, past the builder timeout (shared/reference/tvm.md)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    if target.kind.name == "cuda":  # kernels compiled by nvcc for the target's arch, as compile_module does
        import tvm.support.nvcc  # noqa: F401 - registers the compile callback

        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


# How a candidate kernel is timed, on this machine or a board: 3 calls per run, runs repeated to 50 ms at least.
TUNING_EVALUATOR = {"number": 3, "repeat": 1, "min_repeat_ms": 50, "enable_cpu_cache_flush": False}


def rpc_tuning_runner(*, tracker_host: str, tracker_port: int, key: str, boards: int,
                      session_timeout_s: float = 120.0) -> Any:
    """MetaSchedule's RPC runner: candidates built (cross-compiled) here, timed on the boards of `key`, one
    candidate per board at a time. A session lives at most `session_timeout_s`: a candidate that hangs a board,
    or a board that vanishes, is one failed trial."""
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=tracker_host, tracker_port=tracker_port, tracker_key=key,
                                       session_timeout_sec=int(session_timeout_s)),
        evaluator_config=ms.runner.EvaluatorConfig(**TUNING_EVALUATOR), max_workers=boards)


def measured_peak_gflops(threads: int | None = None, size: int = 1024) -> float:
    """Practical FP32 peak of this CPU: a large SGEMM through numpy's BLAS, best of 5."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def extract_space_tasks(space: SearchSpace, mc: ModelConfig, target: dict[str, Any], *, decode_steps: int,
                        batch: int = 1) -> list[tuple[Any, float]]:
    """(MetaSchedule task, weight) for every distinct workload of the space."""
    import torch
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    tgt = make_target(target)
    merged: dict[int, list[Any]] = {}
    for k, cfg in enumerate(covering_subnets(space)):
        torch.manual_seed(0)
        model = SubTransformer(cfg, mc)
        init_weights(model, mc.pad_id)
        mod = export_relax(model.eval(), batch=batch, source_length_tokens=space.source_length_tokens,
                           cache_len=decode_steps)
        for fn, calls in ((ENCODER, 1), (DECODER_STEP, decode_steps)):  # apart: a step runs once per token
            single = prepare(tvm.IRModule({fn: mod[fn]}))
            for task in ms.relax_integration.extract_tasks(single, tgt):
                key = tvm_ffi.structural_hash(task.dispatched[0])
                if key in merged:
                    merged[key][1] += task.weight * calls
                else:
                    merged[key] = [task, float(task.weight * calls)]
        del model, mod
    return [(t, w) for t, w in merged.values()]


def _import_tensor_intrinsics() -> None:
    """Import TVM's tensor intrinsics from a fresh thread, before MetaSchedule imports them itself.

    Their TVMScript parser calls `inspect.stack()` for each of ~500 intrinsics, at a cost that grows with the
    caller's stack depth: measured here 17-23 s from a shallow stack, 46 s inside `hwnas quickstart`,
    4.5 min inside pytest. A new thread's stack is shallow.
    """
    def load() -> None:
        import tvm.s_tir.tensor_intrin  # noqa: F401 - imported for its side effect (registration)

    loader = threading.Thread(target=load, name="tvm-tensor-intrin")
    loader.start()
    loader.join()


TUNING_RECORDS = "database_tuning_record.json"  # MetaSchedule's JSONDatabase file: one line per trial


def count_tuning_records(work_dir: str | Path) -> int:
    """Trials in the MetaSchedule database in `work_dir` (0 when it has none yet)."""
    path = Path(work_dir) / TUNING_RECORDS
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def tune_space(*, space: SearchSpace, mc: ModelConfig, target: dict[str, Any], work_dir: str | Path, trials: int,
               decode_steps: int, num_trials_per_iter: int = 8, builder_timeout_s: float = 120.0,
               seed: int = 0, runner: Any | None = None) -> TuneReport:
    """Spend `trials` more MetaSchedule trials on the space's workloads; the database grows in `work_dir`.

    Candidates are timed by `runner` (a MetaSchedule runner, e.g. `rpc_tuning_runner` for a board), or on this
    machine when None; only then is the report's peak measured (this CPU's SGEMM).
    """
    from tvm.s_tir import meta_schedule as ms

    if target.get("kind") == "llvm" and "num-cores" not in target:  # else a TVM InternalError minutes later
        raise MeasurementError(f"cannot tune for {json.dumps(target)}: a CPU target needs 'num-cores' "
                               f"(MetaSchedule splits parallel loops by it)")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tgt = make_target(target)
    _import_tensor_intrinsics()
    t0 = time.perf_counter()
    extracted = extract_space_tasks(space, mc, target, decode_steps=decode_steps)
    database = ms.database.JSONDatabase(work_dir=str(work))
    # The scheduler's warm-up round visits tasks in order, one round of trials each, and a new run starts
    # that round again: so tasks the database has no record of come first (a resumed run goes on where the
    # last one stopped instead of re-tuning its first tasks), then heaviest first (calls x FLOPs), so a
    # small budget lands on the decoder-step matmuls that dominate latency.
    tunable = sorted(((t, w) for t, w in extracted if _has_search_space(t)),
                     key=lambda tw: (_tuned(database, tw[0]), -tw[1] * _flops(tw[0])))
    with _unnamed_handlers_detached(logging.getLogger("tvm.s_tir.meta_schedule")):
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=[t for t, _ in tunable], work_dir=str(work), seed=seed)
    builder = ms.builder.LocalBuilder(f_build=_fast_build, timeout_sec=builder_timeout_s,
                                      max_workers=max(1, (os.cpu_count() or 2) // 2))
    here = runner is None
    if runner is None:
        runner = ms.runner.LocalRunner(timeout_sec=60, evaluator_config=ms.runner.EvaluatorConfig(**TUNING_EVALUATOR))
    t_tune = time.perf_counter()
    if trials > 0:
        ms.tune_tasks(tasks=contexts, task_weights=[w for _, w in tunable], work_dir=str(work),
                      max_trials_global=trials, num_trials_per_iter=num_trials_per_iter, builder=builder,
                      runner=runner, database=database, task_scheduler="gradient")
    tuning_s = time.perf_counter() - t_tune
    # A board's or a GPU's peak is not this CPU's: their reports give GFLOP/s without a fraction of peak.
    peak = measured_peak_gflops() if here and tgt.kind.name == "llvm" else None
    with tgt:
        report = task_reports(database, extracted, peak)
    meta = {"space": space.name, "target": target, "model_config": dataclasses.asdict(mc),
            "decode_steps": decode_steps, "records": len(database)}
    (work / "hwnas-tuning.json").write_text(json.dumps(meta, indent=2))
    return TuneReport(str(work), report, sum(r.trials for r in report), time.perf_counter() - t0, tuning_s, peak)


def _flops(task: Any) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # analysis can fail on exotic blocks: count them as unknown (-1)
        return -1.0


@contextlib.contextmanager
def _unnamed_handlers_detached(logger: logging.Logger) -> Iterator[None]:
    """MetaSchedule's logger set-up re-lists the handlers of its logger by name and fails on an unnamed one
    ("'NoneType' object has no attribute 'format'"): pytest's capture handlers, after a first tuning run
    in the same process, are such. They are taken off for the set-up and put back."""
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for h in unnamed:
        logger.removeHandler(h)
    try:
        yield
    finally:
        for h in unnamed:
            logger.addHandler(h)


def _best_record(database: Any, mod: Any) -> Any | None:
    """The database's fastest measured schedule of a workload, or None (never tuned)."""
    if not database.has_workload(mod):
        return None
    top = database.get_top_k(database.commit_workload(mod), 1)
    return top[0] if top else None


def _tuned(database: Any, task: Any) -> bool:
    return _best_record(database, task.dispatched[0]) is not None


def _has_search_space(task: Any) -> bool:
    """Pure data movement (reshape, transpose) has nothing to tune; skip it like MetaSchedule's scheduler would."""
    return _flops(task) != 0


def task_reports(database: Any, extracted: list[tuple[Any, float]], peak_gflops: float | None) -> list[TaskReport]:
    """Best measured time and GFLOP/s of each task, from the database."""
    from tvm.s_tir.analysis import estimate_tir_flops

    out = []
    for task, weight in extracted:
        mod = task.dispatched[0]
        best = _best_record(database, mod)
        trials = len(database.get_top_k(database.commit_workload(mod), 100000)) if best is not None else 0
        best_us = gflops = frac = None
        if best is not None and best.run_secs:
            secs = float(np.mean([float(s) for s in best.run_secs]))
            flops = float(estimate_tir_flops(mod))
            best_us = secs * 1e6
            gflops = flops / secs / 1e9 if flops > 0 else None
            frac = gflops / peak_gflops if gflops and peak_gflops else None
        out.append(TaskReport(task.task_name, weight, trials, best_us, gflops, frac))
    return sorted(out, key=lambda r: -(r.weight * (r.best_us or 0)))
