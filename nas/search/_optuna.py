"""Optuna's NSGA-II and TPE samplers behind the batch ask/tell `Strategy` contract.

Both minimise two objectives: the loss, and the predicted latency on the first constraint's
device. A proposal over any latency budget is never evaluated: its trial is told PRUNED with its
relative budget excess as Optuna constraints (`Trial.set_constraint`, Optuna >= 5), so TPE learns
where the feasible region lies without a loss being invented for it; NSGA-II only ranks COMPLETE
trials, so its parents, and most of its children, are feasible.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from hwnas.exceptions import InfeasibleConstraintError
from hwnas.search._base import Evaluation, Problem, Strategy
from hwnas.search_spaces import SubnetConfig

__all__ = ["NSGA2Search", "OptunaSearch", "TPESearch"]

_STUDY = "hwnas"
_STATES = {s.name: s for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna logs every told trial at INFO and warns about experimental features: silenced here only."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(level, optuna.logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def _float(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)  # JSON has no inf/nan


class OptunaSearch(Strategy):
    """Multi-objective (loss, predicted latency) search with Optuna's NSGA-II or TPE sampler.

    One batch is `batch_size` feasible proposals (NSGA-II's population size, so a batch is a
    generation); of those, the subnets not evaluated before are returned, each once. A proposal
    that decodes to an already evaluated subnet is told that evaluation at once; two proposals of
    one batch that decode to the same subnet share its evaluation. A failed or non-finite
    evaluation is told as a FAIL trial, which both samplers ignore.

    Args:
        problem: The space and latency constraints; at least one constraint, whose predicted
            latency is the second objective (every constraint is enforced).
        sampler: "nsga2" or "tpe" (multivariate).
        batch_size: Feasible proposals per batch.
        batches: Batches planned.
        seed: Seeds the sampler; batch `i` samples with a seed derived from (`seed`, `i`), so the
            state to resume from is the study's trials alone.
        max_attempts_per_subnet: A batch gives up after `max_attempts_per_subnet * batch_size` proposals.

    Raises:
        ValueError: an unknown sampler, no latency constraint, or sizes out of range.
    """

    def __init__(self, problem: Problem, *, sampler: Literal["nsga2", "tpe"], batch_size: int = 125,
                 batches: int = 30, seed: int = 0, max_attempts_per_subnet: int = 200):
        super().__init__()
        if sampler not in ("nsga2", "tpe"):
            raise ValueError(f"Unknown Optuna sampler: {sampler} (choose from nsga2, tpe)")
        if not problem.constraints:
            raise ValueError(f"strategy '{sampler}' needs at least one latency constraint (its second objective)")
        if batch_size < (2 if sampler == "nsga2" else 1) or batches < 1 or max_attempts_per_subnet < 1:
            raise ValueError("need batch_size >= 1 (>= 2 for nsga2), batches >= 1 and max_attempts_per_subnet >= 1")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not hasattr(optuna.trial.Trial, "set_constraint"):
            raise ImportError(f"strategy '{sampler}' needs optuna >= 5.0 (found {optuna.__version__})")
        self.name = sampler
        self.problem, self.batch_size, self.batches = problem, batch_size, batches
        self.seed, self.max_attempts_per_subnet = seed, max_attempts_per_subnet
        genes = problem.space.genes()
        self._params = [g.field if g.layer is None else f"{g.field}.{g.layer}" for g in genes]
        self._distributions: dict[str, BaseDistribution] = {
            p: CategoricalDistribution(g.choices) for p, g in zip(self._params, genes, strict=True)}
        self._budgets = np.array([c.max_latency_ms for c in problem.constraints])
        self._done = 0
        self._pending: dict[int, tuple[SubnetConfig, float]] = {}  # trial number -> (subnet, latency), asked
        self._study = self._new_study()

    @property
    def progress(self) -> tuple[int, int]:
        return self._done, self.batches

    # -- study ----------------------------------------------------------------------------
    def _new_study(self) -> optuna.Study:
        self._db = optuna.storages.InMemoryStorage()  # one study per storage: trial ids are 0, 1, 2...
        with _quiet():
            return optuna.create_study(storage=self._db, study_name=_STUDY, directions=["minimize", "minimize"])

    def _sampler(self) -> optuna.samplers.BaseSampler:
        # A fresh sampler per batch, seeded from (seed, batch): its RNG state never needs saving
        seed = int(np.random.SeedSequence([self.seed, self._done]).generate_state(1)[0])
        if self.name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=self.batch_size, seed=seed)
        return optuna.samplers.TPESampler(multivariate=True, seed=seed)

    # -- ask / tell -----------------------------------------------------------------------
    def ask(self) -> list[SubnetConfig] | None:
        if self._done >= self.batches:
            return None
        if self._asked is not None:  # asked again before tell: the same batch
            return list(self._asked)
        with _quiet():
            try:
                return self._ask()
            except BaseException:
                # A batch that cannot be completed leaves no trial running, so the state stays loadable
                for t in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    self._study.tell(t.number, state=TrialState.FAIL)
                self._pending = {}
                raise

    def _ask(self) -> list[SubnetConfig]:
        self._study = study = optuna.load_study(study_name=_STUDY, storage=self._db, sampler=self._sampler())
        limit = self.max_attempts_per_subnet * self.batch_size
        found = attempts = 0
        batch: dict[SubnetConfig, None] = {}
        best: tuple[float, SubnetConfig | None] = (math.inf, None)
        while found < self.batch_size and attempts < limit:  # bounded: at most `limit` proposals
            trials = [study.ask(self._distributions) for _ in range(min(self.batch_size - found, limit - attempts))]
            attempts += len(trials)
            subnets = [self.problem.space._decode([t.params[p] for p in self._params]) for t in trials]
            latencies = self.problem.latencies_ms(subnets)
            excess = (latencies - self._budgets) / self._budgets  # as Problem.violation, per constraint
            for trial, cfg, row, lat in zip(trials, subnets, excess, latencies[:, 0], strict=True):
                if not np.isfinite(row).all():  # a broken prediction: nothing to learn from
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                for i, x in enumerate(row):
                    trial.set_constraint(str(i), float(x))
                violation = float(row.max())
                if violation < best[0]:
                    best = (violation, cfg)
                if violation > 0:
                    study.tell(trial, state=TrialState.PRUNED)  # never evaluated: no loss to report
                    continue
                found += 1
                if cfg in self._cache:
                    self._tell_trial(trial.number, self._cache[cfg], float(lat))
                else:
                    self._pending[trial.number] = (cfg, float(lat))
                    batch[cfg] = None
        if found < self.batch_size:
            raise InfeasibleConstraintError(self.problem.infeasible_message(
                f"{self.name} proposals", self.batch_size, found, attempts, best[1]))
        self._asked = list(batch)
        return list(self._asked)

    def _tell_trial(self, number: int, evaluation: Evaluation, latency_ms: float) -> None:
        if evaluation.ok:
            self._study.tell(number, [evaluation.fitness(), latency_ms])
        else:
            self._study.tell(number, state=TrialState.FAIL)

    def tell(self, subnets: Sequence[SubnetConfig], evaluations: Sequence[Evaluation]) -> None:
        self._record(subnets, evaluations)
        with _quiet():
            for number, (cfg, latency) in self._pending.items():
                self._tell_trial(number, self._cache[cfg], latency)
        self._pending = {}
        self._done += 1

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Every finished trial (state, values, params in gene order, system attributes) and the study's
        system attributes (NSGA-II's parent cache): with the per-batch seed, all a resume needs."""
        if self._asked is not None:
            raise ValueError("state_dict() between ask() and tell(): tell the batch first")
        trials = [[t.state.name, None if t.values is None else [_float(v) for v in t.values],
                   [t.params[p] for p in self._params], t.system_attrs]
                  for t in self._study.get_trials(deepcopy=False)]
        return {"strategy": self.name, "done": self._done, "cache": self._cache_state(), "trials": trials,
                "study_attrs": self._db.get_study_system_attrs(self._db.get_study_id_from_name(_STUDY))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy") != self.name:
            raise ValueError(f"state of strategy '{state.get('strategy')}' given to '{self.name}'")
        study = self._new_study()
        frozen = [self._frozen(*row) for row in state["trials"]]
        with _quiet():
            study.add_trials(frozen)  # trial ids and numbers follow the same order as in the saved study
        self._study = study
        study_id = self._db.get_study_id_from_name(_STUDY)
        for key, value in state["study_attrs"].items():
            self._db.set_study_system_attr(study_id, key, value)
        self._done = int(state["done"])
        self._load_cache(state["cache"])
        self._pending, self._asked = {}, None

    def _frozen(self, state: str, values: list[Any] | None, params: list[Any],
                system_attrs: dict[str, Any]) -> FrozenTrial:
        return optuna.trial.create_trial(
            state=_STATES[state], values=None if values is None else [float(v) for v in values],
            params=dict(zip(self._params, params, strict=True)), distributions=self._distributions,
            system_attrs=system_attrs)


class NSGA2Search(OptunaSearch):
    """`OptunaSearch` with Optuna's NSGA-II sampler (population = `batch_size`)."""

    name = "nsga2"

    def __init__(self, problem: Problem, **options: Any):
        super().__init__(problem, sampler="nsga2", **options)


class TPESearch(OptunaSearch):
    """`OptunaSearch` with Optuna's multivariate TPE sampler."""

    name = "tpe"

    def __init__(self, problem: Problem, **options: Any):
        super().__init__(problem, sampler="tpe", **options)
