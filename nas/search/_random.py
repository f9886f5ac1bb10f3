"""Random search: the baseline every strategy must beat at an equal evaluation budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hwnas.search._base import Evaluation, Problem, Strategy, rng_from_state, rng_state
from hwnas.search_spaces import SubnetConfig


class RandomSearch(Strategy):
    """`batches` batches of `batch_size` distinct feasible subnets drawn uniformly."""

    name = "random"

    def __init__(self, problem: Problem, *, batch_size: int = 125, batches: int = 30, seed: int = 0,
                 max_attempts_per_subnet: int = 200):
        super().__init__()
        if batch_size < 1 or batches < 1:
            raise ValueError("batch_size and batches must be >= 1")
        self.problem, self.batch_size, self.batches = problem, batch_size, batches
        self.max_attempts_per_subnet = max_attempts_per_subnet
        self._rng = np.random.default_rng(seed)
        self._done = 0

    @property
    def progress(self) -> tuple[int, int]:
        return self._done, self.batches

    def ask(self) -> list[SubnetConfig] | None:
        if self._done >= self.batches:
            return None
        space = self.problem.space
        drawn = self.problem.draw_feasible(self.batch_size, lambda: space.sample(self._rng), what="random subnets",
                                           max_attempts=self.max_attempts_per_subnet * self.batch_size)
        self._asked = list(dict.fromkeys(c for c in drawn if c not in self._cache))
        return list(self._asked)

    def tell(self, subnets: Sequence[SubnetConfig], evaluations: Sequence[Evaluation]) -> None:
        self._record(subnets, evaluations)
        self._done += 1

    def state_dict(self) -> dict[str, Any]:
        return {"strategy": self.name, "done": self._done, "rng": rng_state(self._rng), "cache": self._cache_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy") != self.name:
            raise ValueError(f"state of strategy '{state.get('strategy')}' given to '{self.name}'")
        self._done, self._rng = int(state["done"]), rng_from_state(state["rng"])
        self._load_cache(state["cache"])
        self._asked = None
