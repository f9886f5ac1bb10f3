"""Benchmark: TVM vs PyTorch eager vs ONNX Runtime latency of the largest and smallest subnet.

All runtimes time the same two graphs (encoder; decoder step over a 30-slot key/value
cache) under one protocol (batch 1, 30 source tokens, 30 steps, warmup 5, 50 timed runs,
threads pinned), side by side in one run; the JSON holds raw runs and ratios.

    python bench/latency.py cpu [--tuning-dir DIR]     # this CPU -> bench/results/latency-cpu.json
    python bench/latency.py build-gpu --libs DIR         # CUDA libraries for sm_90, built here (no GPU needed)
    python bench/latency.py gpu --libs DIR --out FILE    # on a GPU machine: TVM (runtime only) vs torch CUDA
    python bench/latency.py gpu-tuned --tuning-dir DIR   # on a GPU machine with hwnas installed: TVM built with
                                                         # its CUDA tuning database vs torch eager on the GPU
                                                         # -> bench/results/latency-gpu-tuned.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.latency import MeasureConfig, RunResult
from hwnas.search_spaces import get_space
from hwnas.supernet import ModelConfig

RESULTS = Path(__file__).parent / "results"
PROTOCOL = MeasureConfig(warmup_runs=5, timed_runs=50)
VOCAB = 4000  # the quickstart tokenizer's size


def subnets(space_name: str) -> dict[str, Any]:
    space = get_space(space_name)
    return {"largest": space.largest(), "smallest": space.smallest()}


def summary(r: RunResult, steps: int) -> dict[str, Any]:
    if not r.ok:
        return {"error": r.error}
    return {"latency_ms": r.latency_ms(steps), "cv": r.latency_cv(), "encoder_ms": list(r.encoder_ms or ()),
            "decoder_step_ms": list(r.decoder_step_ms or ())}


def run_cpu(args: argparse.Namespace) -> None:
    from hwnas.kernels import BuildInput, build_one, host_target
    from hwnas.latency import OrtRunner, RunInput, TorchRunner, TVMLocalRunner, local_fingerprint

    threads = args.threads or os.cpu_count() or 1
    protocol = dataclasses.replace(PROTOCOL, threads=threads)
    mc = ModelConfig(vocab_size=VOCAB, qkv_dim=get_space(args.space).qkv_dim)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in subnets(args.space).items():
            b = BuildInput(cfg, mc, host_target(), tuning_dir=args.tuning_dir)
            lib = build_one(b, f"{tmp}/{name}")
            tvm_r = TVMLocalRunner().run([RunInput(b, lib)], protocol)[0]
            torch_r = TorchRunner().run([RunInput(b)], protocol)[0]
            ort_r = OrtRunner().run([RunInput(b)], protocol)[0]
            row = {"subnet": cfg.to_dict(), "tvm": summary(tvm_r, 30), "torch": summary(torch_r, 30),
                   "onnxruntime": summary(ort_r, 30)}
            if tvm_r.ok and torch_r.ok:
                t = tvm_r.latency_ms(30)
                row["tvm_vs_torch"] = t / torch_r.latency_ms(30)
                row["tvm_vs_onnxruntime"] = t / ort_r.latency_ms(30)
            rows[name] = row
            print(name, {k: round(v["latency_ms"], 3) for k, v in row.items()
                         if isinstance(v, dict) and "latency_ms" in v}, flush=True)
    write(args.out or RESULTS / "latency-cpu.json", {
        "benchmark": "latency", "device": "local-cpu", "space": args.space, "tuning_dir": args.tuning_dir,
        "tuned": bool(args.tuning_dir), "protocol": protocol.to_dict(), "fingerprint": local_fingerprint(),
        "subnets": rows, "command": "python bench/latency.py " + " ".join(sys.argv[1:])})


def build_gpu(args: argparse.Namespace) -> None:
    from hwnas.kernels import BuildInput, build_one

    mc = ModelConfig(vocab_size=VOCAB, qkv_dim=get_space(args.space).qkv_dim)
    for name, cfg in subnets(args.space).items():
        print(build_one(BuildInput(cfg, mc, {"kind": "cuda", "arch": args.arch}), f"{args.libs}/{name}"))


def run_gpu(args: argparse.Namespace) -> None:
    import torch

    from hwnas.kernels import BuildInput
    from hwnas.latency import measure_torch, measure_tvm_local

    rows = {}
    for name in ("largest", "smallest"):
        lib = f"{args.libs}/{name}"
        meta = json.loads(Path(lib, "meta.json").read_text())
        from hwnas.search_spaces import SubnetConfig

        build = BuildInput(SubnetConfig.from_dict(meta["subnet"]), ModelConfig(**meta["model_config"]), meta["target"])
        row: dict[str, Any] = {"subnet": meta["subnet"]}
        for runtime, fn in (("tvm", lambda: measure_tvm_local(lib, PROTOCOL)),
                            ("torch", lambda: measure_torch(build, PROTOCOL, "cuda"))):
            try:
                enc, dec = fn()
                row[runtime] = summary(RunResult(tuple(enc), tuple(dec)), 30)
            except Exception as e:  # one runtime failing is a result, not a crash
                row[runtime] = {"error": f"{type(e).__name__}: {e}"[:500]}
        if "latency_ms" in row["tvm"] and "latency_ms" in row["torch"]:
            row["tvm_vs_torch"] = row["tvm"]["latency_ms"] / row["torch"]["latency_ms"]
        rows[name] = row
        print(name, {k: v.get("latency_ms", v.get("error")) for k, v in row.items() if isinstance(v, dict)
                     and k != "subnet"}, flush=True)
    write(Path(args.out), {
        "benchmark": "latency", "device": torch.cuda.get_device_name(0), "space": args.space, "tuned": False,
        "note": "TVM: untuned CUDA (DLight default schedules) built on a CPU machine, run with the TVM runtime only",
        "protocol": PROTOCOL.to_dict(), "python": platform.python_version(), "torch": torch.__version__,
        "subnets": rows, "command": "python bench/latency.py " + " ".join(sys.argv[1:])})


def run_gpu_tuned(args: argparse.Namespace) -> None:
    """Side by side on this machine's GPU: TVM (built here with the tuning database) and torch eager."""
    import torch

    from hwnas.kernels import BuildInput, build_one, count_tuning_records
    from hwnas.latency import RunInput, TorchRunner, TVMLocalRunner, builtin_device

    gpu = builtin_device("local-gpu")
    mc = ModelConfig(vocab_size=VOCAB, qkv_dim=get_space(args.space).qkv_dim)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in subnets(args.space).items():
            row: dict[str, Any] = {"subnet": cfg.to_dict()}
            for label, tuning in (("tvm_untuned", None), ("tvm", args.tuning_dir)):
                b = BuildInput(cfg, mc, gpu.target, tuning_dir=tuning)
                row[label] = summary(TVMLocalRunner().run([RunInput(b, build_one(b, f"{tmp}/{name}-{label}"))],
                                                          PROTOCOL)[0], 30)
            row["torch"] = summary(TorchRunner(device="cuda").run([RunInput(b)], PROTOCOL)[0], 30)
            if "latency_ms" in row["tvm"] and "latency_ms" in row["torch"]:
                row["tvm_vs_torch"] = row["tvm"]["latency_ms"] / row["torch"]["latency_ms"]
            rows[name] = row
            print(name, {k: v.get("latency_ms", v.get("error")) for k, v in row.items() if isinstance(v, dict)
                         and k != "subnet"}, flush=True)
    write(args.out or RESULTS / "latency-gpu-tuned.json", {
        "benchmark": "latency", "device": torch.cuda.get_device_name(0), "target": gpu.target, "space": args.space,
        "tuned": bool(args.tuning_dir), "tuning_records": count_tuning_records(args.tuning_dir) if args.tuning_dir
        else 0, "protocol": PROTOCOL.to_dict(), "fingerprint": gpu.fingerprint, "torch": torch.__version__,
        "subnets": rows, "command": "python bench/latency.py " + " ".join(sys.argv[1:])})


def write(path: Path, report: dict[str, Any]) -> None:
    from hwnas.io import atomic_write

    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(report, indent=2, default=float) + "\n"))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["cpu", "build-gpu", "gpu", "gpu-tuned"])
    ap.add_argument("--space", default="quickstart")
    ap.add_argument("--tuning-dir", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--libs", default="bench/.gpu-libs")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    np.set_printoptions(precision=3)
    {"cpu": run_cpu, "build-gpu": build_gpu, "gpu": run_gpu, "gpu-tuned": run_gpu_tuned}[args.mode](args)


if __name__ == "__main__":
    main()
