"""Device profiles, latency measurement (TVM, PyTorch; local and RPC) and latency predictors."""

from hwnas.latency._protocol import MeasureConfig, RunResult, cv, median, trimmed_mean
from hwnas.latency._runner import RPCRunner, RunInput, Runner, TorchRunner, TVMLocalRunner, time_calls

__all__ = [
    "MeasureConfig",
    "RPCRunner",
    "RunInput",
    "RunResult",
    "Runner",
    "TVMLocalRunner",
    "TorchRunner",
    "cv",
    "median",
    "time_calls",
    "trimmed_mean",
]
