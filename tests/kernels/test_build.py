"""TVM builds of tiny subnets: numerics match PyTorch; failures come back as data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hwnas.exceptions import MeasurementError
from hwnas.kernels import (
    BuildInput,
    DecoderStepGraph,
    EncoderGraph,
    TVMBuilder,
    build_one,
    example_inputs,
    host_target,
    make_target,
    subnet_model,
)
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig, SuperTransformer

tvm = pytest.importorskip("tvm")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_space: SearchSpace,
          tiny_mc: ModelConfig) -> tuple[BuildInput, str]:
    cfg = tiny_space.sample(np.random.default_rng(11))
    inp = BuildInput(cfg, tiny_mc, host_target(), source_length_tokens=7, cache_len=5)
    return inp, build_one(inp, str(tmp_path_factory.mktemp("lib")))


def test_step_graph_decodes_like_the_model(tiny_space: SearchSpace, tiny_mc: ModelConfig) -> None:
    """Greedy decoding through the fixed-cache step graph equals the model's own cached decoding."""
    torch.manual_seed(0)
    cfg = tiny_space.largest()
    model = SuperTransformer(tiny_space, tiny_mc).extract_subnet(cfg).eval()
    src = torch.randint(4, tiny_mc.vocab_size, (1, 6))
    tokens = torch.tensor([[1, 7, 9, 11]])
    L = 6
    with torch.no_grad():
        cross = EncoderGraph(model)(src)
        kv: list[torch.Tensor] = []
        for i in range(cfg.decoder_layer_num):
            h = cfg.decoder_self_attention_heads[i]
            kv += [torch.zeros(1, h, L, 16 // h), torch.zeros(1, h, L, 16 // h), cross[2 * i], cross[2 * i + 1]]
        enc, cache = model.encode(src), None
        for t in range(tokens.shape[1]):
            ref, cache = model.decode_step(tokens[:, t:t + 1], enc, cache)
            mask = (torch.arange(L) >= t)[None, None, None, :]
            out = DecoderStepGraph(model)(tokens[:, t:t + 1], torch.tensor([t]), mask, *kv)
            torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=0)
            for i in range(cfg.decoder_layer_num):
                kv[4 * i][:, :, t], kv[4 * i + 1][:, :, t] = out[1 + 2 * i][:, :, 0], out[2 + 2 * i][:, :, 0]


def test_tvm_library_matches_torch(built: tuple[BuildInput, str]) -> None:
    from tvm import relax

    inp, artifact = built
    meta = json.loads((Path(artifact) / "meta.json").read_text())
    assert meta["subnet"] == inp.subnet.to_dict() and (Path(artifact) / "lib.so").is_file()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(Path(artifact) / "lib.so")), tvm.cpu())
    model = subnet_model(inp)
    enc_in, step_in = example_inputs(model, batch=1, src_len=7, cache_len=5, seed=3)
    with torch.no_grad():
        graphs = (("encoder", EncoderGraph(model), enc_in), ("decoder_step", DecoderStepGraph(model), step_in))
        for name, graph, args in graphs:
            ref = graph(*args)
            got = vm[name](*[tvm.runtime.tensor(a.numpy()) for a in args])
            assert len(got) == len(ref)
            for g, r in zip(got, ref, strict=True):
                np.testing.assert_allclose(g.numpy(), r.numpy(), atol=1e-4, rtol=1e-4)


def test_failures_are_data(tmp_path: Path, tiny_space: SearchSpace, tiny_mc: ModelConfig) -> None:
    good = BuildInput(tiny_space.smallest(), tiny_mc, host_target(), source_length_tokens=4, cache_len=4)
    bad = BuildInput(tiny_space.smallest(), tiny_mc, {"kind": "no-such-target"})
    results = TVMBuilder(max_workers=1, timeout_s=300).build([bad, good], [str(tmp_path / "b"), str(tmp_path / "g")])
    assert results[0].artifact is None and "no-such-target" in (results[0].error or "")
    assert results[1].error is None and Path(results[1].artifact or "").joinpath("lib.so").is_file()
    slow = TVMBuilder(max_workers=1, timeout_s=0.05).build([good], [str(tmp_path / "t")])
    assert slow[0].artifact is None and "timed out" in (slow[0].error or "")


@pytest.mark.parametrize("target", [{"kind": "llvm", "mcpu": "nope-cpu-"}, "llvm -mcpu=x", {"mcpu": "x"}])
def test_bad_targets(target: object) -> None:
    with pytest.raises(MeasurementError):
        make_target(target)  # type: ignore[arg-type]


def test_host_target_is_explicit() -> None:
    target = host_target()
    assert target["kind"] == "llvm" and target["mcpu"] not in ("", "native", "generic")
    assert make_target(target).kind.name == "llvm"


def test_cuda_code_generates_without_a_gpu(tmp_path: Path, tiny_space: SearchSpace, tiny_mc: ModelConfig) -> None:
    """The apache-tvm wheel carries CUDA codegen: a GPU library builds on a machine without a GPU."""
    from hwnas.kernels import compile_module, export_relax

    model = subnet_model(BuildInput(tiny_space.smallest(), tiny_mc, {"kind": "cuda"}))
    mod = export_relax(model, batch=1, source_length_tokens=4, cache_len=4)
    ex = compile_module(mod, {"kind": "cuda", "arch": "sm_90"})
    modules = list(ex.mod.imports) + [m for host in ex.mod.imports for m in host.imports]
    cuda = [m for m in modules if m.kind == "cuda"]
    assert cuda and "__global__" in cuda[0].inspect_source()  # real CUDA kernels, generated here


def test_cross_compiles_for_a_raspberry_pi(tmp_path: Path, tiny_space: SearchSpace, tiny_mc: ModelConfig) -> None:
    """aarch64 code is generated here and shipped as a tar of objects that the board links itself."""
    import tarfile

    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
    out = Path(build_one(BuildInput(tiny_space.smallest(), tiny_mc, target, source_length_tokens=4, cache_len=4),
                         str(tmp_path / "pi")))
    assert json.loads((out / "meta.json").read_text())["library"] == "lib.tar"
    with tarfile.open(out / "lib.tar") as tar:
        objects = [m for m in tar.getmembers() if m.name.endswith(".o")]
        assert objects
        head = tar.extractfile(objects[0]).read(20)  # type: ignore[union-attr]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
