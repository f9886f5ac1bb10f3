"""The method's steps before a search, on the workspace: train (and register) a supernet, tune kernels,
measure subnets, fit predictors. Each step reuses what the workspace already holds, so a rerun only adds."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwnas.db import Database
from hwnas.jobs._store import tuning_to_use
from hwnas.jobs._supernets import SupernetInfo, register_supernet
from hwnas.kernels import TuneReport, count_tuning_records, tune_space
from hwnas.latency import (
    CollectReport,
    DeviceProfile,
    DeviceRegistry,
    SQLMeasurementStore,
    collect,
    load_predictor,
    tuning_runner,
    tuning_target,
)
from hwnas.latency import train_predictors as _fit
from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.settings import Settings
from hwnas.supernet import DataSpec, ModelConfig, TrainConfig, read_checkpoint
from hwnas.supernet import train_supernet as _train

__all__ = ["LatencyPrediction", "choose_predictor", "default_vocab_size", "fit_predictors", "measure_subnets",
           "predict_latency", "train_supernet", "tune_kernels", "tuning_records"]


def default_vocab_size(space: str) -> int:
    """The output layer is part of the latency: quickstart's tokenizer has 4000 entries, HAT's WMT BPE ~32K."""
    return 4000 if Path(space).stem == "quickstart" else 32768


def train_supernet(db: Database, *, space: SearchSpace, data: str = "bible:de-en", config: TrainConfig = TrainConfig(),
                   out: str | Path | None = None, resume: bool = True, progress: bool = True,
                   settings: Settings | None = None) -> SupernetInfo:
    """Train the space's supernet to `config.steps` (in the workspace unless `out`) and register it.

    A checkpoint of the same space already at `config.steps` or further is registered as it is (when
    `resume`); a shorter one is continued.
    """
    spec = DataSpec.parse(data)
    out = Path(out) if out is not None else (settings or Settings()).supernet_dir(space.name, str(spec))
    ckpt = out / "checkpoint.pt"
    state = read_checkpoint(ckpt) if resume and ckpt.exists() else None
    if state is None or state["space"] != space.to_dict() or int(state["step"]) < config.steps:
        _train(space=space, data=spec, out=out, config=config, resume=resume, progress=progress)
    return register_supernet(db, ckpt)


def tuning_records(device: str, space: str, *, settings: Settings | None = None) -> int:
    """Trials in the (device, space) MetaSchedule database of the workspace."""
    return count_tuning_records((settings or Settings()).tuning_dir(device, space))


def tune_kernels(*, device: DeviceProfile, space: SearchSpace, model_config: ModelConfig, records: int,
                 settings: Settings | None = None) -> TuneReport | None:
    """Tune until the (device, space) database holds `records` MetaSchedule trials (None: it already does);
    the report lands beside the database. Candidates are timed where the device is (`tuning_runner`): on this
    machine, or on a remote device's boards through its tracker."""
    settings = settings or Settings()
    runner = tuning_runner(device)  # before anything else: a remote device's boards must be there
    have = tuning_records(device.name, space.name, settings=settings)
    if have >= records:
        return None
    out = settings.tuning_dir(device.name, space.name)
    report = tune_space(space=space, mc=model_config, target=tuning_target(device), work_dir=out,
                        trials=records - have, decode_steps=space.source_length_tokens, runner=runner)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report


def measure_subnets(db: Database, *, device: DeviceProfile, space: SearchSpace, model_config: ModelConfig, n: int,
                    seed: int = 0, build_workers: int = 2, untuned: bool = False, progress: bool = True,
                    settings: Settings | None = None) -> CollectReport:
    """Measure `n` seeded random subnets on the device with its tuning database (skipping those stored); the
    reference subnet's build is kept under the workspace for later collections and verifications."""
    settings = settings or Settings()
    return collect(device=device, space=space, model_config=model_config, n=n, store=SQLMeasurementStore(db),
                   seed=seed, tuning_dir=tuning_to_use(device, space.name, untuned=untuned, settings=settings),
                   build_workers=build_workers, progress=progress, reference_root=settings.reference_builds_dir())


def fit_predictors(db: Database, *, device: DeviceProfile, space: SearchSpace, model_config: ModelConfig,
                   kinds: Sequence[str] = ("layerwise", "hat-mlp"), test_fraction: float = 0.2, seed: int = 0,
                   constraint_ms: float | None = None, untuned: bool = False,
                   settings: Settings | None = None) -> list[dict[str, Any]]:
    """Fit and store predictors of each kind on the measurements of the device's current revision of the
    model under its tuning database, with held-out metrics; returns one summary per kind (`kind`, `version`,
    `revision`, `metrics`, `train`, `test`)."""
    tuning_dir = tuning_to_use(device, space.name, untuned=untuned, settings=settings)
    return _fit(db, device=device, space=space, model_config=model_config, kinds=kinds,
                test_fraction=test_fraction, seed=seed, constraint_ms=constraint_ms, tuning_dir=tuning_dir)


def choose_predictor(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary with the lowest held-out MAPE."""
    return min(results, key=lambda r: r["metrics"]["mape"])


@dataclasses.dataclass(frozen=True)
class LatencyPrediction:
    """A predicted latency with what it rests on: the predictor (kind, version), the device revision, and the
    predictor's held-out error (`error_ms` = held-out MAPE x the prediction)."""

    device: str
    revision: int
    space: str
    subnet: dict[str, Any]
    latency_ms: float
    error_ms: float
    kind: str
    version: int
    mape: float
    within_10pct: float
    model_key: str
    tuning_key: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def predict_latency(db: Database, *, device: DeviceProfile, space: SearchSpace, model_config: ModelConfig,
                    subnet: SubnetConfig, kind: str | None = None, version: int | None = None,
                    revision: int | None = None, untuned: bool = False,
                    settings: Settings | None = None) -> LatencyPrediction:
    """Predict `subnet`'s latency on the device (its current revision unless `revision`) with the predictor of
    exactly that provenance (the newest of `kind`, or `kind` v`version`).

    Raises:
        SearchSpaceError: the subnet lies outside the space.
        NotFoundError: no such revision, or no predictor of this provenance (the message lists those stored).
    """
    space.validate(subnet)
    tuning_dir = tuning_to_use(device, space.name, untuned=untuned, settings=settings)
    prov = DeviceRegistry(db).provenance(device, space, model_config, tuning_dir, revision=revision)
    predictor, info = load_predictor(db, prov, kind=kind, version=version)
    ms = float(predictor.predict([subnet])[0])
    metrics = info["metrics"]
    mape = float(metrics.get("mape", float("nan")))
    return LatencyPrediction(device.name, prov.revision, space.name, subnet.to_dict(), ms, mape * ms, info["kind"],
                             info["version"], mape, float(metrics.get("within_10pct", float("nan"))), prov.model_key,
                             prov.tuning_key)
