"""Evaluators (in-process and a real local Ray actor pool) score subnets identically; dead workers are replaced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hwnas.exceptions import CheckpointError
from hwnas.jobs import Evaluator, FitnessConfig, LocalEvaluator, RayEvaluator
from hwnas.search_spaces import SearchSpace
from tests.jobs.test_jobs import checkpoint  # noqa: F401 - the module's trained tiny supernet fixture

FITNESS = FitnessConfig(valid_sentences=8)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024 * 1024)
    yield
    ray.shutdown()


@pytest.fixture(params=["local", "ray-1", "ray-2"])
def evaluator(request: pytest.FixtureRequest, checkpoint: Path) -> Iterator[Evaluator]:  # noqa: F811
    if request.param == "local":
        ev: Evaluator = LocalEvaluator(checkpoint, FITNESS, threads=1)
    else:
        request.getfixturevalue("ray_session")
        ev = RayEvaluator(checkpoint, FITNESS, workers=int(request.param[-1]), threads_per_worker=1)
    yield ev
    ev.close()


def test_every_evaluator_scores_alike(evaluator: Evaluator, checkpoint: Path,  # noqa: F811
                                      tiny_space: SearchSpace) -> None:
    rng = np.random.default_rng(1)
    subnets = [tiny_space.largest(), tiny_space.smallest(), *(tiny_space.sample(rng) for _ in range(3))]
    seen: list[int] = []
    scores = evaluator.evaluate(subnets, on_result=lambda i, s: seen.append(i))
    reference = LocalEvaluator(checkpoint, FITNESS, threads=1).evaluate(subnets)
    assert sorted(seen) == list(range(len(subnets)))
    for got, want in zip(scores, reference, strict=True):
        assert got.error is None and got.valid_loss == pytest.approx(want.valid_loss, rel=1e-5)
    assert len({round(s.valid_loss, 6) for s in scores}) > 1  # the subnets really differ


def test_bleu_fitness_is_minus_bleu(checkpoint: Path, tiny_space: SearchSpace) -> None:  # noqa: F811
    score = LocalEvaluator(checkpoint, FitnessConfig(metric="bleu", valid_sentences=4), threads=1).evaluate(
        [tiny_space.smallest()])[0]
    assert score.bleu is not None and score.evaluation("bleu").loss == -score.bleu
    assert score.evaluation("loss").loss == score.valid_loss


def test_a_killed_actor_is_replaced_and_its_candidate_retried(ray_session: None, checkpoint: Path,  # noqa: F811
                                                                tiny_space: SearchSpace) -> None:
    import ray

    ev = RayEvaluator(checkpoint, FITNESS, workers=2, threads_per_worker=1)
    victim = ev.actors[0]
    rng = np.random.default_rng(2)
    subnets = [tiny_space.sample(rng) for _ in range(6)]

    def kill_once(i: int, _score: object) -> None:
        if ev.actors[0] is victim:
            ray.kill(victim, no_restart=True)

    scores = ev.evaluate(subnets, on_result=kill_once)
    assert ev.actors[0] is not victim
    assert all(s.error is None for s in scores), [s.error for s in scores]
    ev.close()


def test_bad_checkpoint_fails_before_any_worker_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        RayEvaluator(bad, FITNESS, workers=1)


def test_bf16_scoring_agrees_with_fp32_within_two_percent(checkpoint: Path,  # noqa: F811
                                                          tiny_space: SearchSpace) -> None:
    """The tolerance stated for low-precision scoring (GPU actors use it): valid losses within 2% of fp32, and the
    same order of clearly different subnets."""
    import dataclasses

    rng = np.random.default_rng(2)
    subnets = [tiny_space.largest(), tiny_space.smallest(), *(tiny_space.sample(rng) for _ in range(2))]
    fp32 = LocalEvaluator(checkpoint, FITNESS, threads=1).evaluate(subnets)
    bf16 = LocalEvaluator(checkpoint, dataclasses.replace(FITNESS, precision="bf16"), threads=1).evaluate(subnets)
    for a, b in zip(fp32, bf16, strict=True):
        assert b.error is None and b.valid_loss == pytest.approx(a.valid_loss, rel=0.02)
        assert b.valid_loss != a.valid_loss  # autocast really ran in bf16
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        FitnessConfig(precision="int8")


def test_gpu_actors_the_cluster_cannot_place_are_refused(ray_session: None, checkpoint: Path) -> None:  # noqa: F811
    from hwnas.exceptions import ClusterError

    with pytest.raises(ClusterError, match="cannot place 2 workers of 0 CPU \\+ 1 GPU"):
        RayEvaluator(checkpoint, FITNESS, workers=2, gpus_per_worker=1)
