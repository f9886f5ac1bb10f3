"""Search strategies (`hwnas.search`, folder `nas/search/`): HAT's evolution, Optuna NSGA-II / TPE, random.

Strategies are pure batch ask/tell over canonical subnets with JSON state; the latency budgets reach
them as predictors behind a callable (`Problem`, `LatencyConstraint`). This package imports neither the
database nor the latency layer: scoring, persistence and measurement live in `hwnas.jobs`.
"""

from hwnas.search._base import Evaluation, LatencyConstraint, Problem, Strategy
from hwnas.search._evolution import EvolutionarySearch
from hwnas.search._factory import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BATCHES,
    STRATEGIES,
    StrategyName,
    create_strategy,
    planned_evaluations,
    strategy_options,
)
from hwnas.search._optuna import NSGA2Search, OptunaSearch, TPESearch
from hwnas.search._pareto import hypervolume_2d, pareto_mask
from hwnas.search._random import RandomSearch

__all__ = [
    "DEFAULT_BATCHES",
    "DEFAULT_BATCH_SIZE",
    "STRATEGIES",
    "Evaluation",
    "EvolutionarySearch",
    "LatencyConstraint",
    "NSGA2Search",
    "OptunaSearch",
    "Problem",
    "RandomSearch",
    "Strategy",
    "StrategyName",
    "TPESearch",
    "create_strategy",
    "hypervolume_2d",
    "pareto_mask",
    "planned_evaluations",
    "strategy_options",
]
