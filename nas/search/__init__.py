"""Search strategies (HAT's evolution, Optuna NSGA-II / TPE, random), evaluators and search jobs."""

from hwnas.search._base import Evaluation, LatencyConstraint, Problem, Strategy
from hwnas.search._evaluator import Evaluator, FitnessConfig, LocalEvaluator, RayEvaluator, Score, init_ray
from hwnas.search._evolution import EvolutionarySearch
from hwnas.search._export_job import export_candidate
from hwnas.search._factory import STRATEGIES, create_strategy
from hwnas.search._job import (
    CandidateRow,
    FrontMember,
    JobInfo,
    SearchSpec,
    cancel_job,
    candidates,
    create_job,
    front,
    get_job,
    list_jobs,
    run_job,
    strategy_options,
)
from hwnas.search._optuna import NSGA2Search, OptunaSearch, TPESearch
from hwnas.search._pareto import hypervolume_2d, pareto_mask
from hwnas.search._plot import plot_front
from hwnas.search._random import RandomSearch

__all__ = [
    "CandidateRow",
    "Evaluation",
    "Evaluator",
    "EvolutionarySearch",
    "FitnessConfig",
    "FrontMember",
    "JobInfo",
    "LatencyConstraint",
    "LocalEvaluator",
    "NSGA2Search",
    "OptunaSearch",
    "Problem",
    "RandomSearch",
    "RayEvaluator",
    "STRATEGIES",
    "Score",
    "SearchSpec",
    "Strategy",
    "TPESearch",
    "cancel_job",
    "candidates",
    "create_job",
    "export_candidate",
    "create_strategy",
    "front",
    "get_job",
    "hypervolume_2d",
    "init_ray",
    "list_jobs",
    "pareto_mask",
    "plot_front",
    "run_job",
    "strategy_options",
]
