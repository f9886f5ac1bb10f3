"""Pareto fronts (all objectives minimised) and the 2-D hypervolume used to compare strategies."""

from __future__ import annotations

import numpy as np


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """True for rows no other row dominates (<= everywhere, < somewhere); of exact duplicates only the first."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be 2-D (n, objectives), got shape {pts.shape}")
    keep = np.ones(len(pts), dtype=bool)
    for i in range(len(pts)):
        others = np.delete(np.arange(len(pts)), i)
        le = (pts[others] <= pts[i]).all(axis=1)
        dominated = le & (pts[others] < pts[i]).any(axis=1)
        duplicate_before = (pts[others] == pts[i]).all(axis=1) & (others < i)
        keep[i] = not (dominated.any() or duplicate_before.any())
    return keep


def hypervolume_2d(points: np.ndarray, reference: tuple[float, float]) -> float:
    """Area dominated by `points` (n, 2) and bounded by `reference` (points beyond it add nothing)."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[(pts[:, 0] < reference[0]) & (pts[:, 1] < reference[1])]
    if len(pts) == 0:
        return 0.0
    pts = pts[pareto_mask(pts)]
    pts = pts[np.argsort(pts[:, 0])]  # x ascending -> y descending along a front
    area, prev_y = 0.0, reference[1]
    for x, y in pts:
        area += (reference[0] - x) * (prev_y - y)
        prev_y = y
    return float(area)
