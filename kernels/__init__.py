"""TVM-compiled kernels for standalone SubTransformers: build (Relax), tune (MetaSchedule)."""

from hwnas.kernels._build import (
    DECODER_STEP,
    ENCODER,
    BuildInput,
    BuildResult,
    TVMBuilder,
    build_one,
    export_relax,
    host_target,
    make_target,
)

__all__ = [
    "DECODER_STEP",
    "ENCODER",
    "BuildInput",
    "BuildResult",
    "TVMBuilder",
    "build_one",
    "export_relax",
    "host_target",
    "make_target",
]
