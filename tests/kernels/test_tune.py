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


@pytest.mark.slow  # the same task extraction, then 8 candidates built here and timed on two loopback boards
def test_tuning_on_the_boards_of_a_key_writes_records_a_host_build_applies(tmp_path: Path, tiny_space: SearchSpace,
                                                                           tiny_mc: ModelConfig) -> None:
    import json

    import tvm
    from tvm import relax

    from hwnas.kernels import export_relax, make_target, prepare, rpc_tuning_runner
    from hwnas.latency import loopback_farm, parse_tracker, tracker_boards
    from hwnas.supernet import SubTransformer, init_weights

    target = host_target()
    with loopback_farm("tune-farm", boards=2) as farm:
        host, port = parse_tracker(farm.tracker)
        runner = rpc_tuning_runner(tracker_host=host, tracker_port=port, key="tune-farm",
                                   boards=len(tracker_boards(farm.tracker, "tune-farm")))
        report = tune_space(space=tiny_space, mc=tiny_mc, target=target, work_dir=tmp_path, trials=8,
                            decode_steps=5, num_trials_per_iter=8, runner=runner)
    timed = [json.loads(line) for line in (tmp_path / "database_tuning_record.json").read_text().splitlines()]
    assert report.trials == 8 and len(timed) == 8
    assert report.peak_gflops is None  # a board's peak is not this CPU's
    assert any(t.best_us for t in report.tasks)  # candidates ran on the boards and came back timed

    # A later build on the host applies what the boards measured: the tuned task's function is scheduled.
    model = SubTransformer(tiny_space.largest(), tiny_mc)
    init_weights(model, tiny_mc.pad_id)
    mod = prepare(export_relax(model.eval(), batch=1, source_length_tokens=tiny_space.source_length_tokens,
                               cache_len=5))
    with make_target(target):
        applied = relax.transform.MetaScheduleApplyDatabase(str(tmp_path))(mod)
    scheduled = [gv.name_hint for gv, f in applied.functions.items()
                 if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled")]
    assert scheduled, "no function took a schedule from the boards' database"
