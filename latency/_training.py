"""Training and versioning predictors from a device's stored measurements, with a held-out report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from hwnas.db import Database
from hwnas.exceptions import MeasurementError
from hwnas.latency._collect import drift_corrected
from hwnas.latency._devices import DeviceProfile
from hwnas.latency._predictor import accuracy, create_predictor
from hwnas.latency._registry import DeviceRegistry, SQLMeasurementStore, save_predictor, training_data_key
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig

T = TypeVar("T")


def split(records: Sequence[T], test_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    order = np.random.default_rng(seed).permutation(len(records))
    n_test = max(1, int(round(test_fraction * len(records))))
    return [records[i] for i in order[n_test:]], [records[i] for i in order[:n_test]]


def train_predictors(db: Database, *, device: DeviceProfile, space: SearchSpace, model_config: ModelConfig,
                     kinds: Sequence[str], tuning_dir: str | None, test_fraction: float = 0.2,
                     constraint_ms: float | None = None, seed: int = 0,
                     revision: int | None = None) -> list[dict[str, Any]]:
    """Fit each kind on a seeded split of the successful measurements of one provenance (the device's current
    revision unless `revision`, the space, the model, the device's protocol, the tuning database); store each
    with that provenance and report. Measurements of other revisions, models or kernels never mix in."""
    prov = DeviceRegistry(db).provenance(device, space, model_config, tuning_dir, revision=revision)
    # successful records, on one footing across sessions when the protocol has a reference
    usable, baseline = drift_corrected(SQLMeasurementStore(db).records_of(prov))
    if len(usable) < 10:
        raise MeasurementError(f"{prov.describe()} has {len(usable)} usable measurements; collect more first "
                               f"(hwnas latency collect --device {device.name} --space {space.name})")
    train, test = split(usable, test_fraction, seed)
    measured = np.array([s.latency_ms for _, s in test])
    decode_steps = usable[0][0].protocol.decode_steps
    out = []
    for kind in kinds:
        pred = create_predictor(kind, space, decode_steps).fit([s for _, s in train], seed=seed)
        metrics = accuracy(pred.predict([r.subnet for r, _ in test]), measured, constraint_ms=constraint_ms)
        if baseline is not None:
            metrics["reference_baseline_ms"] = baseline
        version = save_predictor(db, device=device, provenance=prov, predictor=pred, metrics=metrics,
                                 data_key=training_data_key([r for r, _ in train]))
        out.append({"kind": kind, "version": version, "revision": prov.revision, "train": len(train),
                    "test": len(test), "metrics": metrics})
    return out
