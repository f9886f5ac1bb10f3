"""The measurement protocol (frozen, stored with every record) and the results it produces."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    """How a subnet is timed. HAT: batch 1, 30 source tokens (23 for IWSLT), as many decoder steps.

    One sentence = `encoder + decode_steps x decoder_step`, each step over a key/value cache
    of `decode_steps` slots. Each timed run is `number` back-to-back calls; raw per-run times
    are kept and statistics derived at read time.
    """

    batch_size: int = 1
    source_length_tokens: int = 30
    decode_steps: int = 30
    warmup_runs: int = 5
    timed_runs: int = 100  # bench/noise.py: 20 runs left 30% between-session spread here, 100 left 9%
    number: int = 1
    threads: int | None = None  # pinned thread count; None = every core of the device
    cooldown_ms: int = 0

    def __post_init__(self) -> None:
        for f in ("batch_size", "source_length_tokens", "decode_steps", "timed_runs", "number"):
            if getattr(self, f) < 1:
                raise ValueError(f"MeasureConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.warmup_runs < 0 or self.cooldown_ms < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError("MeasureConfig: warmup_runs and cooldown_ms must be >= 0, threads >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasureConfig:
        return cls(**data)


def median(values: Sequence[float]) -> float:
    return float(np.median(values))


def trimmed_mean(values: Sequence[float], trim: float = 0.1) -> float:
    """Mean of the middle values, `trim` cut from each end (HAT keeps 10%-90%)."""
    v = np.sort(np.asarray(values, dtype=float))
    k = int(math.floor(len(v) * trim))
    return float(v[k: len(v) - k].mean()) if len(v) > 2 * k else float(v.mean())


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation (std / mean) of the raw runs."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / v.mean()) if len(v) > 1 and v.mean() > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Raw timings of one subnet on one device, or the error that stopped it (never both)."""

    encoder_ms: tuple[float, ...] | None = None
    decoder_step_ms: tuple[float, ...] | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        timed = self.encoder_ms is not None and self.decoder_step_ms is not None
        if timed == (self.error is not None) or (not timed and (self.encoder_ms or self.decoder_step_ms)):
            raise ValueError("RunResult needs both timing lists or an error, not both")
        if timed and (not self.encoder_ms or not self.decoder_step_ms):
            raise ValueError("RunResult timing lists must not be empty")

    @property
    def ok(self) -> bool:
        return self.error is None

    def latency_ms(self, decode_steps: int) -> float:
        """End-to-end median latency of one sentence: encoder + steps x decoder step."""
        if self.encoder_ms is None or self.decoder_step_ms is None:
            raise ValueError(f"no latency: the run failed ({self.error})")
        return median(self.encoder_ms) + decode_steps * median(self.decoder_step_ms)

    def latency_cv(self) -> float:
        """Noise of the measurement: the larger CV of its two parts."""
        if self.encoder_ms is None or self.decoder_step_ms is None:
            raise ValueError(f"no latency: the run failed ({self.error})")
        return max(cv(self.encoder_ms), cv(self.decoder_step_ms))
