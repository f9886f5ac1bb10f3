"""Builder role: a standalone SubTransformer -> a TVM Relax library with two functions.

`encoder` and `decoder_step` (see `_graphs`) come from torch.export and
`tvm.relax.frontend.torch.from_exported_program`, are prepared for MetaSchedule, take the
tuned schedules of a tuning database when one is given, and are compiled with `tvm.compile`.
Builds run in worker processes with a timeout; a failure comes back as data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

from hwnas.exceptions import MeasurementError
from hwnas.kernels._graphs import DecoderStepGraph, EncoderGraph, example_inputs
from hwnas.search_spaces import SubnetConfig
from hwnas.supernet import ModelConfig, SubTransformer, init_weights, load_subtransformer

ENCODER, DECODER_STEP = "encoder", "decoder_step"


def make_target(target: dict[str, Any]) -> Any:
    """A `tvm.target.Target` from its JSON dict; the error names the target."""
    import tvm

    if not isinstance(target, dict) or "kind" not in target:
        raise MeasurementError(f"a TVM target must be a JSON object with a 'kind', got {target!r}")
    mcpu = target.get("mcpu")
    try:
        if target.get("kind") == "llvm" and mcpu:  # TVM silently falls back to generic code for an unknown CPU
            base = tvm.target.Target({k: v for k, v in target.items() if k != "mcpu"})
            known = [str(c) for c in tvm.target.codegen.llvm_get_cpu_archlist(base)]
            if mcpu not in known:
                raise MeasurementError(f"bad TVM target {json.dumps(target)}: LLVM knows no CPU '{mcpu}' for this "
                                       f"triple (e.g. {', '.join(known[:6])}, ...)")
        return tvm.target.Target(target)
    except MeasurementError:
        raise
    except Exception as e:  # boundary: TVM raises ValueError or its own FFI errors
        raise MeasurementError(f"bad TVM target {json.dumps(target)}: {str(e).splitlines()[0]}") from e


def host_target() -> dict[str, Any]:
    """This machine's CPU as a TVM target (explicit mcpu: TVM ignores 'native')."""
    import tvm

    return {"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu()), "num-cores": os.cpu_count() or 1}


def cuda_target(device_id: int = 0) -> dict[str, Any] | None:
    """This machine's GPU as a TVM target, its arch and limits read from the device (MetaSchedule's GPU rules
    need them), or None when it has no CUDA device."""
    import torch

    if not torch.cuda.is_available():  # checked first: loading TVM's CUDA runtime needs a driver
        return None
    props = torch.cuda.get_device_properties(device_id)
    return {"kind": "cuda", "arch": f"sm_{props.major}{props.minor}", "max_threads_per_block": 1024,
            "max_shared_memory_per_block": 48 * 1024,  # per block without opting in to more: CUDA's static limit
            "thread_warp_size": 32, "registers_per_block": 65536,
            "l2_cache_size_bytes": int(getattr(props, "L2_cache_size", 0)) or 50 * 2**20}


@dataclasses.dataclass(frozen=True)
class BuildInput:
    """What to build. Weights are random (seeded) unless `weights` names a saved SubTransformer:
    latency does not depend on weight values, exported models do."""

    subnet: SubnetConfig
    model_config: ModelConfig
    target: dict[str, Any]
    batch: int = 1
    source_length_tokens: int = 30
    cache_len: int = 30
    tuning_dir: str | None = None
    weights: str | None = None


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """Exactly one of `artifact` (a library directory) and `error` is set."""

    artifact: str | None
    error: str | None
    build_s: float

    def __post_init__(self) -> None:
        if (self.artifact is None) == (self.error is None):
            raise ValueError("BuildResult needs exactly one of artifact and error")


def subnet_model(inp: BuildInput) -> SubTransformer:
    if inp.weights:
        model, _ = load_subtransformer(inp.weights)
        return model
    torch.manual_seed(0)
    model = SubTransformer(inp.subnet, inp.model_config)
    init_weights(model, inp.model_config.pad_id)
    return model.eval()


def export_relax(model: SubTransformer, *, batch: int, source_length_tokens: int, cache_len: int) -> Any:
    """One IRModule holding the `encoder` and `decoder_step` functions, weights as constants."""
    import tvm
    from tvm.relax.frontend.torch import from_exported_program

    enc_in, step_in = example_inputs(model, batch=batch, src_len=source_length_tokens, cache_len=cache_len)
    funcs = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch.export noise
        graphs = ((ENCODER, EncoderGraph(model), enc_in), (DECODER_STEP, DecoderStepGraph(model), step_in))
        for name, graph, args in graphs:
            ep = torch.export.export(graph.eval(), args)
            funcs[name] = from_exported_program(ep, keep_params_as_input=False)["main"].with_attr("global_symbol", name)
    return tvm.IRModule(funcs)


def prepare(mod: Any) -> Any:
    """The form MetaSchedule extracts tasks from and applies schedules to (see shared/reference/tvm.md)."""
    from tvm import relax

    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.CanonicalizeBindings()(mod)
    return relax.get_pipeline("zero")(mod)


def compile_module(mod: Any, target: dict[str, Any], tuning_dir: str | None = None) -> Any:
    """tvm.compile, with the tuning database's schedules applied when one is given."""
    import tvm
    from tvm import relax

    tgt = make_target(target)
    if tgt.kind.name == "cuda":
        # Registers the nvcc callback, so kernels ship as compiled binaries for the target's arch;
        # without it the library carries CUDA source that only a full TVM install can compile.
        import tvm.support.nvcc  # noqa: F401

        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")  # NVRTC needs cuda-bindings; nvcc ships with CUDA
    if tuning_dir is not None:
        mod = prepare(mod)
        with tgt:
            mod = relax.transform.MetaScheduleApplyDatabase(tuning_dir)(mod)
    with tgt:  # the nvcc callback reads the arch from the current target
        return tvm.compile(mod, target=tgt)


def build_one(inp: BuildInput, out_dir: str) -> str:
    """Build `inp` into `out_dir` (lib.so + meta.json); returns the directory. Raises on failure."""
    model = subnet_model(inp)
    mod = export_relax(model, batch=inp.batch, source_length_tokens=inp.source_length_tokens,
                       cache_len=inp.cache_len)
    ex = compile_module(mod, inp.target, inp.tuning_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cross = inp.target.get("mtriple", "").startswith("aarch64")
    lib = out / ("lib.tar" if cross else "lib.so")  # a tar needs no cross compiler; the device links it
    ex.export_library(str(lib))
    meta = {"subnet": inp.subnet.to_dict(), "model_config": dataclasses.asdict(inp.model_config),
            "target": inp.target, "batch": inp.batch, "source_length_tokens": inp.source_length_tokens,
            "cache_len": inp.cache_len, "tuning_dir": inp.tuning_dir, "library": lib.name}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return str(out)


def _build_worker(inp: BuildInput, out_dir: str) -> tuple[str | None, str | None, float]:
    t0 = time.perf_counter()
    try:
        return build_one(inp, out_dir), None, time.perf_counter() - t0
    except Exception as e:  # failures are data: the batch goes on
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return None, last[:2000], time.perf_counter() - t0


class TVMBuilder:
    """Builds many subnets in parallel worker processes, each under a timeout."""

    def __init__(self, *, max_workers: int = 1, timeout_s: float = 600.0):
        self.max_workers, self.timeout_s = max_workers, timeout_s

    def build(self, inputs: list[BuildInput], out_dirs: list[str]) -> list[BuildResult]:
        from tvm.support.popen_pool import PopenPoolExecutor

        if len(inputs) != len(out_dirs):
            raise ValueError("one output directory per build input")
        # Workers' own logging (TVM C++ warnings) stays out of the user's terminal; errors come back as data.
        pool = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_s, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        futures = [pool.submit(_build_worker, inp, out) for inp, out in zip(inputs, out_dirs, strict=True)]
        results = []
        for fut in futures:
            try:
                artifact, error, seconds = fut.result()
            except TimeoutError:
                artifact, error, seconds = None, f"build timed out after {self.timeout_s:.0f} s", self.timeout_s
            except Exception as e:  # the worker process died (e.g. a segfault in codegen)
                artifact, error, seconds = None, f"build worker failed: {type(e).__name__}: {e}"[:2000], 0.0
            results.append(BuildResult(artifact, error, seconds))
        return results
