"""Fitness of candidates: valid loss (or BLEU) with weights inherited from the supernet.

`LocalEvaluator` scores in this process; `RayEvaluator` spreads candidates over a pool of
Ray actors, each holding one supernet replica loaded once. A dead actor is replaced and its
candidate retried; a candidate that keeps failing comes back as an error, never as an exception.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from hwnas.cluster import check_placement, init_ray, worker_resources
from hwnas.exceptions import HwnasError
from hwnas.jobs._spec import FitnessConfig
from hwnas.search import Evaluation
from hwnas.search_spaces import SubnetConfig
from hwnas.supernet import DataSpec, bleu, corpus_loss, load_supernet, precision_context, read_checkpoint, translate

OnResult = Callable[[int, "Score"], None]


@dataclasses.dataclass(frozen=True)
class Score:
    """One candidate's scores: valid loss, BLEU when asked for, how long it took, or the error."""

    valid_loss: float | None
    bleu: float | None
    eval_s: float
    error: str | None = None

    def evaluation(self, metric: str) -> Evaluation:
        if self.error is not None:
            return Evaluation(None, self.error)
        value = -self.bleu if metric == "bleu" and self.bleu is not None else self.valid_loss
        if value is None or not math.isfinite(value):
            return Evaluation(None, f"non-finite fitness ({value})")
        return Evaluation(float(value))


class Scorer:
    """A loaded supernet and its fixed validation subset; scores one subnet at a time."""

    def __init__(self, checkpoint: str | Path, fitness: FitnessConfig, *, threads: int | None = None,
                 device: str = "cpu"):
        if threads:
            torch.set_num_threads(threads)
        self.fitness, self.device = fitness, device
        self.supernet = load_supernet(checkpoint)
        self.supernet.model.to(device)
        corpus = DataSpec.parse(self.supernet.data).load("valid")
        self.corpus = corpus.head(fitness.valid_sentences) if fitness.valid_sentences else corpus

    def score(self, subnet: SubnetConfig) -> Score:
        start = time.perf_counter()
        autocast = precision_context(self.fitness.precision, self.device)
        try:
            view = self.supernet.model.subnet(subnet)
            with autocast:
                loss = corpus_loss(view, self.supernet.tokenizer, self.corpus, max_tokens=self.fitness.max_tokens,
                                   device=self.device)
                score = None
                if self.fitness.metric == "bleu":
                    hyps = translate(view, self.supernet.tokenizer, list(self.corpus.source),
                                     beam=self.fitness.beam, device=self.device)
                    score = bleu(hyps, list(self.corpus.target))
        except (HwnasError, RuntimeError, ValueError) as e:  # one bad candidate is data, not a crash
            return Score(None, None, time.perf_counter() - start, f"{type(e).__name__}: {str(e).splitlines()[0]}")
        return Score(loss, score, time.perf_counter() - start)


class Evaluator(abc.ABC):
    """Scores candidates. `evaluate` returns one `Score` per subnet, in order, failures included;
    `on_result(i, score)` is called as each finishes (so callers can persist work as it lands)."""

    @abc.abstractmethod
    def evaluate(self, subnets: Sequence[SubnetConfig], on_result: OnResult | None = None) -> list[Score]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers (no-op by default)."""

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalEvaluator(Evaluator):
    """Scores in this process, one candidate after another."""

    def __init__(self, checkpoint: str | Path, fitness: FitnessConfig = FitnessConfig(), *,
                 threads: int | None = None):
        self.scorer = Scorer(checkpoint, fitness, threads=threads)

    def evaluate(self, subnets: Sequence[SubnetConfig], on_result: OnResult | None = None) -> list[Score]:
        out = []
        for i, cfg in enumerate(subnets):
            out.append(self.scorer.score(cfg))
            if on_result is not None:
                on_result(i, out[-1])
        return out


class RayEvaluator(Evaluator):
    """A pool of `workers` Ray actors, each with its own supernet replica, scoring one candidate per call."""

    MAX_TRIES = 3  # per candidate, counting the first: a candidate that kills its actor thrice is an error

    def __init__(self, checkpoint: str | Path, fitness: FitnessConfig = FitnessConfig(), *, workers: int = 1,
                 address: str | None = None, threads_per_worker: int | None = None, gpus_per_worker: float = 0.0):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        read_checkpoint(checkpoint)  # a bad checkpoint is one clear error here, not a dead actor later
        init_ray(address)
        if gpus_per_worker:  # a GPU actor Ray cannot place would wait forever: say so now
            check_placement(workers, cpus_per_worker=0, gpus_per_worker=gpus_per_worker)
        self._gpus = gpus_per_worker
        cpus = int(ray.available_resources().get("CPU", 1))
        self._threads = threads_per_worker or max(1, cpus // workers)
        self._checkpoint, self._fitness = str(Path(checkpoint).resolve()), fitness
        self._actor_cls = ray.remote(num_cpus=0)(_ScoreActor)  # CPU accounting by threads, not Ray slots
        self.actors = [self._spawn() for _ in range(workers)]
        ray.get([a.ready.remote() for a in self.actors])  # load errors (bad checkpoint) surface here, once

    def _spawn(self) -> Any:
        return self._actor_cls.options(max_restarts=0, resources=worker_resources(), num_gpus=self._gpus).remote(
            self._checkpoint, self._fitness, self._threads, "cuda" if self._gpus else "cpu")

    def evaluate(self, subnets: Sequence[SubnetConfig], on_result: OnResult | None = None) -> list[Score]:
        results: dict[int, Score] = {}
        tries = dict.fromkeys(range(len(subnets)), 0)
        todo = list(range(len(subnets)))[::-1]
        running: dict[Any, tuple[int, int]] = {}  # ref -> (candidate, actor slot)
        idle = list(range(len(self.actors)))
        while todo or running:
            while todo and idle:
                i, slot = todo.pop(), idle.pop()
                tries[i] += 1
                running[self.actors[slot].score.remote(subnets[i].to_dict())] = (i, slot)
            done, _ = ray.wait(list(running), num_returns=1)
            i, slot = running.pop(done[0])
            try:
                score = Score(**ray.get(done[0]))
            except (RayActorError, RayTaskError) as e:  # the actor died (or raised): replace it, retry
                self.actors[slot] = self._spawn()
                if tries[i] < self.MAX_TRIES:
                    todo.append(i)
                    idle.append(slot)
                    continue
                score = Score(None, None, 0.0, f"worker failed {tries[i]} times: {str(e).splitlines()[0]}")
            idle.append(slot)
            results[i] = score
            if on_result is not None:
                on_result(i, score)
        return [results[i] for i in range(len(subnets))]

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []


class _ScoreActor:
    """Ray actor body: loads the supernet once, then scores subnets sent as dicts."""

    def __init__(self, checkpoint: str, fitness: FitnessConfig, threads: int, device: str = "cpu"):
        self.scorer = Scorer(checkpoint, fitness, threads=threads, device=device)

    def ready(self) -> int:
        return os.getpid()

    def score(self, subnet: dict[str, Any]) -> dict[str, Any]:
        return dataclasses.asdict(self.scorer.score(SubnetConfig.from_dict(subnet)))
