"""The two fixed-shape graphs as ONNX, and onnxruntime sessions for them: what ONNX bundles ship and what the
`onnxruntime` runtime times (`hwnas.latency.OrtRunner`), so the certificate of an ONNX bundle is measured on the
graphs the bundle holds."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwnas.kernels._build import DECODER_STEP, ENCODER
from hwnas.kernels._graphs import DecoderStepGraph, EncoderGraph, example_inputs, input_specs
from hwnas.search_spaces import SubnetConfig
from hwnas.supernet import SubTransformer

BATCH = 1  # HAT's protocol; every hwnas latency figure is for batch 1
DEFAULT_TOKENS = 30  # HAT's sentence length (WMT), when nothing says otherwise


def graph_output_names(cfg: SubnetConfig) -> dict[str, list[str]]:
    """Names of the outputs of the two graphs, in order (see `hwnas.kernels._graphs`)."""
    layers = range(cfg.decoder_layer_num)
    return {ENCODER: [f"{kv}{i}" for i in layers for kv in ("cross_k", "cross_v")],
            DECODER_STEP: ["logits", *(f"{kv}{i}" for i in layers for kv in ("new_self_k", "new_self_v"))]}


def export_onnx(model: SubTransformer, out_dir: Path, *, source_length_tokens: int = DEFAULT_TOKENS,
                cache_len: int = DEFAULT_TOKENS, batch: int = BATCH) -> dict[str, Path]:
    """Write `encoder.onnx` and `decoder_step.onnx` (fixed shapes, batch 1 unless asked) into `out_dir`.

    Inputs and outputs are named as in `input_specs` and `graph_output_names`. ONNX may drop an
    input it folded away; feed a session only the inputs it lists.

    Args:
        model: The SubTransformer, in eval mode.
        out_dir: An existing directory.
        source_length_tokens: Source sentence length of the encoder graph.
        cache_len: Key/value cache slots of the decoder-step graph.

    Returns:
        The path of each graph's file, by graph name (`encoder`, `decoder_step`).
    """
    enc_in, step_in = example_inputs(model, batch=batch, src_len=source_length_tokens, cache_len=cache_len)
    specs = input_specs(model.cfg, model.mc, batch=batch, src_len=source_length_tokens, cache_len=cache_len)
    outputs = graph_output_names(model.cfg)
    paths = {}
    with torch.no_grad(), warnings.catch_warnings():
        quiet_tracer()
        # Benign: an un-folded Slice stays a runtime op; the graph is still correct.
        warnings.filterwarnings("ignore", category=UserWarning, message=r"Constant folding - Only steps=1")
        # dynamo=False on purpose (see below): the deprecation notice is for users of the default exporter.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*legacy TorchScript-based ONNX")
        for name, graph, args in ((ENCODER, EncoderGraph(model), enc_in), (DECODER_STEP, DecoderStepGraph(model),
                                                                           step_in)):
            path = Path(out_dir) / f"{name}.onnx"
            # The TorchScript-based exporter: fixed shapes need none of the dynamo exporter's machinery.
            torch.onnx.export(graph, args, str(path), dynamo=False, input_names=[n for n, _, _ in specs[name]],
                              output_names=outputs[name])
            paths[name] = path
    return paths


def onnx_session(path: str | Path, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for one exported graph (`threads` pins intra-op threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def quiet_tracer() -> None:
    """Inside `warnings.catch_warnings()`: silence the tracer's noise about these graphs."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
    # The only TracerWarning is math.sqrt(head size) in attention: a shape, constant in a fixed-shape graph.
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


def onnx_feed(session: Any, names: Sequence[str], arrays: Sequence[Any]) -> dict[str, np.ndarray]:
    """The session's inputs by name from a graph's inputs in call order: ONNX drops inputs it folded away, so
    only those the session lists are fed."""
    wanted = {i.name for i in session.get_inputs()}
    return {n: np.asarray(a) for n, a in zip(names, arrays, strict=True) if n in wanted}


def onnx_sessions(paths: Mapping[str, Path], *, threads: int | None = None) -> dict[str, Any]:
    """A session per graph (`encoder`, `decoder_step`) of `export_onnx`'s files."""
    return {g: onnx_session(paths[g], threads=threads) for g in (ENCODER, DECODER_STEP)}
