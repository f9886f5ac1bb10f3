"""MetaSchedule tuning of a space: a resumed run goes on with the workloads the last run did not reach."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwnas.kernels import host_target, tune_space
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig

pytest.importorskip("tvm")


@pytest.mark.slow  # 96 s of TVM task extraction; tuning itself runs in the quickstart test
def test_a_resumed_run_tunes_the_tasks_the_last_one_did_not_reach(tmp_path: Path, tiny_space: SearchSpace,
                                                                  tiny_mc: ModelConfig) -> None:
    # One round of the scheduler's warm-up (8 trials) per run: it reaches exactly one task. A new run used to
    # start the warm-up over at the same task, so however many runs, the same few tasks were ever tuned.
    runs = [tune_space(space=tiny_space, mc=tiny_mc, target=host_target(), work_dir=tmp_path, trials=8,
                       decode_steps=5, num_trials_per_iter=8) for _ in range(2)]
    tuned = [{t.name for t in run.tasks if t.trials} for run in runs]
    assert len(tuned[0]) == 1
    assert len(tuned[1]) == 2 and tuned[0] < tuned[1]
    assert runs[1].trials == 16  # both runs' trials are in the database
