"""The contract every search strategy meets: batch ask/tell over canonical subnets, with resumable state.

A strategy never sees a runner, a supernet or a database: it proposes subnets (`ask`), hears
their `Evaluation`s (`tell`) and can be frozen to JSON (`state_dict`) between batches. The
latency constraints it must respect come as a `Problem`: predictors behind a callable.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hwnas.exceptions import InfeasibleConstraintError
from hwnas.search_spaces import SearchSpace, SubnetConfig

__all__ = ["Evaluation", "LatencyConstraint", "Problem", "Strategy"]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What one subnet scored: the fitness (lower is better) or why it could not be scored.

    `loss` is the validation loss with inherited weights (or, for BLEU fitness, -BLEU), so every
    strategy minimises it. A failed or non-finite evaluation counts as infeasible, never as good.
    """

    loss: float | None
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.loss is None) == (self.error is None):
            raise ValueError("Evaluation needs a loss or an error, not both")

    @property
    def ok(self) -> bool:
        return self.loss is not None and math.isfinite(self.loss)

    def fitness(self) -> float:
        """The loss, or +inf for a failed / non-finite evaluation (so it ranks last)."""
        return float(self.loss) if self.ok else math.inf  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class LatencyConstraint:
    """`predict(subnets)` (ms, one per subnet) must stay at or under `max_latency_ms`."""

    device: str
    max_latency_ms: float
    predict: Callable[[Sequence[SubnetConfig]], np.ndarray]

    def __post_init__(self) -> None:
        if not (self.max_latency_ms > 0 and math.isfinite(self.max_latency_ms)):
            raise ValueError(f"max_latency_ms must be a positive number, got {self.max_latency_ms}")


@dataclasses.dataclass(frozen=True)
class Problem:
    """A search space and the latency constraints a returned subnet must meet (all of them)."""

    space: SearchSpace
    constraints: tuple[LatencyConstraint, ...] = ()

    def latencies_ms(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        """Predicted latency per (subnet, constraint): shape (len(subnets), len(constraints))."""
        if not self.constraints or not subnets:
            return np.zeros((len(subnets), len(self.constraints)))
        return np.stack([np.asarray(c.predict(subnets), dtype=float).reshape(len(subnets))
                         for c in self.constraints], axis=1)

    def violation(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        """Largest relative excess over a budget per subnet (<= 0 = feasible)."""
        if not self.constraints:
            return np.zeros(len(subnets))
        budgets = np.array([c.max_latency_ms for c in self.constraints])
        return ((self.latencies_ms(subnets) - budgets) / budgets).max(axis=1)

    def feasible(self, subnets: Sequence[SubnetConfig]) -> np.ndarray:
        return self.violation(subnets) <= 0

    def draw_feasible(self, n: int, propose: Callable[[], SubnetConfig], *, what: str,
                      max_attempts: int) -> list[SubnetConfig]:
        """`n` feasible subnets from `propose()`, checked in batches, giving up after `max_attempts` proposals.

        Raises:
            InfeasibleConstraintError: fewer than `n` feasible subnets in `max_attempts` proposals;
                the message names the least-violating subnet seen and its predicted latency.
        """
        found: list[SubnetConfig] = []
        best: tuple[float, SubnetConfig | None] = (math.inf, None)
        attempts = 0
        while len(found) < n and attempts < max_attempts:  # bounded: at most max_attempts proposals
            chunk = [propose() for _ in range(min(max(2 * (n - len(found)), 8), max_attempts - attempts))]
            attempts += len(chunk)
            viol = self.violation(chunk)
            for cfg, v in zip(chunk, viol, strict=True):
                if v <= 0 and len(found) < n:
                    found.append(cfg)
                if v < best[0]:
                    best = (float(v), cfg)
        if len(found) < n:
            raise InfeasibleConstraintError(self.infeasible_message(what, n, len(found), attempts, best[1]))
        return found

    def infeasible_message(self, what: str, n: int, got: int, attempts: int, best: SubnetConfig | None) -> str:
        budgets = ", ".join(f"{c.max_latency_ms:g} ms on {c.device}" for c in self.constraints)
        msg = (f"no {what}: none of {attempts} sampled subnets met the latency budget ({budgets})" if n == 1 else
               f"no {what}: {got} of {n} subnets met the latency budget ({budgets}) in {attempts} tries")
        if best is not None:
            lat = ", ".join(f"{v:.2f} ms" for v in self.latencies_ms([best])[0])
            msg += f"; the fastest found is predicted at {lat} (subnet {best.key()})"
        return msg


class Strategy(abc.ABC):
    """A batch ask/tell search over one `Problem`.

    Contract: `ask()` returns the next batch of distinct, feasible, not-yet-evaluated subnets
    (possibly empty when everything proposed was already evaluated), or None when the search is
    done; each batch must be `tell`-ed before the next `ask`. `state_dict()` (JSON-serialisable)
    taken between batches and loaded into a fresh strategy built with the same arguments
    continues exactly where the original would have. Strategies are not thread-safe.
    """

    name: str = ""

    def __init__(self) -> None:
        self._cache: dict[SubnetConfig, Evaluation] = {}
        self._asked: list[SubnetConfig] | None = None

    @abc.abstractmethod
    def ask(self) -> list[SubnetConfig] | None: ...

    @abc.abstractmethod
    def tell(self, subnets: Sequence[SubnetConfig], evaluations: Sequence[Evaluation]) -> None: ...

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @property
    @abc.abstractmethod
    def progress(self) -> tuple[int, int]:
        """(batches done, batches planned), for progress bars."""

    def evaluated(self) -> dict[SubnetConfig, Evaluation]:
        """Every subnet told so far with its evaluation (the strategy's cache)."""
        return dict(self._cache)

    def best(self) -> tuple[SubnetConfig, Evaluation] | None:
        """The lowest-fitness subnet told so far (None before any successful evaluation)."""
        ok = [(c, e) for c, e in self._cache.items() if e.ok]
        return min(ok, key=lambda ce: ce[1].fitness()) if ok else None

    def _record(self, subnets: Sequence[SubnetConfig], evaluations: Sequence[Evaluation]) -> None:
        check_told(self._asked, subnets, evaluations)
        self._cache.update(zip(subnets, evaluations, strict=True))
        self._asked = None

    def _cache_state(self) -> list[list[Any]]:
        return [[c.to_dict(), evaluation_to_dict(e)] for c, e in self._cache.items()]

    def _load_cache(self, items: list[list[Any]]) -> None:
        self._cache = {SubnetConfig.from_dict(c): evaluation_from_dict(e) for c, e in items}


def check_told(asked: list[SubnetConfig] | None, subnets: Sequence[SubnetConfig],
               evaluations: Sequence[Evaluation]) -> None:
    """Input check shared by strategies: `tell` must answer the last `ask`, one evaluation each."""
    if asked is None:
        raise ValueError("tell() without a pending ask()")
    if len(subnets) != len(evaluations):
        raise ValueError(f"{len(subnets)} subnets but {len(evaluations)} evaluations")
    if len(subnets) != len(asked) or set(subnets) != set(asked):  # a batch is distinct: same set and size
        raise ValueError("tell() must answer exactly the subnets of the last ask()")


def evaluation_to_dict(e: Evaluation) -> dict[str, Any]:
    # JSON has no inf/nan: a non-finite loss is kept as its string form
    loss = e.loss if e.loss is None or math.isfinite(e.loss) else repr(e.loss)
    return {"loss": loss, "error": e.error}


def evaluation_from_dict(d: dict[str, Any]) -> Evaluation:
    loss = d["loss"]
    return Evaluation(float(loss) if loss is not None else None, d["error"])


def rng_state(rng: np.random.Generator) -> str:
    # PCG64 state holds 128-bit integers: kept as a JSON string so no database rounds them
    return json.dumps(rng.bit_generator.state)


def rng_from_state(state: str) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(state)
    return rng
