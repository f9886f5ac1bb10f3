"""Training and versioning predictors from a device's stored measurements, with a held-out report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from hwnas.db import Database
from hwnas.exceptions import MeasurementError
from hwnas.latency._collect import drift_corrected, tuning_key
from hwnas.latency._devices import DeviceProfile, protocol_for
from hwnas.latency._predictor import accuracy, create_predictor
from hwnas.latency._registry import SQLMeasurementStore, save_predictor, training_data_key
from hwnas.search_spaces import SearchSpace

T = TypeVar("T")


def split(records: Sequence[T], test_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    order = np.random.default_rng(seed).permutation(len(records))
    n_test = max(1, int(round(test_fraction * len(records))))
    return [records[i] for i in order[n_test:]], [records[i] for i in order[:n_test]]


def train_predictors(db: Database, *, device: DeviceProfile, space: SearchSpace, kinds: Sequence[str],
                     tuning_dir: str | None, test_fraction: float = 0.2, constraint_ms: float | None = None,
                     seed: int = 0) -> list[dict[str, Any]]:
    """Fit each kind on a seeded split of the device's successful measurements; store and report."""
    protocol = protocol_for(device, space)
    # successful records, on one footing across sessions when the protocol has a reference
    usable, baseline = drift_corrected(SQLMeasurementStore(db).records(
        device=device.name, space=space.name, protocol_key=protocol.key(), tuning_key=tuning_key(tuning_dir)))
    if len(usable) < 10:
        raise MeasurementError(f"device '{device.name}' has {len(usable)} usable measurements of space "
                               f"'{space.name}'; collect more first (hwnas latency collect --device {device.name})")
    train, test = split(usable, test_fraction, seed)
    measured = np.array([s.latency_ms for _, s in test])
    out = []
    for kind in kinds:
        pred = create_predictor(kind, space, protocol.decode_steps).fit([s for _, s in train], seed=seed)
        metrics = accuracy(pred.predict([r.subnet for r, _ in test]), measured, constraint_ms=constraint_ms)
        if baseline is not None:
            metrics["reference_baseline_ms"] = baseline
        version = save_predictor(db, device=device, predictor=pred, metrics=metrics,
                                 data_key=training_data_key([r for r, _ in train]))
        out.append({"kind": kind, "version": version, "train": len(train), "test": len(test), "metrics": metrics})
    return out
