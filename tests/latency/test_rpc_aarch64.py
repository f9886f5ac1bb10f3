"""The Raspberry Pi path, end to end, on an emulated board: an arm64 Debian root under qemu-user
running TVM's RPC server (scripts/aarch64-rpc-root.sh, scripts/aarch64-rpc-server.sh).

Slow (the first run builds the root: about 6 min) and needs root (chroot, mount, binfmt_misc).
The root lives at $HWNAS_AARCH64_ROOT (default /var/cache/hwnas/aarch64-root) and is reused.
Timings under emulation mean nothing; what is tested is that the path works and computes right.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hwnas.exceptions import MeasurementError
from hwnas.kernels import (
    DECODER_STEP,
    ENCODER,
    BuildInput,
    DecoderStepGraph,
    EncoderGraph,
    build_one,
    input_specs,
    random_inputs,
    subnet_model,
)
from hwnas.latency import DeviceProfile, MeasureConfig, loopback_rpc, measure, parse_tracker
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig

pytestmark = [pytest.mark.slow, pytest.mark.board]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
ROOT = Path(os.environ.get("HWNAS_AARCH64_ROOT", "/var/cache/hwnas/aarch64-root"))
KEY = "rpi-emulated"
TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
EM_AARCH64 = 183  # ELF e_machine


def _elf_machine(data: bytes) -> int:
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    return int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")


@pytest.fixture(scope="module")
def aarch64_root() -> Path:
    """The emulated board's root, built (or checked, when done: each step is skipped) by the script."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(SCRIPTS / "aarch64-rpc-root.sh"), str(ROOT)], capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        pytest.fail(f"building the aarch64 root failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    print(f"\naarch64 root ready in {time.perf_counter() - t0:.0f} s:\n{proc.stdout}")
    return ROOT


@pytest.fixture(scope="module")
def board(aarch64_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tracker on loopback and the emulated board's server joined to it; yields the tracker address."""
    log = tmp_path_factory.mktemp("aarch64-rpc") / "server.log"
    server = [str(SCRIPTS / "aarch64-rpc-server.sh"), str(aarch64_root)]
    try:
        # `import tvm` alone takes about 7 s under qemu
        with loopback_rpc(KEY, server=lambda tracker: [*server, tracker, KEY], join_timeout_s=300, log=log) as t:
            yield t
    except MeasurementError as e:
        pytest.fail(f"{e}\nserver log:\n{log.read_text(errors='replace')[-3000:]}")
    # The server's proc and /dev mounts live in its own mount namespace: none may be left here.
    assert not [m for m in Path("/proc/mounts").read_text().splitlines() if f" {aarch64_root}/" in m]


def test_measure_through_the_product_path(board: str, tiny_space: SearchSpace, tiny_mc: ModelConfig) -> None:
    """An iot device at an RPC tracker, measured by `measure`: build for aarch64 on this host, link and
    time on the board (the board links the uploaded object files itself: x86 objects would not link)."""
    device = DeviceProfile(name="rpi-emulated", kind="iot", target=TARGET, location="rpc", tracker=board,
                           rpc_key=KEY, protocol=MeasureConfig(warmup_runs=1, timed_runs=5, threads=1))
    t0 = time.perf_counter()
    [record] = measure(device=device, space=tiny_space, model_config=tiny_mc, subnets=[tiny_space.smallest()],
                       timeout_s=600)
    seconds = time.perf_counter() - t0
    assert record.result.ok, record.result.error
    assert record.result.board and record.result.board.startswith("127.0.0.1:")  # the board that timed it
    # TVM's stock server on the board: its fingerprint comes from the board's sysfs, read over the session
    assert record.fingerprint["probe"] == "sysfs" and record.fingerprint["cores"] == os.cpu_count()
    enc, dec = record.result.encoder_ms or (), record.result.decoder_step_ms or ()
    assert len(enc) == len(dec) == 5 and all(t > 0 for t in (*enc, *dec))
    print(f"\none measurement on the emulated board: {seconds:.1f} s (build + upload + link + time); "
          f"encoder {np.median(enc):.2f} ms, decoder step {np.median(dec):.2f} ms, "
          f"sentence {record.result.latency_ms(record.protocol.decode_steps):.1f} ms (emulated: not a Pi's figure)")


def test_outputs_on_the_board_equal_torch(board: str, tiny_space: SearchSpace, tiny_mc: ModelConfig,
                                          tmp_path: Path) -> None:
    """The same library the builder ships is aarch64 code, and computes on the board what torch does here."""
    import tvm
    from tvm import rpc
    from tvm.runtime.vm import VirtualMachine

    build = BuildInput(tiny_space.largest(), tiny_mc, TARGET, source_length_tokens=6, cache_len=4)
    artifact = Path(build_one(build, str(tmp_path / "lib")))
    lib = artifact / json.loads((artifact / "meta.json").read_text())["library"]
    assert lib.name == "lib.tar"
    with tarfile.open(lib) as tar:
        objects = [m for m in tar.getmembers() if m.name.endswith(".o")]
        assert objects and all(_elf_machine(tar.extractfile(m).read()) == EM_AARCH64  # type: ignore[union-attr]
                                for m in objects)

    model = subnet_model(build)
    specs = input_specs(build.subnet, tiny_mc, batch=1, src_len=6, cache_len=4)
    host, port = parse_tracker(board)
    remote = rpc.connect_tracker(host, port).request(KEY, priority=1, session_timeout=300)
    remote.upload(str(lib))
    dev = remote.cpu(0)
    vm = VirtualMachine(remote.load_module(lib.name), dev)
    worst = 0.0
    for name, graph in ((ENCODER, EncoderGraph(model)), (DECODER_STEP, DecoderStepGraph(model))):
        inputs = random_inputs(specs[name], vocab_size=tiny_mc.vocab_size, seed=1)
        with torch.no_grad():
            expected = graph(*(torch.from_numpy(a) for a in inputs))
        # Over RPC a tuple result is an opaque reference: fetch it field by field with get_outputs.
        vm.set_input(name, *(tvm.runtime.tensor(a, device=dev) for a in inputs))
        vm.invoke_stateful(name)
        got = vm.get_outputs(name)
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=0, atol=1e-4, err_msg=name)
            worst = max(worst, float(np.abs(g.numpy() - e.numpy()).max()))
    print(f"\nlargest |board - torch| over encoder and decoder-step outputs: {worst:.2e}")


def test_tuning_on_the_board_then_measuring_with_its_records(board: str, tiny_space: SearchSpace,
                                                              tiny_mc: ModelConfig, tmp_path: Path) -> None:
    """`hwnas kernels tune` for a remote device: candidates cross-compiled here, timed on the board; the subnet
    built with that database for aarch64 then runs on the board, and faster than untuned (emulated timings
    mean little, but naive untuned loops against tiled ones show even under qemu)."""
    from hwnas.kernels import tune_space
    from hwnas.latency import tuning_runner, tuning_target

    device = DeviceProfile(name="rpi-emulated", kind="iot", target=TARGET, location="rpc", tracker=board,
                           rpc_key=KEY, protocol=MeasureConfig(warmup_runs=1, timed_runs=5, threads=1))
    t0 = time.perf_counter()
    target = tuning_target(device)
    assert target == {**TARGET, "num-cores": 1}  # the threads its protocol pins
    report = tune_space(space=tiny_space, mc=tiny_mc, target=target, work_dir=tmp_path, trials=8,
                        decode_steps=tiny_space.source_length_tokens, num_trials_per_iter=8,
                        runner=tuning_runner(device, session_timeout_s=300))
    tuned_s = time.perf_counter() - t0
    assert report.trials == 8 and any(t.best_us for t in report.tasks), report.tasks
    records = {}
    for name, tuning in (("untuned", None), ("tuned", str(tmp_path))):
        [rec] = measure(device=device, space=tiny_space, model_config=tiny_mc, subnets=[tiny_space.largest()],
                        tuning_dir=tuning, timeout_s=600)
        assert rec.result.ok, rec.result.error
        records[name] = rec.latency_ms()
    print(f"\n8 trials tuned on the emulated board in {tuned_s:.0f} s; largest subnet on the board: untuned "
          f"{records['untuned']:.1f} ms, tuned {records['tuned']:.1f} ms (emulated)")
