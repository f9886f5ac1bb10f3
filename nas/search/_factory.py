"""`create_strategy`: a search strategy by name, with one vocabulary of sizes across strategies."""

from __future__ import annotations

from typing import Any, Literal, get_args

from hwnas.search._base import Problem, Strategy
from hwnas.search._evolution import EvolutionarySearch
from hwnas.search._optuna import OptunaSearch
from hwnas.search._random import RandomSearch

__all__ = ["DEFAULT_BATCHES", "DEFAULT_BATCH_SIZE", "STRATEGIES", "StrategyName", "create_strategy",
           "planned_evaluations", "strategy_options"]

StrategyName = Literal["evo", "nsga2", "tpe", "random"]
STRATEGIES: tuple[StrategyName, ...] = get_args(StrategyName)
DEFAULT_BATCH_SIZE, DEFAULT_BATCHES = 125, 30  # HAT's population and generations
_BATCHED = {"batch_size", "batches", "max_attempts_per_subnet"}
_EVO = {"population", "parents", "mutations", "crossovers", "generations", "mutation_prob", "max_attempts_per_child"}


def create_strategy(name: str, problem: Problem, *, seed: int, **options: Any) -> Strategy:
    """A fresh strategy `name` over `problem`.

    Every strategy takes `batch_size` (subnets proposed per batch), `batches` and
    `max_attempts_per_subnet`. For "evo" these mean population, generations and attempts per
    child, and HAT's own names are accepted too; a population given without its split is split
    as HAT splits 125 (a fifth parents, the rest half mutations, half crossovers).

    Args:
        name: "evo", "nsga2", "tpe" or "random".
        problem: The space and latency constraints.
        seed: Seeds every random choice of the strategy.
        **options: Sizes, as above; defaults are HAT's (125 per batch, 30 batches).

    Raises:
        ValueError: an unknown strategy or option, or sizes the strategy rejects.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy: {name} (choose from {', '.join(STRATEGIES)})")
    allowed = _BATCHED | _EVO if name == "evo" else _BATCHED
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) for strategy '{name}': {', '.join(unknown)} "
                         f"(allowed: {', '.join(sorted(allowed))})")
    if name == "evo":
        return EvolutionarySearch(problem, seed=seed, **_evo_options(options))
    if name == "random":
        return RandomSearch(problem, seed=seed, **options)
    return OptunaSearch(problem, sampler="nsga2" if name == "nsga2" else "tpe", seed=seed, **options)


def _evo_options(options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    for common, own in (("batch_size", "population"), ("batches", "generations"),
                        ("max_attempts_per_subnet", "max_attempts_per_child")):
        if common in opts:
            value = opts.pop(common)
            if opts.setdefault(own, value) != value:
                raise ValueError(f"options '{common}' ({value}) and '{own}' ({opts[own]}) disagree")
    population = opts.get("population")
    if population is not None and not {"parents", "mutations", "crossovers"} & opts.keys():
        parents = max(2, population // 5)
        mutations = (population - parents) // 2
        opts.update(parents=parents, mutations=mutations, crossovers=population - parents - mutations)
    return opts


def strategy_options(strategy: str, *, population: int | None = None, generations: int | None = None) -> dict[str, Any]:
    """The faces' two size knobs (CLI, API) in every strategy's vocabulary (evo: population / generations, split
    as HAT)."""
    opts: dict[str, Any] = {}
    if population is not None:
        opts["batch_size"] = population
    if generations is not None:
        opts["batches"] = generations
    return opts


def planned_evaluations(options: dict[str, Any]) -> int:
    """Subnets a strategy with `options` (either vocabulary) proposes in all: batch size x batches."""
    size = options.get("batch_size", options.get("population", DEFAULT_BATCH_SIZE))
    return int(size) * int(options.get("batches", options.get("generations", DEFAULT_BATCHES)))
