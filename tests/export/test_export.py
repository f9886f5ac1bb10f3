"""Export bundles: each format runs like the PyTorch graphs, is verified on load, and is written atomically."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from hwnas.exceptions import ExportError, MeasurementError
from hwnas.export import FORMATS, Bundle, LatencyCertificate, export_bundle, load_bundle
from hwnas.kernels import DecoderStepGraph, EncoderGraph, input_specs
from hwnas.latency import DeviceProfile, MeasureConfig, MeasurementRecord, RunResult, builtin_device, measure
from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet import (
    ModelConfig,
    ParallelCorpus,
    SubTransformer,
    SuperTransformer,
    load_subtransformer,
    train_tokenizer,
)

SRC_LEN, CACHE_LEN = 7, 5
# Heterogeneous layers, two decoder layers attending to 1 and 2 encoder layers: every shape path is exercised.
CFG = {"encoder_embed_dim": 24, "encoder_layer_num": 2, "encoder_ffn_embed_dim": [48, 32],
       "encoder_self_attention_heads": [4, 2], "decoder_embed_dim": 16, "decoder_layer_num": 2,
       "decoder_ffn_embed_dim": [32, 48], "decoder_self_attention_heads": [2, 4],
       "decoder_ende_attention_heads": [4, 2], "decoder_arbitrary_ende_attn": [1, 2]}
ATOL = {"torchscript": 1e-6, "onnx": 1e-4, "tvm": 1e-4}


@pytest.fixture(scope="module")
def model(tiny_space: SearchSpace, tiny_mc: ModelConfig) -> SubTransformer:
    torch.manual_seed(0)
    cfg = tiny_space.validate(SubnetConfig.from_dict(CFG))
    return SuperTransformer(tiny_space, tiny_mc).extract_subnet(cfg).eval()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    text = ("In the beginning God created the heaven and the earth.", "And the earth was without form, and void.")
    return train_tokenizer(ParallelCorpus("test stand-in", text, text), 97)


@pytest.fixture(scope="module", params=FORMATS)
def bundle_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model: SubTransformer,
               tokenizer: Tokenizer) -> Path:
    out = tmp_path_factory.mktemp(f"bundle-{request.param}") / "bundle"
    got = export_bundle(model=model, tokenizer=tokenizer, out_dir=out, fmt=request.param,
                        source_length_tokens=SRC_LEN, cache_len=CACHE_LEN)
    assert got == out
    return out


def step_inputs(model: SubTransformer, position: int, seed: int) -> list[np.ndarray]:
    """Decoder-step inputs at `position`, with the cache filled up to it: not the inputs the graphs were traced
    or exported with, so a value baked into a graph shows up as a mismatch."""
    rng = np.random.default_rng(seed)
    specs = input_specs(model.cfg, model.mc, batch=1, src_len=SRC_LEN, cache_len=CACHE_LEN)["decoder_step"]
    out: list[np.ndarray] = []
    for name, shape, _ in specs:
        if name == "token":
            out.append(rng.integers(4, model.mc.vocab_size, size=shape, dtype=np.int64))
        elif name == "position":
            out.append(np.array([position], dtype=np.int64))
        elif name == "cache_mask":
            out.append(np.arange(CACHE_LEN).reshape(shape) >= position)
        else:
            out.append(rng.standard_normal(shape).astype(np.float32))
    return out


def torch_outputs(graph: torch.nn.Module, arrays: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in graph(*(torch.from_numpy(a) for a in arrays))]


def test_bundle_runs_like_pytorch(bundle_dir: Path, model: SubTransformer) -> None:
    bundle = load_bundle(bundle_dir)
    fmt = bundle.format
    assert bundle.subnet == model.cfg and bundle.model_config == model.mc and bundle.certificate is None
    atol = ATOL[fmt]
    rng = np.random.default_rng(5)
    for _ in range(2):
        src = rng.integers(4, model.mc.vocab_size, size=(1, SRC_LEN), dtype=np.int64)
        got, ref = bundle.run_encoder(src), torch_outputs(EncoderGraph(model), [src])
        assert len(got) == len(ref) == 2 * model.cfg.decoder_layer_num
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, atol=atol, rtol=atol)
    for position, seed in ((0, 1), (3, 2), (CACHE_LEN - 1, 3)):  # positions and masks vary: none is baked in
        args = step_inputs(model, position, seed)
        got, ref = bundle.run_decoder_step(*args), torch_outputs(DecoderStepGraph(model), args)
        assert len(got) == len(ref) == 1 + 2 * model.cfg.decoder_layer_num
        assert got[0].shape == (1, model.mc.vocab_size)
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, atol=atol, rtol=atol)


def test_manifest_lists_every_file_with_its_hash(bundle_dir: Path, model: SubTransformer) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    fmt = manifest["format"]
    on_disk = {p.name for p in bundle_dir.iterdir()} - {"manifest.json"}
    model_files = {"torchscript": {"encoder.pt", "decoder_step.pt"}, "onnx": {"encoder.onnx", "decoder_step.onnx"},
                   "tvm": {"lib.so", "meta.json"}}[fmt]
    assert on_disk == {"config.json", "tokenizer.json", "weights.pt"} | model_files
    assert set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        data = (bundle_dir / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert manifest["versions"]["torch"] == torch.__version__ and manifest["versions"]["tvm"]
    created = datetime.datetime.fromisoformat(manifest["created_utc"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.UTC) - created) < datetime.timedelta(hours=1)
    config = json.loads((bundle_dir / "config.json").read_text())
    assert config["subnet"] == model.cfg.to_dict() and config["model_config"] == dataclasses.asdict(model.mc)
    specs = input_specs(model.cfg, model.mc, batch=1, src_len=SRC_LEN, cache_len=CACHE_LEN)
    assert load_bundle(bundle_dir).input_specs() == specs


def test_weights_reload_without_the_bundle_runtime(bundle_dir: Path, model: SubTransformer,
                                                   tokenizer: Tokenizer) -> None:
    reloaded, tok = load_subtransformer(bundle_dir / "weights.pt")
    assert tok.to_str() == tokenizer.to_str() == load_bundle(bundle_dir).tokenizer().to_str()
    src = np.random.default_rng(9).integers(4, model.mc.vocab_size, size=(1, SRC_LEN), dtype=np.int64)
    for g, r in zip(torch_outputs(EncoderGraph(reloaded), [src]), torch_outputs(EncoderGraph(model), [src]),
                    strict=True):
        np.testing.assert_array_equal(g, r)
    args = step_inputs(model, 2, 4)
    for g, r in zip(torch_outputs(DecoderStepGraph(load_bundle(bundle_dir).load_pytorch()), args),
                    torch_outputs(DecoderStepGraph(model), args), strict=True):
        np.testing.assert_array_equal(g, r)


def test_tampered_or_missing_file_is_named(bundle_dir: Path, tmp_path: Path) -> None:
    fmt = json.loads((bundle_dir / "manifest.json").read_text())["format"]
    victim = {"torchscript": "decoder_step.pt", "onnx": "encoder.onnx", "tvm": "lib.so"}[fmt]
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(ExportError, match=rf"file '{victim}' does not match its sha256") as e:
        load_bundle(copy)
    assert "\n" not in str(e.value)
    (copy / victim).unlink()
    with pytest.raises(ExportError, match=rf"file '{victim}' is missing"):
        load_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ExportError, match="manifest.json is missing"):
        load_bundle(copy)


def test_wrong_inputs_are_one_clear_error(bundle_dir: Path, model: SubTransformer) -> None:
    bundle = load_bundle(bundle_dir)
    with pytest.raises(ExportError, match=rf"input 'src' must be int64 of shape \(1, {SRC_LEN}\)"):
        bundle.run_encoder(np.zeros((1, SRC_LEN + 1), dtype=np.int64))
    with pytest.raises(ExportError, match="takes"):
        bundle.run_decoder_step(np.zeros((1, 1), dtype=np.int64))


def test_taken_out_dir_is_refused_and_left_alone(tmp_path: Path, model: SubTransformer,
                                                  tokenizer: Tokenizer) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not empty") as e:
        export_bundle(model=model, tokenizer=tokenizer, out_dir=out, fmt="torchscript")
    assert "\n" not in str(e.value)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_bundle(model=model, tokenizer=tokenizer, out_dir=tmp_path / "file", fmt="onnx")
    empty = tmp_path / "empty"  # an empty directory is free
    empty.mkdir()
    export_bundle(model=model, tokenizer=tokenizer, out_dir=empty, fmt="torchscript",
                  source_length_tokens=SRC_LEN, cache_len=CACHE_LEN)
    assert load_bundle(empty).format == "torchscript"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "out"]


def test_failed_build_leaves_nothing_behind(tmp_path: Path, model: SubTransformer, tokenizer: Tokenizer) -> None:
    parent = tmp_path / "exports"
    # Passes the target check, fails in LLVM code generation: the half-written temp bundle must go.
    bad = {"kind": "llvm", "mtriple": "nonexistent-unknown-linux"}
    with pytest.raises(ExportError, match="tvm export of subnet .* failed") as e:
        export_bundle(model=model, tokenizer=tokenizer, out_dir=parent / "b", fmt="tvm", target=bad,
                      source_length_tokens=SRC_LEN, cache_len=CACHE_LEN)
    assert "\n" not in str(e.value)
    assert list(parent.iterdir()) == []
    with pytest.raises(MeasurementError, match="no-such-target"):  # rejected up front, before any work
        export_bundle(model=model, tokenizer=tokenizer, out_dir=parent / "b", fmt="tvm",
                      target={"kind": "no-such-target"})
    assert list(parent.iterdir()) == []


def test_bad_arguments(tmp_path: Path, model: SubTransformer, tokenizer: Tokenizer) -> None:
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_bundle(model=model, tokenizer=tokenizer, out_dir=tmp_path / "a", fmt="tflite")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="tvm format only"):
        export_bundle(model=model, tokenizer=tokenizer, out_dir=tmp_path / "a", fmt="onnx", target={"kind": "llvm"})
    with pytest.raises(ExportError, match="tuning directory"):
        export_bundle(model=model, tokenizer=tokenizer, out_dir=tmp_path / "a", fmt="tvm",
                      tuning_dir=str(tmp_path / "nope"))
    assert list(tmp_path.iterdir()) == []


def test_traced_in_eval_mode_and_mode_restored(tmp_path: Path, tiny_space: SearchSpace, tokenizer: Tokenizer) -> None:
    """A model handed over in train mode with dropout is exported deterministic, and is given back in train mode."""
    mc = ModelConfig(vocab_size=97, qkv_dim=16, dropout=0.5, attention_dropout=0.5)
    torch.manual_seed(1)
    m = SuperTransformer(tiny_space, mc).extract_subnet(tiny_space.smallest()).train()
    out = export_bundle(model=m, tokenizer=tokenizer, out_dir=tmp_path / "b", fmt="torchscript",
                        source_length_tokens=SRC_LEN, cache_len=CACHE_LEN)
    assert m.training
    src = np.random.default_rng(0).integers(4, 97, size=(1, SRC_LEN), dtype=np.int64)
    got = load_bundle(out).run_encoder(src)
    for g, r in zip(got, torch_outputs(EncoderGraph(m.eval()), [src]), strict=True):
        np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-6)


# --- latency certificates ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(tiny_space: SearchSpace, tiny_mc: ModelConfig,
             model: SubTransformer) -> tuple[MeasurementRecord, DeviceProfile]:
    """A real measurement of the model's subnet with PyTorch eager on this CPU (a short protocol: seconds)."""
    device = dataclasses.replace(builtin_device("local-cpu-torch"),
                                 protocol=MeasureConfig(warmup_runs=2, timed_runs=15, threads=1))
    (record,) = measure(device=device, space=tiny_space, model_config=tiny_mc, subnets=[model.cfg], timeout_s=300)
    assert record.result.ok, record.result.error
    return record, device


def test_certificate_figures_and_round_trip(measured: tuple[MeasurementRecord, DeviceProfile]) -> None:
    record, device = measured
    cert = LatencyCertificate.from_record(record, device)
    enc, dec = np.array(record.result.encoder_ms), np.array(record.result.decoder_step_ms)
    steps = record.protocol.decode_steps
    assert len(enc) == len(dec) == 15 and steps == 12  # the tiny space's sentence length
    assert cert.latency_ms == pytest.approx(np.median(enc) + steps * np.median(dec), rel=1e-12)
    assert cert.latency_ms == pytest.approx(record.result.latency_ms(steps), rel=1e-12)
    assert cert.latency_p10_ms == pytest.approx(np.percentile(enc, 10) + steps * np.percentile(dec, 10), rel=1e-12)
    assert cert.latency_p90_ms == pytest.approx(np.percentile(enc, 90) + steps * np.percentile(dec, 90), rel=1e-12)
    assert cert.latency_p10_ms <= cert.latency_ms <= cert.latency_p90_ms
    expected_cv = max(enc.std(ddof=1) / enc.mean(), dec.std(ddof=1) / dec.mean())
    assert cert.latency_cv == pytest.approx(expected_cv, rel=1e-12)
    assert cert.device == "local-cpu-torch" and cert.runtime == "torch"
    assert cert.fingerprint == device.fingerprint and cert.target == device.target
    assert cert.protocol == record.protocol.to_dict() and cert.subnet == record.subnet.to_dict()

    text = json.dumps(cert.to_dict())
    back = LatencyCertificate.from_dict(json.loads(text))
    assert back == cert and back.latency_ms == cert.latency_ms
    assert json.loads(text)["latency_ms"] == cert.latency_ms

    forged = {**json.loads(text), "latency_ms": cert.latency_ms / 2}
    with pytest.raises(ExportError, match="latency_ms .* disagrees with its raw runs"):
        LatencyCertificate.from_dict(forged)
    with pytest.raises(ExportError, match="missing encoder_ms"):
        LatencyCertificate.from_dict({k: v for k, v in json.loads(text).items() if k != "encoder_ms"})


def test_certificate_of_a_multi_pass_record_uses_the_quietest_pass(
        measured: tuple[MeasurementRecord, DeviceProfile]) -> None:
    """With `passes` > 1 the certificate's figures come from the same runs as the record's latency."""
    record, device = measured
    enc, dec = list(record.result.encoder_ms or ()), list(record.result.decoder_step_ms or ())
    slow = [t * 3 for t in enc[:5]], [t * 3 for t in dec[:5]]  # a contended first pass (stand-in slowdown)
    two = dataclasses.replace(record, protocol=dataclasses.replace(record.protocol, timed_runs=10, passes=2),
                              result=RunResult(tuple(slow[0] + enc[5:10]), tuple(slow[1] + dec[5:10])))
    cert = LatencyCertificate.from_record(two, device)
    steps = record.protocol.decode_steps
    assert cert.latency_ms == pytest.approx(two.result.latency_ms(steps, 2), rel=1e-12)
    assert cert.latency_ms == pytest.approx(np.median(enc[5:10]) + steps * np.median(dec[5:10]), rel=1e-12)
    assert cert.latency_p90_ms < np.percentile(slow[0], 90) + steps * np.percentile(slow[1], 90)


def test_certificate_carries_the_sessions_reference(measured: tuple[MeasurementRecord, DeviceProfile]) -> None:
    record, device = measured
    assert LatencyCertificate.from_record(record, device).reference_ms is None  # no reference protocol
    with_ref = dataclasses.replace(record, protocol=dataclasses.replace(record.protocol, reference=True),
                                   reference_ms=4.5)
    cert = LatencyCertificate.from_record(with_ref, device)
    data = json.loads(json.dumps(cert.to_dict()))
    assert cert.reference_ms == 4.5 and data["reference_ms"] == 4.5 and data["protocol"]["reference"] is True
    assert LatencyCertificate.from_dict(data) == cert
    older = {k: v for k, v in data.items() if k != "reference_ms"}  # written before the field existed
    assert LatencyCertificate.from_dict(older).reference_ms is None


def test_certificate_refuses_failed_or_foreign_records(measured: tuple[MeasurementRecord, DeviceProfile]) -> None:
    record, device = measured
    failed = dataclasses.replace(record, result=RunResult(error="worker died"))
    with pytest.raises(ExportError, match="worker died"):
        LatencyCertificate.from_record(failed, device)
    with pytest.raises(ExportError, match="not 'local-cpu'"):
        LatencyCertificate.from_record(record, builtin_device("local-cpu"))


def test_bundle_carries_its_certificate(tmp_path: Path, measured: tuple[MeasurementRecord, DeviceProfile],
                                        model: SubTransformer, tokenizer: Tokenizer, tiny_space: SearchSpace) -> None:
    record, device = measured
    cert = LatencyCertificate.from_record(record, device)
    # a certificate measured with PyTorch certifies a TorchScript bundle, not an ONNX one (ONNX Runtime runs that)
    with pytest.raises(ExportError, match="onnx bundles run on onnxruntime, but the certificate was measured with "
                                          "torch on 'local-cpu-torch'"):
        export_bundle(model=model, tokenizer=tokenizer, out_dir=tmp_path / "c", fmt="onnx", certificate=cert)
    out = export_bundle(model=model, tokenizer=tokenizer, out_dir=tmp_path / "b", fmt="torchscript",
                        certificate=cert)
    bundle = load_bundle(out)
    assert bundle.certificate == cert
    assert re.fullmatch(r"certificate: [\d.]+ ms median \(p90 [\d.]+\) per sentence of 12 tokens on device "
                        r"'local-cpu-torch' with torch", bundle.covers()), bundle.covers()
    # The graphs take the shapes the latency was measured at.
    assert bundle.config["source_length_tokens"] == bundle.config["cache_len"] == 12
    assert len(bundle.run_encoder(np.full((1, 12), 5, dtype=np.int64))) == 2 * model.cfg.decoder_layer_num

    with pytest.raises(ExportError, match="measured at batch 1, 12 source tokens, 12 decoder steps"):
        export_bundle(model=model, tokenizer=tokenizer, out_dir=tmp_path / "c", fmt="torchscript", certificate=cert,
                      source_length_tokens=30)
    other = SuperTransformer(tiny_space, model.mc).extract_subnet(tiny_space.smallest())
    with pytest.raises(ExportError, match="the certificate is for subnet"):
        export_bundle(model=other, tokenizer=tokenizer, out_dir=tmp_path / "c", fmt="torchscript", certificate=cert)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]

    # certificate.json is covered by the manifest like every other file.
    text = (out / "certificate.json").read_text()
    (out / "certificate.json").write_text(text.replace('"runtime": "torch"', '"runtime": "tvm"'))
    with pytest.raises(ExportError, match="file 'certificate.json' does not match"):
        load_bundle(out)


def test_onnx_bundle_is_certified_by_onnx_runtime(tmp_path: Path, tiny_space: SearchSpace, tiny_mc: ModelConfig,
                                                   model: SubTransformer, tokenizer: Tokenizer,
                                                   measured: tuple[MeasurementRecord, DeviceProfile]) -> None:
    """`local-cpu-ort` times the ONNX graphs in ONNX Runtime; its certificate is what an ONNX bundle carries."""
    device = dataclasses.replace(builtin_device("local-cpu-ort"),
                                 protocol=MeasureConfig(warmup_runs=2, timed_runs=15, threads=1))
    (record,) = measure(device=device, space=tiny_space, model_config=tiny_mc, subnets=[model.cfg], timeout_s=300)
    assert record.result.ok, record.result.error
    cert = LatencyCertificate.from_record(record, device)
    assert cert.runtime == "onnxruntime" and len(cert.encoder_ms) == 15 and cert.latency_ms > 0
    bundle = load_bundle(export_bundle(model=model, tokenizer=tokenizer, out_dir=tmp_path / "b", fmt="onnx",
                                       certificate=cert))
    assert bundle.runtime == "onnxruntime" and bundle.certificate == cert
    assert bundle.covers().endswith("on device 'local-cpu-ort' with onnxruntime"), bundle.covers()
    # A bundle written before certificates followed the format says what its certificate does not cover.
    torch_cert = LatencyCertificate.from_record(*measured)
    old = Bundle(bundle.path, bundle.manifest, bundle.config, torch_cert)
    assert old.covers().endswith("with torch; NOT with onnxruntime, the runtime this onnx bundle runs on")
