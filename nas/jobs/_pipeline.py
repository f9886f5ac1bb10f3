"""The method's steps before a search, on the workspace: train (and register) a supernet, tune kernels,
measure subnets, fit predictors. Each step reuses what the workspace already holds, so a rerun only adds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwnas.db import Database
from hwnas.jobs._supernets import SupernetInfo, register_supernet
from hwnas.kernels import TUNING_RECORDS, TuneReport, count_tuning_records, tune_space
from hwnas.latency import CollectReport, DeviceProfile, SQLMeasurementStore, collect
from hwnas.latency import train_predictors as _fit
from hwnas.search_spaces import SearchSpace
from hwnas.settings import Settings
from hwnas.supernet import DataSpec, ModelConfig, TrainConfig, read_checkpoint
from hwnas.supernet import train_supernet as _train

__all__ = ["choose_predictor", "default_vocab_size", "fit_predictors", "measure_subnets", "train_supernet",
           "tune_kernels", "tuning_records", "tuning_to_use"]


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


def tuning_to_use(device: DeviceProfile, space: str, *, untuned: bool = False,
                  settings: Settings | None = None) -> str | None:
    """The device's tuning database for the space, if it has one and it applies (TVM runtime)."""
    tdir = (settings or Settings()).tuning_dir(device.name, space)
    if untuned or device.runtime != "tvm" or not (tdir / TUNING_RECORDS).exists():
        return None
    return str(tdir)


def tuning_records(device: str, space: str, *, settings: Settings | None = None) -> int:
    """Trials in the (device, space) MetaSchedule database of the workspace."""
    return count_tuning_records((settings or Settings()).tuning_dir(device, space))


def tune_kernels(*, device: DeviceProfile, space: SearchSpace, model_config: ModelConfig, records: int,
                 settings: Settings | None = None) -> TuneReport | None:
    """Tune until the (device, space) database holds `records` MetaSchedule trials (None: it already does);
    the report lands beside the database."""
    settings = settings or Settings()
    have = tuning_records(device.name, space.name, settings=settings)
    if have >= records:
        return None
    out = settings.tuning_dir(device.name, space.name)
    report = tune_space(space=space, mc=model_config, target=device.target, work_dir=out, trials=records - have,
                        decode_steps=space.source_length_tokens)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report


def measure_subnets(db: Database, *, device: DeviceProfile, space: SearchSpace, model_config: ModelConfig, n: int,
                    seed: int = 0, build_workers: int = 2, untuned: bool = False, progress: bool = True,
                    settings: Settings | None = None) -> CollectReport:
    """Measure `n` seeded random subnets on the device with its tuning database (skipping those stored)."""
    return collect(device=device, space=space, model_config=model_config, n=n, store=SQLMeasurementStore(db),
                   seed=seed, tuning_dir=tuning_to_use(device, space.name, untuned=untuned, settings=settings),
                   build_workers=build_workers, progress=progress)


def fit_predictors(db: Database, *, device: DeviceProfile, space: SearchSpace,
                   kinds: Sequence[str] = ("layerwise", "hat-mlp"), test_fraction: float = 0.2, seed: int = 0,
                   constraint_ms: float | None = None, untuned: bool = False,
                   settings: Settings | None = None) -> list[dict[str, Any]]:
    """Fit and store predictors of each kind on the device's measurements (under its tuning database), with
    held-out metrics; returns one summary per kind (`kind`, `version`, `metrics`, `train`, `test`)."""
    tuning_dir = tuning_to_use(device, space.name, untuned=untuned, settings=settings)
    return _fit(db, device=device, space=space, kinds=kinds, test_fraction=test_fraction, seed=seed,
                constraint_ms=constraint_ms, tuning_dir=tuning_dir)


def choose_predictor(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary with the lowest held-out MAPE."""
    return min(results, key=lambda r: r["metrics"]["mape"])
