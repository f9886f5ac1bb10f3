"""The `Strategy` contract, checked on every strategy through `create_strategy` (stand-in latency and loss)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from hwnas.exceptions import InfeasibleConstraintError
from hwnas.search import (
    STRATEGIES,
    Evaluation,
    EvolutionarySearch,
    LatencyConstraint,
    OptunaSearch,
    Problem,
    Strategy,
    create_strategy,
)
from hwnas.search_spaces import SearchSpace, SubnetConfig
from tests.search.conftest import (
    SIZES,
    STAND_IN_DEVICE,
    make_strategy,
    run,
    stand_in_evaluate,
    stand_in_latency_ms,
    stand_in_loss,
)

ROOT = Path(__file__).resolve().parents[2]


def flaky_evaluate(cfg: SubnetConfig) -> Evaluation:
    """Stand-in loss, except a deterministic share of subnets that error, score NaN or score inf."""
    last = cfg.key()[-1]
    if last in "01":
        return Evaluation(None, "boom")
    if last == "2":
        return Evaluation(float("nan"))
    if last == "3":
        return Evaluation(float("inf"))
    return stand_in_evaluate(cfg)


@pytest.fixture(params=STRATEGIES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_every_strategy_is_covered() -> None:
    assert set(SIZES) == set(STRATEGIES) == {"evo", "nsga2", "tpe", "random"}


class TestStrategyContract:
    """What `Strategy` promises, for each strategy `create_strategy` knows."""

    def test_batches_are_feasible_valid_distinct_and_new(self, name: str, stand_in: Problem) -> None:
        strategy = make_strategy(name, stand_in, seed=1)
        assert strategy.name == name
        planned = strategy.progress[1]
        assert strategy.progress == (0, planned) and planned >= 4
        seen: set[SubnetConfig] = set()
        for done in range(planned):
            batch = strategy.ask()
            assert batch is not None
            assert len(set(batch)) == len(batch)
            assert all(stand_in.space.contains(c) for c in batch)
            assert stand_in.feasible(batch).all()
            assert not seen & set(batch)
            strategy.tell(batch, [stand_in_evaluate(c) for c in batch])
            seen |= set(batch)
            assert strategy.progress == (done + 1, planned)
        assert strategy.ask() is None and strategy.ask() is None
        assert set(strategy.evaluated()) == seen and len(seen) > planned

    def test_same_seed_same_search(self, name: str, stand_in: Problem) -> None:
        a, b, other = (make_strategy(name, stand_in, seed=s) for s in (7, 7, 8))
        batches = run(a)
        assert run(b) == batches
        assert run(other) != batches  # the seed matters, so the equality above means something
        assert a.best() == b.best() is not None

    def test_same_seed_same_search_in_a_fresh_process(self, name: str, stand_in: Problem,
                                                      fresh_process_batches: dict[str, list[list[str]]]) -> None:
        assert fresh_process_batches[name] == run(make_strategy(name, stand_in, seed=5))

    @pytest.mark.parametrize("cut", [1, 2, 3])
    def test_resume_from_json_state_is_exact(self, name: str, stand_in: Problem, cut: int) -> None:
        uninterrupted = make_strategy(name, stand_in, seed=3)
        expected = run(uninterrupted, flaky_evaluate)

        first = make_strategy(name, stand_in, seed=3)
        head = run(first, flaky_evaluate, max_batches=cut)
        state = json.loads(json.dumps(first.state_dict(), allow_nan=False))  # strict JSON: a database column
        resumed = make_strategy(name, stand_in, seed=3)
        resumed.load_state_dict(state)
        assert resumed.progress == (cut, uninterrupted.progress[1])
        assert head + run(resumed, flaky_evaluate) == expected
        assert resumed.best() == uninterrupted.best()
        assert resumed.evaluated().keys() == uninterrupted.evaluated().keys()

    def test_state_of_another_strategy_is_refused(self, name: str, stand_in: Problem) -> None:
        other = "random" if name != "random" else "evo"
        with pytest.raises(ValueError, match="state of strategy"):
            make_strategy(name, stand_in).load_state_dict(make_strategy(other, stand_in).state_dict())

    def test_failed_and_non_finite_evaluations_never_win(self, name: str, stand_in: Problem) -> None:
        strategy = make_strategy(name, stand_in, seed=2)
        run(strategy, flaky_evaluate)
        told = strategy.evaluated()
        assert {e.error for e in told.values()} >= {None, "boom"}
        assert any(e.loss is not None and math.isnan(e.loss) for e in told.values())
        assert any(e.loss == math.inf for e in told.values())
        best = strategy.best()
        assert best is not None and best[1].ok
        assert best[1].fitness() == min(e.loss for e in told.values() if e.ok)

    def test_all_evaluations_failing_does_not_crash(self, name: str, stand_in: Problem) -> None:
        strategy = make_strategy(name, stand_in, seed=2)
        bad = [Evaluation(None, "boom"), Evaluation(float("nan")), Evaluation(float("-inf"))]
        batches = run(strategy, lambda c: bad[int(c.key(), 16) % 3])
        assert len(batches) == strategy.progress[1] and strategy.best() is None

    def test_infeasible_budget_fails_fast_naming_the_fastest_subnet(self, name: str, tiny_space: SearchSpace) -> None:
        seen: list[SubnetConfig] = []

        def recording_stand_in_latency_ms(subnets: Sequence[SubnetConfig]) -> np.ndarray:
            seen.extend(subnets)
            return stand_in_latency_ms(subnets)

        problem = Problem(tiny_space, (LatencyConstraint(STAND_IN_DEVICE, 1e-6, recording_stand_in_latency_ms),))
        strategy = make_strategy(name, problem, max_attempts_per_subnet=5)
        start = time.perf_counter()
        with pytest.raises(InfeasibleConstraintError) as err:
            strategy.ask()
        assert time.perf_counter() - start < 10
        per_batch = SIZES[name].get("batch_size") or SIZES[name]["population"]
        message = str(err.value)
        assert f"0 of {per_batch} subnets" in message and f"in {5 * per_batch} tries" in message
        fastest = min(seen, key=lambda c: float(stand_in_latency_ms([c])[0]))
        match = re.search(r"fastest found is predicted at ([\d.]+) ms \(subnet ([0-9a-f]{16})\)", message)
        assert match is not None, message
        assert match.group(2) == fastest.key()
        assert float(match.group(1)) == pytest.approx(float(stand_in_latency_ms([fastest])[0]), abs=0.01)
        state = json.loads(json.dumps(strategy.state_dict(), allow_nan=False))  # the failed ask left a loadable state
        make_strategy(name, problem, max_attempts_per_subnet=5).load_state_dict(state)

    def test_tell_must_answer_exactly_the_asked_batch(self, name: str, stand_in: Problem) -> None:
        strategy = make_strategy(name, stand_in)
        with pytest.raises(ValueError, match="without a pending ask"):
            strategy.tell([], [])
        batch = strategy.ask()
        assert batch is not None and len(batch) >= 2
        outsider = next(c for c in (stand_in.space.sample(np.random.default_rng(i)) for i in range(100))
                        if c not in batch)
        wrong = [batch[:-1], [*batch[:-1], outsider], [*batch, outsider], [*batch, batch[0]]]
        for subnets in wrong:
            with pytest.raises(ValueError):
                strategy.tell(subnets, [stand_in_evaluate(c) for c in subnets])
        with pytest.raises(ValueError):
            strategy.tell(batch, [stand_in_evaluate(c) for c in batch[:-1]])
        assert strategy.evaluated() == {} and strategy.progress[0] == 0
        strategy.tell(batch[::-1], [stand_in_evaluate(c) for c in batch[::-1]])  # any order is the same batch
        assert strategy.progress[0] == 1 and set(strategy.evaluated()) == set(batch)

    def test_search_does_not_get_worse(self, name: str, stand_in: Problem) -> None:
        strategy = make_strategy(name, stand_in, seed=0)
        first = strategy.ask()
        assert first is not None
        strategy.tell(first, [stand_in_evaluate(c) for c in first])
        run(strategy)
        best = strategy.best()
        assert best is not None and best[1].fitness() <= min(stand_in_loss(c) for c in first)
        assert stand_in.feasible([best[0]]).all()


def test_evolution_improves_on_its_first_generation(stand_in: Problem) -> None:
    strategy = make_strategy("evo", stand_in, seed=0)  # seed checked once: gen 0 best 2.1885 -> 2.1811
    first = strategy.ask()
    assert first is not None
    strategy.tell(first, [stand_in_evaluate(c) for c in first])
    run(strategy)
    best = strategy.best()
    assert best is not None and best[1].fitness() < min(stand_in_loss(c) for c in first)


@pytest.fixture(scope="module")
def fresh_process_batches() -> dict[str, list[list[str]]]:
    """Every strategy's seed-5 search run in a new interpreter (another hash seed): its batches as keys."""
    code = ("import json; from hwnas.search_spaces import SearchSpace; from tests.conftest import TINY_SPACE_DICT; "
            "from tests.search.conftest import SIZES, make_strategy, run, stand_in_problem; "
            "p = stand_in_problem(SearchSpace.from_dict(TINY_SPACE_DICT)); "
            "print(json.dumps({n: run(make_strategy(n, p, seed=5)) for n in SIZES}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


class TestCreateStrategy:
    def test_names(self, stand_in: Problem) -> None:
        kinds = {n: type(create_strategy(n, stand_in, seed=0)) for n in STRATEGIES}
        assert kinds["evo"] is EvolutionarySearch and issubclass(kinds["nsga2"], OptunaSearch)
        assert all(create_strategy(n, stand_in, seed=0).progress == (0, 30) for n in STRATEGIES)  # HAT's 30
        with pytest.raises(ValueError, match=re.escape("Unknown strategy: cma (choose from evo, nsga2, tpe, random)")):
            create_strategy("cma", stand_in, seed=0)

    def test_options(self, stand_in: Problem) -> None:
        with pytest.raises(ValueError, match="unknown option.*population"):
            create_strategy("tpe", stand_in, seed=0, population=10)
        evo = create_strategy("evo", stand_in, seed=0, batch_size=10, batches=3)
        assert isinstance(evo, EvolutionarySearch) and evo.progress == (0, 3)
        assert (evo.population_size, evo.parents, evo.mutations, evo.crossovers) == (10, 2, 4, 4)
        batch = evo.ask()
        assert batch is not None and len(batch) <= 10
        with pytest.raises(ValueError, match="disagree"):
            create_strategy("evo", stand_in, seed=0, batches=3, generations=4)
        assert create_strategy("random", stand_in, seed=0, batch_size=3, batches=2).progress == (0, 2)

    def test_optuna_samplers_need_a_latency_constraint(self, tiny_space: SearchSpace) -> None:
        for n in ("nsga2", "tpe"):
            with pytest.raises(ValueError, match="at least one latency constraint"):
                create_strategy(n, Problem(tiny_space), seed=0)
        assert create_strategy("evo", Problem(tiny_space), seed=0).ask()  # the others search unconstrained


class TestEvolutionarySearch:
    def test_population_is_parents_plus_children(self, stand_in: Problem) -> None:
        with pytest.raises(ValueError, match="must equal parents"):
            EvolutionarySearch(stand_in, population=12, parents=4, mutations=4, crossovers=3)
        with pytest.raises(ValueError, match="must equal parents"):
            create_strategy("evo", stand_in, seed=0, population=12, parents=4, mutations=4, crossovers=5)

    def test_next_population_keeps_the_top_parents(self, stand_in: Problem) -> None:
        strategy: Strategy = make_strategy("evo", stand_in, seed=4)
        assert isinstance(strategy, EvolutionarySearch)
        for _ in range(2):
            batch = strategy.ask()
            assert batch is not None
            population = [SubnetConfig.from_dict(c) for c in strategy.state_dict()["population"]]
            strategy.tell(batch, [stand_in_evaluate(c) for c in batch])
            told = strategy.evaluated()
            expected = sorted(dict.fromkeys(population), key=lambda c: told[c].fitness())[:4]
            following = [SubnetConfig.from_dict(c) for c in strategy.state_dict()["population"]]
            assert len(following) == 12 and following[:4] == expected
            assert set(strategy.top_parents()) <= set(told)  # ranks the evaluated members between batches
            assert not set(strategy.ask() or []) & set(expected)  # kept parents are not evaluated again
