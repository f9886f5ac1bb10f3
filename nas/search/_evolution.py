"""HAT's evolutionary search (population 125, parents 25, 50 mutations at p=0.3, 50 crossovers, 30 generations).

Differences from HAT, on purpose: evaluated subnets are cached in canonical form (HAT re-evaluates
its parents every generation), constrained sampling is bounded (HAT loops forever on an
infeasible budget), and the whole state (population, cache, RNG) is JSON, so a killed search resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hwnas.search._base import Evaluation, Problem, Strategy, rng_from_state, rng_state
from hwnas.search_spaces import SubnetConfig


class EvolutionarySearch(Strategy):
    """One batch = the not-yet-evaluated members of the current generation's population."""

    name = "evo"

    def __init__(self, problem: Problem, *, population: int = 125, parents: int = 25, mutations: int = 50,
                 crossovers: int = 50, mutation_prob: float = 0.3, generations: int = 30, seed: int = 0,
                 max_attempts_per_child: int = 200):
        super().__init__()
        if population != parents + mutations + crossovers:
            raise ValueError(f"population ({population}) must equal parents + mutations + crossovers "
                             f"({parents} + {mutations} + {crossovers})")
        if parents < 2 or generations < 1 or not 0 < mutation_prob <= 1:
            raise ValueError("need parents >= 2, generations >= 1 and 0 < mutation_prob <= 1")
        self.problem = problem
        self.population_size, self.parents, self.mutations, self.crossovers = population, parents, mutations, crossovers
        self.mutation_prob, self.generations = mutation_prob, generations
        self.max_attempts_per_child = max_attempts_per_child
        self._rng = np.random.default_rng(seed)
        self._generation = 0
        self._population: list[SubnetConfig] | None = None  # drawn on the first ask (may be infeasible)

    @property
    def progress(self) -> tuple[int, int]:
        return self._generation, self.generations

    def _draw(self, n: int, propose: Any, what: str) -> list[SubnetConfig]:
        return self.problem.draw_feasible(n, propose, what=what, max_attempts=self.max_attempts_per_child * n)

    def ask(self) -> list[SubnetConfig] | None:
        if self._generation >= self.generations:
            return None
        if self._population is None:
            space = self.problem.space
            self._population = self._draw(self.population_size, lambda: space.sample(self._rng), "initial population")
        self._asked = list(dict.fromkeys(c for c in self._population if c not in self._cache))
        return list(self._asked)

    def tell(self, subnets: Sequence[SubnetConfig], evaluations: Sequence[Evaluation]) -> None:
        self._record(subnets, evaluations)
        parents = self.top_parents()
        self._generation += 1
        if self._generation < self.generations:
            self._population = parents + self._children(parents)

    def top_parents(self) -> list[SubnetConfig]:
        """The `parents` best distinct evaluated members of the current population (stable on ties)."""
        # Between batches the population holds unevaluated children: they cannot be ranked yet
        members = [c for c in dict.fromkeys(self._population or []) if c in self._cache]
        members.sort(key=lambda c: self._cache[c].fitness())
        return members[:self.parents]

    def _children(self, parents: list[SubnetConfig]) -> list[SubnetConfig]:
        space, rng = self.problem.space, self._rng

        def mutant() -> SubnetConfig:
            return space.mutate(parents[int(rng.integers(len(parents)))], self.mutation_prob, rng)

        def cross() -> SubnetConfig:
            i, j = rng.choice(len(parents), size=2, replace=False)
            return space.crossover(parents[int(i)], parents[int(j)], rng)

        return self._draw(self.mutations, mutant, "mutation") + self._draw(self.crossovers, cross, "crossover")

    def state_dict(self) -> dict[str, Any]:
        return {"strategy": self.name, "generation": self._generation, "rng": rng_state(self._rng),
                "population": None if self._population is None else [c.to_dict() for c in self._population],
                "cache": self._cache_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy") != self.name:
            raise ValueError(f"state of strategy '{state.get('strategy')}' given to '{self.name}'")
        self._generation = int(state["generation"])
        self._rng = rng_from_state(state["rng"])
        pop = state["population"]
        self._population = None if pop is None else [SubnetConfig.from_dict(c) for c in pop]
        self._load_cache(state["cache"])
        self._asked = None
