"""Device profiles, latency measurement and latency predictors (`hwnas.latency`, folder `latency/`).

The MetaSchedule roles: `Runner`s time built libraries (TVM local, TVM RPC, PyTorch eager) and return failures as
data; `MeasureConfig` is the frozen protocol stored with every `MeasurementRecord`; `MeasurementStore`s keep the
records (`SQLMeasurementStore` in the results database); `LatencyPredictor`s (HAT's MLP, the layerwise model) are
trained on them, stored per device and loaded by (kind, version). Devices are `DeviceProfile`s, built in or in the
`DeviceRegistry`.
"""

from hwnas.latency._collect import (
    CollectReport,
    InMemoryStore,
    MeasurementRecord,
    MeasurementStore,
    collect,
    distinct_subnets,
    drift_corrected,
    drift_factor,
    measure,
    reference_subnet,
    runner_for,
    tuning_key,
)
from hwnas.latency._devices import (
    DeviceProfile,
    builtin_device,
    builtin_devices,
    cpu_model,
    local_cpu_profile,
    local_fingerprint,
    measure_config,
    protocol_for,
)
from hwnas.latency._predictor import (
    PREDICTORS,
    HatMLPPredictor,
    LatencyPredictor,
    LayerwisePredictor,
    Sample,
    accuracy,
    create_predictor,
    hat_features,
)
from hwnas.latency._protocol import MeasureConfig, RunResult, cv, median, split_passes, trimmed_mean
from hwnas.latency._registry import (
    DeviceRegistry,
    SQLMeasurementStore,
    list_predictors,
    load_predictor,
    save_predictor,
    training_data_key,
)
from hwnas.latency._rpc import loopback_rpc, server_command, tracker_command
from hwnas.latency._runner import (
    RPCRunner,
    RunInput,
    Runner,
    TorchRunner,
    TVMLocalRunner,
    measure_torch,
    measure_tvm_local,
    parse_tracker,
    time_calls,
    tvm_device,
)
from hwnas.latency._training import split, train_predictors

__all__ = [
    "PREDICTORS",
    "CollectReport",
    "DeviceProfile",
    "DeviceRegistry",
    "HatMLPPredictor",
    "InMemoryStore",
    "LatencyPredictor",
    "LayerwisePredictor",
    "MeasureConfig",
    "MeasurementRecord",
    "MeasurementStore",
    "RPCRunner",
    "RunInput",
    "RunResult",
    "Runner",
    "SQLMeasurementStore",
    "Sample",
    "TVMLocalRunner",
    "TorchRunner",
    "accuracy",
    "builtin_device",
    "builtin_devices",
    "collect",
    "cpu_model",
    "create_predictor",
    "cv",
    "distinct_subnets",
    "drift_corrected",
    "drift_factor",
    "hat_features",
    "list_predictors",
    "load_predictor",
    "local_cpu_profile",
    "local_fingerprint",
    "loopback_rpc",
    "measure",
    "measure_config",
    "measure_torch",
    "measure_tvm_local",
    "median",
    "parse_tracker",
    "protocol_for",
    "reference_subnet",
    "runner_for",
    "save_predictor",
    "server_command",
    "split",
    "split_passes",
    "time_calls",
    "tracker_command",
    "train_predictors",
    "training_data_key",
    "trimmed_mean",
    "tuning_key",
    "tvm_device",
]
