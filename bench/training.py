"""Benchmark: training throughput, side by side in one run on this machine.

1. Data-parallel scaling on Ray Train: target tokens/s of the quickstart SuperTransformer (Bible De-En) with
   1 and 2 workers of 1 CPU thread each (goal: 2 workers >= 85% of twice one), beside the plain one-process
   loop with 1 thread (what Ray Train's worker adds) and two independent 1-thread processes at once (what the
   machine itself allows two busy cores: shared memory bandwidth, maybe SMT siblings).
2. Precision: the quickstart supernet in fp32 and in bf16 autocast, one process, all cores.
3. The WMT14 En-De SuperTransformer (HAT's space, 32K joint BPE, batches of 4096 tokens): tokens/s, and the
   time that projects to HAT's 40K updates of 128 such batches; fp32 on the CPU (bf16 there only with --bf16:
   a CPU without AVX512-BF16/AMX emulates it, 28x slower on an AVX2 EPYC), fp32 and bf16 on CUDA with --gpu.

    python bench/training.py                                          # about 8 min on 2 cores
    python bench/training.py --steps 3 --wmt-steps 1 --precision-steps 2  # smoke

With `--gpu` (on a GPU machine) part 2 runs on CUDA too. Writes bench/results/training-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from hwnas.io import atomic_write
from hwnas.latency import cpu_model
from hwnas.search_spaces import get_space
from hwnas.supernet import (
    DataSpec,
    TrainConfig,
    TrainTask,
    get_recipe,
    run_distributed,
    train_supernet,
    train_tokenizer,
)
from hwnas.supernet import run_training as run

RESULTS = Path(__file__).parent / "results"


def _one_thread_run(out: str, steps: int) -> float:
    """Tokens/s of one single-thread training process (run two at once: the machine's own ceiling)."""
    torch.set_num_threads(1)
    cfg = TrainConfig(steps=steps, checkpoint_every=10_000)
    return train_supernet(space=get_space("quickstart"), data=DataSpec.parse("bible:de-en"), out=Path(out),
                          config=cfg, resume=False, progress=False).tokens_per_s


def scaling(work: Path, steps: int) -> dict[str, object]:
    from hwnas.cluster import init_ray

    space, data = get_space("quickstart"), DataSpec.parse("bible:de-en")
    cfg = TrainConfig(steps=steps, checkpoint_every=10_000)
    runs: dict[str, dict[str, float]] = {}
    torch.set_num_threads(1)
    r = train_supernet(space=space, data=data, out=work / "one-process", config=cfg, resume=False, progress=False)
    runs["one process, 1 thread"] = {"tokens_per_s": r.tokens_per_s, "seconds_per_step": r.seconds_per_step}
    # the hardware's ceiling: two independent single-thread trainings at once, nothing exchanged (2 vCPUs that
    # share a physical core, or memory bandwidth, give less than 2x whatever the software does)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pair = list(pool.map(_one_thread_run, [str(work / "pair-a"), str(work / "pair-b")], [cfg.steps] * 2))
    runs["two independent processes at once, 1 thread each (sum)"] = {"tokens_per_s": sum(pair)}
    init_ray(num_cpus=2)
    tok = train_tokenizer(data.load("train"), cfg.vocab_size).to_str()
    for workers in (1, 2):  # both on Ray Train (run_distributed), so the comparison holds Ray's share fixed
        t0 = time.perf_counter()
        task = TrainTask("supernet", space.to_dict(), str(data), str(work / f"ray-{workers}"), cfg, tok,
                         workers=workers)
        shutil.rmtree(task.out, ignore_errors=True)
        r = run_distributed(task, cpus_per_worker=1, progress=False)
        runs[f"Ray Train, {workers} worker(s) x 1 thread"] = {
            "tokens_per_s": r.tokens_per_s, "seconds_per_step": r.seconds_per_step,
            "allreduce_wait_s_per_step": r.sync_s_per_step, "wall_s_with_startup": time.perf_counter() - t0}
        print(f"{workers} worker(s): {r.tokens_per_s:.0f} tokens/s", flush=True)
    one, two = (runs[f"Ray Train, {w} worker(s) x 1 thread"]["tokens_per_s"] for w in (1, 2))
    ceiling = sum(pair) / (2 * runs["one process, 1 thread"]["tokens_per_s"])
    return {"space": "quickstart", "data": str(data), "updates_timed": cfg.steps, "max_tokens": cfg.max_tokens,
            "runs": runs, "efficiency_2_workers": two / (2 * one), "goal_efficiency": 0.85,
            "hardware_ceiling_efficiency": ceiling,
            "efficiency_2_workers_of_ceiling": (two / (2 * one)) / ceiling,
            "note": "each worker trains update_freq 1 batches of its own; 2 workers do twice the tokens per update"}


def precision(work: Path, steps: int) -> dict[str, object]:
    space, data = get_space("quickstart"), DataSpec.parse("bible:de-en")
    torch.set_num_threads(os.cpu_count() or 1)
    runs = {}
    for p in ("fp32", "bf16"):
        cfg = TrainConfig(steps=steps, checkpoint_every=10_000, precision=p)
        r = train_supernet(space=space, data=data, out=work / f"precision-{p}", config=cfg, resume=False,
                           progress=False)
        runs[p] = {"tokens_per_s": r.tokens_per_s, "train_loss": r.train_loss}
        print(f"quickstart {p}: {r.tokens_per_s:.0f} tokens/s", flush=True)
    return {"space": "quickstart", "updates": steps, "runs": runs,
            "bf16_over_fp32": runs["bf16"]["tokens_per_s"] / runs["fp32"]["tokens_per_s"]}


def wmt(work: Path, steps: int, runs_wanted: list[tuple[str, str]]) -> dict[str, object]:
    space = get_space("wmt14.en-de")
    recipe = get_recipe("wmt14.en-de", "wmt14.en-de")
    data = DataSpec.parse("bible:de-en")  # real text; only the shapes matter for throughput
    tok = train_tokenizer(data.load("train"), 32_000).to_str()
    out: dict[str, object] = {"space": space.name, "vocab_size": 32_000, "updates_timed": steps, "runs": {}}
    for device, precision in runs_wanted:
        torch.set_num_threads(os.cpu_count() or 1)
        cfg = recipe.config(workers=1, steps=steps, update_freq=1, precision=precision, checkpoint_every=10_000)
        task = TrainTask("supernet", space.to_dict(), str(data), str(work / f"wmt-{device}-{precision}"), cfg, tok)
        r = run(task, device=device, resume=False, progress=False)
        hat_tokens = 40_000 * 128 * r.tokens_per_s * r.seconds_per_step  # tokens per batch x batches
        out["runs"][f"{device} {precision}"] = {  # type: ignore[index]
            "tokens_per_s": r.tokens_per_s, "seconds_per_batch": r.seconds_per_step,
            "projected_days_for_hat_40k_updates": hat_tokens / r.tokens_per_s / 86_400}
        print(f"WMT {device} {precision}: {r.tokens_per_s:.0f} tokens/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="timed updates per scaling run")
    ap.add_argument("--wmt-steps", type=int, default=6, help="timed updates per WMT run")
    ap.add_argument("--gpu", action="store_true", help="also run the WMT part on CUDA")
    ap.add_argument("--bf16", action="store_true", help="also run the WMT part in bf16 on the CPU (slow)")
    ap.add_argument("--precision-steps", type=int, default=10, help="updates per precision run")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "hwnas-bench-training")
    args = ap.parse_args()
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "host": platform.node(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "scaling": scaling(args.work, args.steps),
        "precision": precision(args.work, args.precision_steps),
        "wmt14_en_de": wmt(args.work, args.wmt_steps, [("cpu", "fp32")] + ([("cpu", "bf16")] if args.bf16 else [])
                           + ([("cuda", "fp32"), ("cuda", "bf16")] if args.gpu else [])),
        "command": "python bench/training.py" + (" --gpu" if args.gpu else "") + (" --bf16" if args.bf16 else ""),
    }
    name = "training-gpu.json" if args.gpu else "training-cpu.json"
    atomic_write(RESULTS / name, lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
