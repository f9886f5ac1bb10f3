"""TVM-compiled kernels for standalone SubTransformers (`hwnas.kernels`, folder `kernels/`): the Builder role.

A subnet becomes two fixed-shape graphs (the encoder, one decoder step over a key/value cache), exported with
torch.export, compiled by TVM Relax into one library (`TVMBuilder`, `build_one`); `tune_space` tunes every
workload of a search space once per (device, space) with MetaSchedule.
"""

from hwnas.kernels._build import (
    DECODER_STEP,
    ENCODER,
    BuildInput,
    BuildResult,
    TVMBuilder,
    build_one,
    compile_module,
    cuda_target,
    export_relax,
    host_target,
    make_target,
    prepare,
    subnet_model,
)
from hwnas.kernels._graphs import DecoderStepGraph, EncoderGraph, GraphSpec, example_inputs, input_specs, random_inputs
from hwnas.kernels._onnx import (
    export_onnx,
    graph_output_names,
    onnx_feed,
    onnx_session,
    onnx_sessions,
    quiet_tracer,
)
from hwnas.kernels._target import COMPILER_OPTIONS, TARGET_CHECK_TIMEOUT_S, TARGET_OPTIONS, check_target
from hwnas.kernels._tune import (
    TUNING_EVALUATOR,
    TUNING_RECORDS,
    TaskReport,
    TuneReport,
    count_tuning_records,
    covering_subnets,
    rpc_tuning_runner,
    tune_space,
)

__all__ = [
    "COMPILER_OPTIONS",
    "TARGET_CHECK_TIMEOUT_S",
    "TARGET_OPTIONS",
    "DECODER_STEP",
    "ENCODER",
    "TUNING_EVALUATOR",
    "TUNING_RECORDS",
    "BuildInput",
    "BuildResult",
    "DecoderStepGraph",
    "EncoderGraph",
    "GraphSpec",
    "TVMBuilder",
    "TaskReport",
    "TuneReport",
    "build_one",
    "check_target",
    "compile_module",
    "count_tuning_records",
    "covering_subnets",
    "cuda_target",
    "example_inputs",
    "export_onnx",
    "export_relax",
    "graph_output_names",
    "host_target",
    "input_specs",
    "make_target",
    "onnx_feed",
    "onnx_session",
    "onnx_sessions",
    "prepare",
    "quiet_tracer",
    "random_inputs",
    "rpc_tuning_runner",
    "subnet_model",
    "tune_space",
]
