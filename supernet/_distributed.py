"""Data-parallel training on Ray Train: `TorchTrainer` runs the same loop (`_train.run_task`) on every worker.

Ray Train places the workers and sets up the process group (gloo on CPUs, NCCL on GPUs); the loop itself
all-reduces gradients and token counts. Rank 0 writes the checkpoint under `out`, which every worker reads
on resume: on a multi-node cluster `out` must be on storage all nodes share. Rank 0 streams progress to the
driver through a Ray queue, so the bar moves here as the workers train.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from rich.console import Console

from hwnas.cluster import check_placement, init_ray, worker_resources
from hwnas.exceptions import TrainingError
from hwnas.supernet._train import (
    Rank,
    TrainResult,
    TrainTask,
    _progress,
    check_precision,
    read_result,
    run_task,
    write_result,
)

RESULT_FILE = "last_run.json"


def _worker(config: dict[str, Any]) -> None:
    """Body of one Ray Train worker."""
    import ray.train
    import ray.train.torch
    import torch

    task: TrainTask = config["task"]
    threads = config.get("threads")
    if threads:
        torch.set_num_threads(threads)
    ctx = ray.train.get_context()
    where = Rank(ctx.get_world_rank(), ctx.get_world_size(), str(ray.train.torch.get_device()))
    queue = config["queue"]

    def on_update(step: int, loss: float, lr: float) -> None:
        queue.put_nowait((step, loss, lr))

    result = run_task(task, where, on_update=on_update)
    if where.rank == 0:
        write_result(Path(task.out) / RESULT_FILE, result)
        queue.put_nowait(None)


def run_distributed(task: TrainTask, *, gpus_per_worker: float = 0.0, cpus_per_worker: float | None = None,
                    address: str | None = None, progress: bool = True) -> TrainResult:
    """Train `task` with `task.workers` Ray Train workers; returns rank 0's result."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    check_precision(task.config.precision, "cuda" if gpus_per_worker else "cpu")
    init_ray(address)
    if cpus_per_worker is None:  # share this machine's (or the cluster's) CPUs evenly
        cpus_per_worker = max(1, int(ray.cluster_resources().get("CPU", 1)) // task.workers)
    check_placement(task.workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    out = Path(task.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).unlink(missing_ok=True)
    queue = Queue()
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {}),
                 **worker_resources()}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"task": task, "queue": queue, "threads": max(1, int(cpus_per_worker))},
        scaling_config=ScalingConfig(num_workers=task.workers, use_gpu=bool(gpus_per_worker),
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker else "gloo"),
        run_config=RunConfig(storage_path=str(out / "ray-train"), name="run",
                             failure_config=FailureConfig(max_failures=0)),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as e:  # noqa: BLE001 - reported below, on the caller's thread
            outcome["error"] = e
        finally:
            queue.put_nowait(None)

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    with _progress(Console(stderr=True)) as bar:
        bar_task = bar.add_task(f"train {task.kind} ({task.workers} workers)", total=task.config.steps,
                                completed=0, info="", visible=progress)
        while True:
            try:
                item = queue.get(timeout=1.0)
            except Empty:
                if not thread.is_alive():
                    break
                continue
            if item is None:
                break
            step, loss, lr = item
            bar.update(bar_task, completed=step, info=f"loss {loss:.3f} lr {lr:.2e}")
    thread.join()
    queue.shutdown()
    error = outcome.get("error") or getattr(outcome.get("result"), "error", None)
    if error is not None:
        raise TrainingError(f"data-parallel training failed: {_first_line(error)}") from error
    if not (out / RESULT_FILE).exists():
        raise TrainingError("data-parallel training ended without a result from rank 0")
    shutil.rmtree(out / "ray-train", ignore_errors=True)  # Ray Train's run records; the checkpoint is ours
    return read_result(out / RESULT_FILE)


def _first_line(error: BaseException) -> str:
    """The innermost cause's message: Ray wraps a worker's exception in several layers."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"
