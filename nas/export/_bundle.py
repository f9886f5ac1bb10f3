"""Standalone export bundles of a SubTransformer: TorchScript, ONNX or a TVM library, plus what runs it.

A bundle is one directory, written atomically (built in a sibling temp directory, then renamed):

- `manifest.json`: bundle layout version, model format, what the weights are (`weights`: inherited from the
  supernet, fine-tuned or retrained, with steps and test BLEU), every other file with its sha256 and size, the
  hwnas / torch / TVM / ONNX versions that wrote it, creation time (UTC);
- `config.json`: the subnet (`SubnetConfig.to_dict()`), the `ModelConfig`, the fixed shapes and the
  names, shapes and dtypes of every graph input and output;
- `tokenizer.json`: the HF `tokenizers` tokenizer;
- `weights.pt`: the PyTorch SubTransformer (`hwnas.supernet.load_subtransformer` reloads it);
- `certificate.json`: the measured latency, when one is given;
- the model: `encoder.pt` + `decoder_step.pt` (TorchScript, traced), `encoder.onnx` + `decoder_step.onnx`
  (ONNX), or `lib.so` (`lib.tar` for cross targets) + `meta.json` (TVM; `hwnas.kernels.build_one`'s
  layout, so a TVM runner takes the bundle directory as its artifact).

The model is the two fixed-shape graphs of `hwnas.kernels._graphs` (the encoder, and one decoder step
over a key/value cache of `cache_len` slots), the graphs every latency figure of hwnas times.
`load_bundle` verifies every file against the manifest and runs the graphs with the bundle's own
runtime (torch.jit, onnxruntime or the TVM Relax VM), without the supernet.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import uuid
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np
import torch
from tokenizers import Tokenizer

import hwnas
from hwnas.exceptions import ExportError, HwnasError
from hwnas.kernels import (
    DECODER_STEP,
    ENCODER,
    BuildInput,
    DecoderStepGraph,
    EncoderGraph,
    GraphSpec,
    build_one,
    example_inputs,
    export_onnx,
    graph_output_names,
    host_target,
    input_specs,
    make_target,
    onnx_feed,
    onnx_session,
    quiet_tracer,
)
from hwnas.latency import DeviceProfile, MeasurementRecord, RunResult, cv, split_passes, tvm_device
from hwnas.search_spaces import SubnetConfig
from hwnas.supernet import ModelConfig, SubTransformer, load_subtransformer, save_subtransformer

ExportFormat = Literal["torchscript", "onnx", "tvm"]
FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
# The runtime each format deploys with, and so the runtime its certificate must be measured with.
FORMAT_RUNTIME: dict[str, str] = {"torchscript": "torch", "onnx": "onnxruntime", "tvm": "tvm"}
BUNDLE_FORMAT = "hwnas-bundle/1"
MANIFEST, CONFIG, TOKENIZER, WEIGHTS, CERTIFICATE = (
    "manifest.json", "config.json", "tokenizer.json", "weights.pt", "certificate.json")
TVM_META = "meta.json"
GRAPHS = (ENCODER, DECODER_STEP)
BATCH = 1  # HAT's protocol; every hwnas latency figure is for batch 1
DEFAULT_TOKENS = 30  # HAT's sentence length (WMT), when no certificate says otherwise


# --- latency certificate -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatencyCertificate:
    """A measured latency of one subnet on one device, with everything needed to judge it.

    The raw per-run times are kept; the figures are derived from them (HAT's protocol: one sentence
    = encoder + `decode_steps` decoder steps). Percentiles are taken per part and combined the same
    way as the median, because the encoder and decoder-step runs are timed separately (not paired).
    """

    device: str
    fingerprint: dict[str, Any]
    target: dict[str, Any]
    runtime: str
    protocol: dict[str, Any]  # MeasureConfig.to_dict()
    subnet: dict[str, Any]  # SubnetConfig.to_dict() of the measured subnet
    tuning_key: str  # identity of the tuning database ('' = untuned)
    encoder_ms: tuple[float, ...]
    decoder_step_ms: tuple[float, ...]
    # Under a reference protocol: the reference subnet's latency in the same session, i.e. how fast the
    # device ran at the time (compare it with other certificates' to tell a slow machine from a slow model).
    reference_ms: float | None = None
    revision: int | None = None  # the device revision it was measured on (None: before revisions were kept)
    model_key: str = ""  # the model the subnet was cut from (latency_model_key)

    def __post_init__(self) -> None:
        if not self.encoder_ms or not self.decoder_step_ms:
            raise ValueError("a latency certificate needs non-empty encoder_ms and decoder_step_ms")
        if not all(math.isfinite(t) and t >= 0 for t in (*self.encoder_ms, *self.decoder_step_ms)):
            raise ValueError("a latency certificate's run times must be finite and >= 0")
        steps = self.protocol.get("decode_steps")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"a latency certificate's protocol needs decode_steps >= 1, got {steps!r}")

    @classmethod
    def from_record(cls, record: MeasurementRecord, device: DeviceProfile) -> LatencyCertificate:
        """The certificate of a successful measurement `record` taken on `device`.

        Args:
            record: A stored measurement (`hwnas.latency._collect.MeasurementRecord`).
            device: The profile of the device it was taken on (name must match the record's).

        Raises:
            ExportError: The record belongs to another device, or the measurement failed.
        """
        if record.device != device.name:
            raise ExportError(f"measurement was taken on device '{record.device}', not '{device.name}'")
        result = record.result
        if result.encoder_ms is None or result.decoder_step_ms is None:
            raise ExportError(f"measurement of subnet {record.subnet.key()} on '{device.name}' failed "
                              f"({result.error}); a failed measurement certifies nothing")
        return cls(device=device.name, fingerprint=json.loads(json.dumps(device.fingerprint)),
                   target=json.loads(json.dumps(device.target)), runtime=device.runtime,
                   protocol=record.protocol.to_dict(), subnet=record.subnet.to_dict(),
                   tuning_key=record.tuning_key, encoder_ms=tuple(map(float, result.encoder_ms)),
                   decoder_step_ms=tuple(map(float, result.decoder_step_ms)), reference_ms=record.reference_ms,
                   revision=record.revision, model_key=record.model_key)

    @property
    def decode_steps(self) -> int:
        """Decoder steps per sentence (and cache slots) of the protocol."""
        return int(self.protocol["decode_steps"])

    def _runs(self) -> tuple[np.ndarray, np.ndarray]:
        """The runs the figures come from: all of them, or the quietest pass of a multi-pass protocol
        (the same runs `RunResult.latency_ms` takes its figure from)."""
        passes = int(self.protocol.get("passes", 1))
        if passes == 1:
            return np.asarray(self.encoder_ms), np.asarray(self.decoder_step_ms)
        best = RunResult(self.encoder_ms, self.decoder_step_ms).best_pass(self.decode_steps, passes)
        return (np.asarray(split_passes(self.encoder_ms, passes)[best]),
                np.asarray(split_passes(self.decoder_step_ms, passes)[best]))

    def _combined(self, q: float) -> float:
        enc, dec = self._runs()
        return float(np.percentile(enc, q) + self.decode_steps * np.percentile(dec, q))

    @property
    def latency_ms(self) -> float:
        """Median sentence latency: median(encoder) + decode_steps x median(decoder step)."""
        return self._combined(50)

    @property
    def latency_p10_ms(self) -> float:
        """10th percentile of each part, combined like the median (a fast-run estimate)."""
        return self._combined(10)

    @property
    def latency_p90_ms(self) -> float:
        """90th percentile of each part, combined like the median (a slow-run estimate)."""
        return self._combined(90)

    @property
    def latency_cv(self) -> float:
        """Noise of the measurement: the larger coefficient of variation (std/mean) of its two parts."""
        enc, dec = self._runs()
        # cast: cv takes any 1-D array-like (it calls np.asarray), though it is typed Sequence[float]
        return max(cv(cast(Sequence[float], enc)), cv(cast(Sequence[float], dec)))

    def derived(self) -> dict[str, float]:
        """The figures derived from the raw runs, by name (as `to_dict` writes them)."""
        return {"latency_ms": self.latency_ms, "latency_p10_ms": self.latency_p10_ms,
                "latency_p90_ms": self.latency_p90_ms, "latency_cv": self.latency_cv}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field (raw runs as lists) plus the derived figures, for readers of the file."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))  # deep copy; tuples -> lists
        return {**d, **self.derived()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyCertificate:
        """Inverse of `to_dict`; derived figures, when present, must agree with the raw runs.

        Raises:
            ExportError: Missing or malformed fields, or derived figures that disagree with the raw runs.
        """
        optional = {"reference_ms", "revision", "model_key"}  # certificates written before they existed lack them
        names = [f.name for f in dataclasses.fields(cls)]
        try:
            missing = [n for n in names if n not in data and n not in optional]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            values = {n: data[n] for n in names if n in data}
            if values.get("reference_ms") is not None:
                values["reference_ms"] = float(values["reference_ms"])
            values["encoder_ms"] = tuple(float(t) for t in values["encoder_ms"])
            values["decoder_step_ms"] = tuple(float(t) for t in values["decoder_step_ms"])
            cert = cls(**values)
        except (TypeError, ValueError) as e:
            raise ExportError(f"malformed latency certificate: {e}") from e
        for key, value in cert.derived().items():
            if key in data and not math.isclose(float(data[key]), value, rel_tol=1e-9, abs_tol=1e-12):
                raise ExportError(f"latency certificate's {key} ({data[key]}) disagrees with its raw runs ({value})")
        return cert


# --- writing -------------------------------------------------------------------------------------------


def _export_torchscript(model: SubTransformer, out_dir: Path, *, source_length_tokens: int,
                        cache_len: int) -> None:
    # Traced, not scripted: torch.jit.script rejects the model (aten::finfo, NamedTuple outputs); the graphs
    # are fixed-shape by design, so a trace loses nothing (load_bundle's tests vary position and mask).
    enc_in, step_in = example_inputs(model, batch=BATCH, src_len=source_length_tokens, cache_len=cache_len)
    with torch.no_grad(), warnings.catch_warnings():
        quiet_tracer()
        for name, graph, args in ((ENCODER, EncoderGraph(model), enc_in), (DECODER_STEP, DecoderStepGraph(model),
                                                                           step_in)):
            torch.jit.trace(graph, args).save(str(out_dir / f"{name}.pt"))


def _export_tvm(model: SubTransformer, out_dir: Path, *, source_length_tokens: int, cache_len: int,
                target: dict[str, Any], tuning_dir: str | None) -> None:
    # build_one loads the weights from weights.pt (already in out_dir), so the library holds this model's.
    build_one(BuildInput(model.cfg, model.mc, target, batch=BATCH, source_length_tokens=source_length_tokens,
                         cache_len=cache_len, tuning_dir=tuning_dir, weights=str(out_dir / WEIGHTS)), str(out_dir))


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str | None]:
    return {"hwnas": hwnas.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "tvm": _version("apache-tvm"), "tvm_ffi": _version("apache-tvm-ffi"), "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime"), "tokenizers": _version("tokenizers")}


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _spec_json(specs: Sequence[GraphSpec]) -> list[dict[str, Any]]:
    return [{"name": n, "shape": list(shape), "dtype": dtype} for n, shape, dtype in specs]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _shapes(certificate: LatencyCertificate | None, source_length_tokens: int | None,
            cache_len: int | None) -> tuple[int, int]:
    """The bundle's shapes: as asked, else the certificate's protocol, else HAT's 30 tokens.

    A certificate is only meaningful for the shapes it was measured at, so a mismatch is an error.
    """
    p = certificate.protocol if certificate is not None else {}
    src = source_length_tokens if source_length_tokens is not None else int(p.get("source_length_tokens",
                                                                                  DEFAULT_TOKENS))
    cache = cache_len if cache_len is not None else int(p.get("decode_steps", DEFAULT_TOKENS))
    if certificate is not None:
        measured = (int(p.get("batch_size", 1)), int(p.get("source_length_tokens", src)), certificate.decode_steps)
        if measured != (BATCH, src, cache):
            raise ExportError(f"the certificate was measured at batch {measured[0]}, {measured[1]} source tokens, "
                              f"{measured[2]} decoder steps; the bundle would be batch {BATCH}, {src} tokens, "
                              f"{cache} cache slots (leave source_length_tokens and cache_len unset to match)")
    for name, v in (("source_length_tokens", src), ("cache_len", cache)):
        if not isinstance(v, int) or v < 1:
            raise ExportError(f"{name} must be an integer >= 1, got {v!r}")
    return src, cache


def _check_free(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"cannot export to '{out}': it exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise ExportError(f"cannot export to '{out}': the directory exists and is not empty "
                          f"(remove it or choose another)")


def export_bundle(*, model: SubTransformer, tokenizer: Tokenizer, out_dir: str | Path, fmt: ExportFormat,
                  certificate: LatencyCertificate | None = None, target: dict[str, Any] | None = None,
                  tuning_dir: str | None = None, source_length_tokens: int | None = None,
                  cache_len: int | None = None, provenance: dict[str, Any] | None = None) -> Path:
    """Write a standalone bundle of `model` in format `fmt` to `out_dir`, atomically.

    The bundle is built in a temp directory beside `out_dir` and renamed into place only when
    complete; on any failure nothing is left behind. The model's train/eval mode is restored.

    Args:
        model: The SubTransformer to export (e.g. `SuperTransformer.extract_subnet(cfg)` or a loaded one).
        tokenizer: Its tokenizer.
        out_dir: The bundle directory; must not exist or be empty.
        fmt: `torchscript` (traced graphs), `onnx`, or `tvm` (a compiled TVM Relax library).
        certificate: The subnet's measured latency, stored as `certificate.json`; it must be for this subnet.
        target: TVM target JSON dict (`tvm` only); default: this machine's CPU (`hwnas.kernels.host_target()`).
        tuning_dir: A MetaSchedule tuning database whose schedules the TVM build applies (`tvm` only).
        source_length_tokens: Source length of the fixed-shape graphs; default: the certificate's, else 30.
        cache_len: Decoder key/value cache slots; default: the certificate's decode steps, else 30.
        provenance: What the weights are (`weights`: inherited, fine-tuned or retrained; `steps`, `test_bleu`...),
            kept in the manifest as `weights` and in weights.pt.

    Returns:
        The bundle directory.

    Raises:
        ExportError: Bad arguments, `out_dir` taken, a certificate for another subnet or other shapes,
            or the export itself failed.
        MeasurementError: An unusable TVM target (raised before any work is done).
    """
    out = Path(out_dir)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}' (one of {', '.join(FORMATS)})")
    if fmt != "tvm" and (target is not None or tuning_dir is not None):
        raise ExportError(f"target and tuning_dir apply to the tvm format only, not {fmt}")
    src_len, cache = _shapes(certificate, source_length_tokens, cache_len)
    if certificate is not None and SubnetConfig.from_dict(certificate.subnet) != model.cfg:
        raise ExportError(f"the certificate is for subnet {SubnetConfig.from_dict(certificate.subnet).key()}, "
                          f"the model is subnet {model.cfg.key()}")
    if certificate is not None and certificate.runtime != FORMAT_RUNTIME[fmt]:
        raise ExportError(f"{fmt} bundles run on {FORMAT_RUNTIME[fmt]}, but the certificate was measured with "
                          f"{certificate.runtime} on '{certificate.device}': measure it on a device of runtime "
                          f"{FORMAT_RUNTIME[fmt]}")
    _check_free(out)
    if fmt == "tvm":
        target = json.loads(json.dumps(target)) if target is not None else host_target()
        if certificate is not None and certificate.target != target:
            raise ExportError(f"the certificate was measured for target {json.dumps(certificate.target)}, the "
                              f"library would be built for {json.dumps(target)}")
        make_target(target)  # a bad target fails now, in one line, before minutes of work
        if tuning_dir is not None and not Path(tuning_dir).is_dir():
            raise ExportError(f"tuning directory '{tuning_dir}' does not exist")

    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside out_dir (same filesystem, so the final rename is atomic); hidden, and named for cleanup by hand.
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    tmp.mkdir()
    was_training = model.training
    try:
        model.eval()  # dropout off: a traced or compiled graph would freeze whatever mode it saw
        _write_bundle(tmp, model=model, tokenizer=tokenizer, fmt=fmt, certificate=certificate,
                      source_length_tokens=src_len, cache_len=cache, target=target, tuning_dir=tuning_dir,
                      provenance=provenance)
        try:
            os.rename(tmp, out)  # POSIX: replaces an empty out_dir, fails on a non-empty one
        except OSError as e:
            raise ExportError(f"cannot move the finished bundle to '{out}': {e.strerror or e}") from e
    except HwnasError:
        raise
    except Exception as e:  # boundary: a tracer, exporter or compiler failure is one line for the user
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(f"{fmt} export of subnet {model.cfg.key()} failed: {type(e).__name__}: {first}") from e
    finally:
        model.train(was_training)
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return out


def _write_bundle(tmp: Path, *, model: SubTransformer, tokenizer: Tokenizer, fmt: str,
                  certificate: LatencyCertificate | None, source_length_tokens: int, cache_len: int,
                  target: dict[str, Any] | None, tuning_dir: str | None,
                  provenance: dict[str, Any] | None = None) -> None:
    save_subtransformer(tmp / WEIGHTS, model, tokenizer, provenance=provenance)
    tokenizer.save(str(tmp / TOKENIZER))
    specs = input_specs(model.cfg, model.mc, batch=BATCH, src_len=source_length_tokens, cache_len=cache_len)
    _write_json(tmp / CONFIG, {
        "subnet": model.cfg.to_dict(), "subnet_key": model.cfg.key(), "model_config": dataclasses.asdict(model.mc),
        "batch": BATCH, "source_length_tokens": source_length_tokens, "cache_len": cache_len,
        "inputs": {g: _spec_json(specs[g]) for g in GRAPHS}, "outputs": graph_output_names(model.cfg)})
    if fmt == "torchscript":
        _export_torchscript(model, tmp, source_length_tokens=source_length_tokens, cache_len=cache_len)
    elif fmt == "onnx":
        export_onnx(model, tmp, source_length_tokens=source_length_tokens, cache_len=cache_len)
    else:
        _export_tvm(model, tmp, source_length_tokens=source_length_tokens, cache_len=cache_len,
                    target=target or {}, tuning_dir=tuning_dir)
    if certificate is not None:
        _write_json(tmp / CERTIFICATE, certificate.to_dict())
    files = {p.relative_to(tmp).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    _write_json(tmp / MANIFEST, {
        "bundle": BUNDLE_FORMAT, "format": fmt,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "versions": _versions(), "weights": provenance, "files": files})


# --- reading and running -------------------------------------------------------------------------------


def _model_files(fmt: str, meta: Mapping[str, Any] | None = None) -> list[str]:
    if fmt == "torchscript":
        return [f"{g}.pt" for g in GRAPHS]
    if fmt == "onnx":
        return [f"{g}.onnx" for g in GRAPHS]
    return [TVM_META] + ([str(meta["library"])] if meta else [])


class Bundle:
    """A verified bundle on disk; runs its graphs with its own runtime, loaded on first use.

    Attributes:
        path: The bundle directory.
        format: `torchscript`, `onnx` or `tvm`.
        manifest: The parsed manifest.json.
        config: The parsed config.json.
        certificate: The latency certificate, if the bundle has one.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], config: dict[str, Any],
                 certificate: LatencyCertificate | None):
        self.path, self.manifest, self.config, self.certificate = path, manifest, config, certificate
        self.format: str = manifest["format"]
        self._runtime: _Runtime | None = None

    @property
    def weights(self) -> dict[str, Any] | None:
        """What the weights are (inherited, fine-tuned or retrained; steps, test BLEU), when the export said."""
        prov = self.manifest.get("weights")
        return dict(prov) if isinstance(prov, dict) else None

    @property
    def runtime(self) -> str:
        """The runtime the bundle's model runs on (`torch`, `onnxruntime` or `tvm`)."""
        return FORMAT_RUNTIME[self.format]

    def covers(self) -> str:
        """One line: what the certificate covers (latency, device and revision, runtime), or that there is none,
        or that it was measured with another runtime than the bundle's (bundles written before certificates
        followed the format)."""
        c = self.certificate
        if c is None:
            return f"no latency certificate: this {self.format} bundle's latency was never measured"
        rev = f" rev {c.revision}" if c.revision is not None else ""
        line = (f"certificate: {c.latency_ms:.2f} ms median (p90 {c.latency_p90_ms:.2f}) per sentence of "
                f"{c.decode_steps} tokens on device '{c.device}'{rev} with {c.runtime}")
        if c.runtime != self.runtime:
            line += f"; NOT with {self.runtime}, the runtime this {self.format} bundle runs on"
        return line

    @property
    def subnet(self) -> SubnetConfig:
        """The exported subnet."""
        return SubnetConfig.from_dict(self.config["subnet"])

    @property
    def model_config(self) -> ModelConfig:
        """The model's ModelConfig (vocabulary size, Q/K/V width, special token ids)."""
        return ModelConfig(**self.config["model_config"])

    def input_specs(self) -> dict[str, list[GraphSpec]]:
        """(name, shape, dtype) of every input of each graph, in call order."""
        return {g: [(s["name"], tuple(s["shape"]), s["dtype"]) for s in self.config["inputs"][g]] for g in GRAPHS}

    def tokenizer(self) -> Tokenizer:
        """The bundle's tokenizer (tokenizer.json)."""
        return Tokenizer.from_file(str(self.path / TOKENIZER))

    def load_pytorch(self) -> SubTransformer:
        """The PyTorch SubTransformer from weights.pt (eval mode)."""
        return load_subtransformer(self.path / WEIGHTS)[0]

    def run_encoder(self, src: np.ndarray) -> list[np.ndarray]:
        """Run the encoder graph on token ids `src` (batch, source_length_tokens).

        Returns:
            Per decoder layer, the cross-attention keys and values (`config["outputs"]["encoder"]`).

        Raises:
            ExportError: `src` does not have the bundle's fixed shape, or the runtime cannot load the model.
        """
        return self._run(ENCODER, [src])

    def run_decoder_step(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run one decoder step; inputs as `input_specs()["decoder_step"]` lists them.

        Returns:
            The logits (batch, vocab), then per decoder layer the new self-attention key and value.

        Raises:
            ExportError: Wrong number, shapes or dtypes of inputs, or the runtime cannot load the model.
        """
        return self._run(DECODER_STEP, list(inputs))

    def _run(self, graph: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        specs = self.input_specs()[graph]
        if len(inputs) != len(specs):
            raise ExportError(f"{graph} takes {len(specs)} inputs ({', '.join(n for n, _, _ in specs)}), "
                              f"got {len(inputs)}")
        arrays = []
        for a, (name, shape, dtype) in zip(inputs, specs, strict=True):
            a = np.asarray(a)
            if a.shape != shape or not np.can_cast(a.dtype, dtype, "same_kind"):
                raise ExportError(f"{graph} input '{name}' must be {dtype} of shape {shape} (the bundle's fixed "
                                  f"shape), got {a.dtype} of shape {a.shape}")
            arrays.append(np.ascontiguousarray(a, dtype=dtype))
        if self._runtime is None:
            self._runtime = _load_runtime(self)
        return self._runtime.run(graph, arrays, [n for n, _, _ in specs])


class _Runtime:
    def run(self, graph: str, arrays: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
        raise NotImplementedError


class _TorchScriptRuntime(_Runtime):
    def __init__(self, path: Path):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
            self.modules = {g: torch.jit.load(str(path / f"{g}.pt"), map_location="cpu").eval() for g in GRAPHS}

    def run(self, graph: str, arrays: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.modules[graph](*(torch.from_numpy(a) for a in arrays))
        return [t.numpy() for t in out]


class _OnnxRuntime(_Runtime):
    def __init__(self, path: Path):
        self.sessions = {g: onnx_session(path / f"{g}.onnx") for g in GRAPHS}

    def run(self, graph: str, arrays: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
        sess = self.sessions[graph]
        return list(sess.run(None, onnx_feed(sess, names, arrays)))


class _TVMRuntime(_Runtime):
    def __init__(self, path: Path):
        import tvm
        from tvm.runtime.vm import VirtualMachine  # runtime only: works where the TVM compiler is absent


        meta = json.loads((path / TVM_META).read_text())
        self.dev = tvm_device(meta["target"])  # before loading: it may register the CUDA loader
        self.vm = VirtualMachine(tvm.runtime.load_module(str(path / meta["library"])), self.dev)

    def run(self, graph: str, arrays: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
        import tvm

        out = self.vm[graph](*(tvm.runtime.tensor(a, device=self.dev) for a in arrays))
        return [t.numpy() for t in out]


def _load_runtime(bundle: Bundle) -> _Runtime:
    kinds = {"torchscript": _TorchScriptRuntime, "onnx": _OnnxRuntime, "tvm": _TVMRuntime}
    try:
        return kinds[bundle.format](bundle.path)
    except Exception as e:  # boundary: e.g. a library built for another CPU or a missing GPU
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(f"bundle '{bundle.path}': cannot load its {bundle.format} model on this machine: "
                          f"{type(e).__name__}: {first}") from e


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ExportError(f"{what} is missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{what} is unreadable: {e}") from e


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle, verifying every file against the sha256 in its manifest.

    Integrity only: the manifest guards against corruption and accidental edits, not against someone
    who rewrites the manifest too.

    Args:
        path: The bundle directory.

    Returns:
        The verified bundle; its runtime loads on the first `run_*` call.

    Raises:
        ExportError: Not a bundle, or a file missing, modified or outside the bundle (one line naming it).
    """
    root = Path(path)
    if not root.is_dir():
        raise ExportError(f"bundle '{root}' does not exist or is not a directory")
    manifest = _read_json(root / MANIFEST, f"bundle '{root}': {MANIFEST}")
    if not isinstance(manifest, dict) or manifest.get("bundle") != BUNDLE_FORMAT:
        raise ExportError(f"bundle '{root}': {MANIFEST} is not an hwnas bundle manifest ({BUNDLE_FORMAT})")
    fmt, files = manifest.get("format"), manifest.get("files")
    if fmt not in FORMATS or not isinstance(files, dict):
        raise ExportError(f"bundle '{root}': {MANIFEST} has no valid format and file list")
    resolved = root.resolve()
    for name, entry in sorted(files.items()):
        p = root / name
        if not p.resolve().is_relative_to(resolved) or name == MANIFEST:
            raise ExportError(f"bundle '{root}': {MANIFEST} lists '{name}', which is not a bundle file")
        if not p.is_file():
            raise ExportError(f"bundle '{root}': file '{name}' is missing")
        if not isinstance(entry, dict) or _sha256(p) != entry.get("sha256"):
            raise ExportError(f"bundle '{root}': file '{name}' does not match its sha256 in {MANIFEST} "
                              f"(modified or corrupt)")
    meta = _read_json(root / TVM_META, f"bundle '{root}': {TVM_META}") if fmt == "tvm" and TVM_META in files else None
    missing = [f for f in (CONFIG, TOKENIZER, WEIGHTS, *_model_files(fmt, meta)) if f not in files]
    if missing:
        raise ExportError(f"bundle '{root}': {MANIFEST} lists no {', '.join(missing)} (incomplete {fmt} bundle)")
    config = _read_json(root / CONFIG, f"bundle '{root}': {CONFIG}")
    certificate = None
    if CERTIFICATE in files:
        data = _read_json(root / CERTIFICATE, f"bundle '{root}': {CERTIFICATE}")
        try:
            certificate = LatencyCertificate.from_dict(data)
        except ExportError as e:
            raise ExportError(f"bundle '{root}': {CERTIFICATE}: {e}") from e
    return Bundle(root, manifest, config, certificate)
