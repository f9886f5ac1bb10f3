"""The Pareto plot of a job: every candidate, the front, and the front's measured latencies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

from hwnas.io import atomic_write
from hwnas.jobs._store import CandidateRow, FrontMember


def plot_front(path: Path, *, title: str, rows: Sequence[CandidateRow], members: Sequence[FrontMember],
               budget_ms: float) -> Path:
    """Write a PNG: loss vs latency (predicted for all, measured for the front), with the budget line."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    # The casts drop `None` from values that are never None there: filtered `ok`/`measured`; front members are
    # evaluated candidates, so their loss is set.
    ok = [r for r in rows if r.loss is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r.predicted_latency_ms for r in ok], cast(list[float], [r.loss for r in ok]), s=8, c="0.75",
               label="candidates (predicted)")
    front = sorted(members, key=lambda m: m.candidate.predicted_latency_ms)
    # markers, no line: the front is over (loss, latency, params, FLOPs), so in this 2-D view it is no staircase
    ax.plot([m.candidate.predicted_latency_ms for m in front], cast(list[float], [m.candidate.loss for m in front]),
            "o", c="tab:blue", ms=4, label="front members (predicted)")
    measured = [m for m in front if m.measured_latency_ms is not None]
    if measured:
        ax.scatter(cast(list[float], [m.measured_latency_ms for m in measured]),
                   cast(list[float], [m.candidate.loss for m in measured]), marker="x",
                   c=["tab:green" if m.meets_constraint else "tab:red" for m in measured], s=40,
                   label="front, measured on device")
    ax.axvline(budget_ms, ls="--", c="k", lw=1, label=f"budget {budget_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("valid loss (inherited weights)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path
