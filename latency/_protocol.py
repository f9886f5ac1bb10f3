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

    `passes` splits the `timed_runs` into that many equal passes (it must divide them), each
    after its own `warmup_runs`. A runner that times a batch of subnets on this machine
    interleaves them: pass 1 of every subnet, then pass 2 of every subnet, ... so a slow spell
    of a shared CPU hits every subnet of the batch alike. A record's latency is then the
    fastest pass's median figure (`RunResult.latency_ms`): the measurement from the quietest
    period. `passes=1` is the classic protocol; it serializes (and is keyed) exactly as before
    `passes` existed, so older records and predictors keep their keys.

    `reference` times one fixed subnet (the space's smallest) in every batch too, interleaved
    with the others, and stores its latency with each record of the batch (`reference_ms`).
    A shared or virtual machine drifts by 5-20% between minutes (bench/noise.py) and the drift
    hits every subnet of a session alike, so a training set can be put on one footing:
    `latency x median(reference) / reference of its session` (`drift_corrected`). False
    serializes as before (`reference` is left out of the dict and key).
    """

    batch_size: int = 1
    source_length_tokens: int = 30
    decode_steps: int = 30
    warmup_runs: int = 5
    timed_runs: int = 100  # bench/noise.py: 20 runs left 30% between-session spread here, 100 left 9%
    number: int = 1
    threads: int | None = None  # pinned thread count; None = every core of the device
    cooldown_ms: int = 0
    passes: int = 1  # >= 1, dividing timed_runs; latency = the fastest pass's medians (see above)
    reference: bool = False  # time the space's smallest subnet with every batch (see above)

    def __post_init__(self) -> None:
        for f in ("batch_size", "source_length_tokens", "decode_steps", "timed_runs", "number", "passes"):
            if getattr(self, f) < 1:
                raise ValueError(f"MeasureConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.warmup_runs < 0 or self.cooldown_ms < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError("MeasureConfig: warmup_runs and cooldown_ms must be >= 0, threads >= 1")
        if self.timed_runs % self.passes:
            raise ValueError(f"MeasureConfig.timed_runs ({self.timed_runs}) must be a multiple of passes "
                             f"({self.passes}): every pass times timed_runs / passes runs")

    @property
    def runs_per_pass(self) -> int:
        return self.timed_runs // self.passes

    def to_dict(self) -> dict[str, Any]:
        """Every field; `passes` only when it is not 1 and `reference` only when set, so the classic
        protocol's dict and key are unchanged."""
        d = dataclasses.asdict(self)
        if d["passes"] == 1:
            del d["passes"]
        if not d["reference"]:
            del d["reference"]
        return d

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


def split_passes(values: Sequence[float], passes: int) -> list[Sequence[float]]:
    """Raw runs (in run order) cut into `passes` equal consecutive passes."""
    if passes < 1 or len(values) % passes:
        raise ValueError(f"{len(values)} runs do not split into {passes} equal passes")
    k = len(values) // passes
    return [values[i * k:(i + 1) * k] for i in range(passes)]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Raw timings of one subnet on one device, or the error that stopped it (never both).

    The timings are in run order; with `MeasureConfig.passes > 1` that is pass 1's runs, then
    pass 2's, ... The figures take the pass count as an argument (the protocol's). A remote device's
    result names the board that timed it (`board`), failures included where one was reached.
    """

    encoder_ms: tuple[float, ...] | None = None
    decoder_step_ms: tuple[float, ...] | None = None
    error: str | None = None
    board: str | None = None  # which board of a remote device ran it ("HOST:PORT" of its RPC server)

    def __post_init__(self) -> None:
        timed = self.encoder_ms is not None and self.decoder_step_ms is not None
        if timed == (self.error is not None) or (not timed and (self.encoder_ms or self.decoder_step_ms)):
            raise ValueError("RunResult needs both timing lists or an error, not both")
        if timed and (not self.encoder_ms or not self.decoder_step_ms):
            raise ValueError("RunResult timing lists must not be empty")

    @property
    def ok(self) -> bool:
        return self.error is None

    def _timings(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.encoder_ms is None or self.decoder_step_ms is None:
            raise ValueError(f"no latency: the run failed ({self.error})")
        return self.encoder_ms, self.decoder_step_ms

    def pass_latencies_ms(self, decode_steps: int, passes: int = 1) -> list[float]:
        """Each pass's median sentence latency: median(encoder) + steps x median(decoder step) of that pass."""
        enc, dec = self._timings()
        return [median(e) + decode_steps * median(d)
                for e, d in zip(split_passes(enc, passes), split_passes(dec, passes), strict=True)]

    def best_pass(self, decode_steps: int, passes: int = 1) -> int:
        """Index of the fastest (quietest) pass; the first one on a tie."""
        lat = self.pass_latencies_ms(decode_steps, passes)
        return lat.index(min(lat))

    def parts_ms(self, decode_steps: int, passes: int = 1) -> tuple[float, float]:
        """(median encoder, median decoder step) of the fastest pass: the two parts of `latency_ms`."""
        enc, dec = self._timings()
        p = self.best_pass(decode_steps, passes)
        return median(split_passes(enc, passes)[p]), median(split_passes(dec, passes)[p])

    def latency_ms(self, decode_steps: int, passes: int = 1) -> float:
        """End-to-end latency of one sentence: the minimum over passes of that pass's
        median(encoder) + decode_steps x median(decoder step). `passes` is the protocol's
        (`MeasureConfig.passes`); with 1 it is the median over all runs."""
        enc, dec = self.parts_ms(decode_steps, passes)
        return enc + decode_steps * dec

    def latency_cv(self, passes: int = 1, *, decode_steps: int | None = None) -> float:
        """Noise of the runs the latency was taken from: the larger CV of its two parts.

        With `passes > 1` these are the runs of the fastest pass (chosen by `decode_steps`,
        then required), so the figure is the within-pass noise of the quietest period: it
        leaves out the between-pass drift that the minimum discards (so it is usually lower
        than the CV over all runs, `cv(encoder_ms)`). With one pass: all runs, as before.
        """
        enc, dec = self._timings()
        if passes == 1:
            return max(cv(enc), cv(dec))
        if decode_steps is None:
            raise ValueError("latency_cv with passes > 1 needs decode_steps (it picks the fastest pass)")
        p = self.best_pass(decode_steps, passes)
        return max(cv(split_passes(enc, passes)[p]), cv(split_passes(dec, passes)[p]))
