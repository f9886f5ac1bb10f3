"""A board farm: several boards under one RPC key measure in parallel, each result names its board, and a board
that vanishes mid-batch costs only its subnet's attempt. The boards are hwnas RPC servers on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tvm import rpc

from hwnas.kernels import BuildInput, build_one, host_target
from hwnas.latency import (
    LoopbackFarm,
    MeasureConfig,
    RPCRunner,
    RunInput,
    RunResult,
    loopback_farm,
    parse_tracker,
    tracker_boards,
)
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig

KEY = "farm-test"
# 10 runs x 2 functions with 50 ms of cool-down each: a subnet holds its board for about a second, so a board
# killed while busy is killed mid-measurement.
SLOW = MeasureConfig(source_length_tokens=6, decode_steps=4, warmup_runs=1, timed_runs=10, cooldown_ms=50, threads=1)


@pytest.fixture(scope="module")
def libraries(tmp_path_factory: pytest.TempPathFactory, tiny_space: SearchSpace,
              tiny_mc: ModelConfig) -> list[RunInput]:
    root = tmp_path_factory.mktemp("farm-libs")
    b = BuildInput(tiny_space.smallest(), tiny_mc, host_target(), source_length_tokens=6, cache_len=4)
    return [RunInput(b, build_one(b, str(root / "smallest")))] * 4  # four subnets' worth of work


@pytest.fixture
def farm() -> Iterator[LoopbackFarm]:
    with loopback_farm(KEY, boards=2) as f:
        yield f


def _free(tracker: str) -> int:
    host, port = parse_tracker(tracker)
    return int(rpc.connect_tracker(host, port).summary()["queue_info"].get(KEY, {}).get("free", 0))


def _run_and_kill_a_busy_board(farm: LoopbackFarm, runner: RPCRunner,
                               inputs: list[RunInput]) -> tuple[list[RunResult], str, str]:
    """Run the batch; once both boards are in a session, kill board 0. Returns the results, the killed board
    and the one left."""
    boards = tracker_boards(farm.tracker, KEY)
    results: list[RunResult] = []
    worker = threading.Thread(target=lambda: results.extend(runner.run(inputs, SLOW)))
    worker.start()
    deadline = time.monotonic() + 120
    while _free(farm.tracker) > 0:  # both boards busy: whichever is killed holds a subnet
        assert time.monotonic() < deadline, "the boards never got busy"
        time.sleep(0.05)
    farm.kill(0)
    worker.join(timeout=300)
    assert not worker.is_alive()
    [left] = tracker_boards(farm.tracker, KEY)
    [killed] = set(boards) - {left}
    return results, killed, left


def test_boards_of_a_key_measure_in_parallel_and_name_themselves(farm: LoopbackFarm,
                                                                  libraries: list[RunInput]) -> None:
    boards = tracker_boards(farm.tracker, KEY)
    assert len(boards) == 2
    t0 = time.perf_counter()
    results = RPCRunner(tracker=farm.tracker, key=KEY, timeout_s=120).run(libraries, SLOW)
    seconds = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.error for r in results]
    assert {r.board for r in results} == set(boards)  # both boards worked, and every result says which
    print(f"\n4 subnets on 2 boards: {seconds:.1f} s")


def test_a_board_that_vanishes_costs_only_its_attempt(farm: LoopbackFarm, libraries: list[RunInput]) -> None:
    runner = RPCRunner(tracker=farm.tracker, key=KEY, timeout_s=120)
    results, killed, left = _run_and_kill_a_busy_board(farm, runner, libraries)
    assert all(r.ok for r in results), [r.error for r in results]  # the lost subnet was measured again
    assert results[-1].board == left  # what came after the loss ran on the board that was left
    assert {r.board for r in results} <= {killed, left}


@pytest.mark.slow  # 30 s: a farm of its own; the retry test above covers the same loss
def test_without_retries_the_lost_subnet_is_a_failure_naming_its_board(farm: LoopbackFarm,
                                                                        libraries: list[RunInput]) -> None:
    runner = RPCRunner(tracker=farm.tracker, key=KEY, timeout_s=120, attempts=1)
    results, killed, left = _run_and_kill_a_busy_board(farm, runner, libraries)
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1 and failed[0].board == killed
    assert f"board {killed} vanished mid-measurement" in (failed[0].error or "")
    assert sum(r.ok for r in results) == 3 and results[-1].board == left


@pytest.mark.slow  # 35 s: a farm of its own
def test_when_every_board_vanishes_the_rest_fail_as_data(libraries: list[RunInput], tmp_path: Path) -> None:
    with loopback_farm(KEY, boards=1) as farm:
        runner = RPCRunner(tracker=farm.tracker, key=KEY, timeout_s=120)
        results: list[RunResult] = []
        worker = threading.Thread(target=lambda: results.extend(runner.run(libraries, SLOW)))
        worker.start()
        while _free(farm.tracker) > 0:
            time.sleep(0.05)
        farm.kill(0)
        worker.join(timeout=300)
    assert len(results) == 4 and not any(r.ok for r in results[1:])
    assert any(f"no board with key '{KEY}' is left" in (r.error or "") for r in results)
