"""Benchmark: where a TVM-compiled subnet spends its time on this CPU, kernel by kernel, against ONNX Runtime.

For the largest and smallest subnet of a space (the two graphs hwnas times: the encoder and one decoder step):
- TVM, built with a tuning database: each VM call (kernels and builtins) timed through the VM's instrument hook
  over R runs, whether each kernel took a schedule from the database, and the whole call timed without the hook.
  Kernel time against the whole call is the VM's own overhead; unscheduled kernels are serial, scalar loops.
- ONNX Runtime on the same graphs: its own per-node profile (SessionOptions.enable_profiling), by operator type.

    python bench/kernel_profile.py --tuning-dir DIR [--space quickstart] [--runs 50]
        -> bench/results/kernel-profile-cpu.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.io import atomic_write
from hwnas.kernels import (
    DECODER_STEP,
    ENCODER,
    BuildInput,
    compile_module,
    export_onnx,
    export_relax,
    host_target,
    input_specs,
    onnx_feed,
    onnx_sessions,
    prepare,
    random_inputs,
    subnet_model,
)
from hwnas.latency import local_fingerprint
from hwnas.search_spaces import get_space
from hwnas.supernet import ModelConfig

RESULTS = Path(__file__).parent / "results"
VOCAB = 4000  # the quickstart tokenizer's size
STEPS = 30


def scheduled_kernels(mod: Any, target: dict[str, Any], tuning_dir: str) -> dict[str, bool]:
    """Each PrimFunc of the prepared module: whether the tuning database gave it a schedule."""
    import tvm
    from tvm import relax

    from hwnas.kernels import make_target

    with make_target(target):
        applied = relax.transform.MetaScheduleApplyDatabase(tuning_dir)(prepare(mod))
    return {gv.name_hint: bool(f.attrs and f.attrs.get("tirx.is_scheduled"))
            for gv, f in applied.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def profile_tvm(build: BuildInput, runs: int, threads: int) -> dict[str, Any]:
    import tvm
    from tvm import relax
    from tvm.runtime.vm import VirtualMachine

    tvm.get_global_func("runtime.config_threadpool")(1, threads)
    model = subnet_model(build)
    mod = export_relax(model, batch=1, source_length_tokens=build.source_length_tokens, cache_len=build.cache_len)
    scheduled = scheduled_kernels(mod, build.target, str(build.tuning_dir))
    vm = VirtualMachine(compile_module(mod, build.target, build.tuning_dir), tvm.cpu())
    specs = input_specs(build.subnet, build.model_config, batch=1, src_len=build.source_length_tokens,
                        cache_len=build.cache_len)
    inputs = {fn: [tvm.runtime.tensor(a) for a in random_inputs(specs[fn], vocab_size=build.model_config.vocab_size)]
              for fn in (ENCODER, DECODER_STEP)}
    whole_us = {}
    for fn, args in inputs.items():  # the whole calls first: the hook, once set, stays for the VM's life
        for _ in range(5):
            vm[fn](*args)
        whole = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            vm[fn](*args)
            whole.append(time.perf_counter_ns() - t0)
        whole_us[fn] = float(np.median(whole)) / 1e3
    per_call: dict[str, list[int]] = collections.defaultdict(list)
    started: dict[str, int] = {}

    def hook(_func: Any, name: str, before: bool, _ret: Any, *_args: Any) -> Any:
        now = time.perf_counter_ns()
        if before:
            started[name] = now
        else:
            per_call[name].append(now - started.pop(name))
        return relax.VMInstrumentReturnKind.NO_OP

    vm.set_instrument(hook)
    out: dict[str, Any] = {}
    for fn, args in inputs.items():
        per_call.clear()
        for _ in range(runs):
            vm[fn](*args)
        # a kernel called k times a run has k x runs samples: its time a run is its median call x k
        kernels = []
        for name, samples in per_call.items():
            calls = len(samples) // runs
            us = float(np.median(samples)) / 1e3
            kernels.append({"name": name, "calls": calls, "us_per_call": us, "us_per_run": us * calls,
                            "scheduled": scheduled.get(name)})
        kernels.sort(key=lambda k: -k["us_per_run"])
        summed = sum(k["us_per_run"] for k in kernels)
        unsched = sum(k["us_per_run"] for k in kernels if k["scheduled"] is False)
        builtin = sum(k["us_per_run"] for k in kernels if k["scheduled"] is None)
        out[fn] = {"whole_us": whole_us[fn], "kernels_us": summed, "unscheduled_us": unsched, "builtins_us": builtin,
                   "kernels": kernels[:25], "n_kernels": len(kernels),
                   "unscheduled_kernels": sum(1 for k in kernels if k["scheduled"] is False)}
        print(f"TVM {fn}: whole {whole_us[fn]:.0f} us; kernels {summed:.0f} (unscheduled {unsched:.0f}, builtins "
              f"{builtin:.0f}) over {len(kernels)} kinds", flush=True)
    return out


def profile_ort(build: BuildInput, runs: int, threads: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    model = subnet_model(build)
    specs = input_specs(build.subnet, build.model_config, batch=1, src_len=build.source_length_tokens,
                        cache_len=build.cache_len)
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_onnx(model, Path(tmp), source_length_tokens=build.source_length_tokens,
                            cache_len=build.cache_len, batch=1)
        for fn in (ENCODER, DECODER_STEP):
            import onnxruntime as ort

            plain = onnx_sessions(paths, threads=threads)[fn]
            feed = onnx_feed(plain, [n for n, _, _ in specs[fn]],
                             random_inputs(specs[fn], vocab_size=build.model_config.vocab_size))
            for _ in range(5):
                plain.run(None, feed)
            whole = []
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                plain.run(None, feed)
                whole.append(time.perf_counter_ns() - t0)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / f"ort-{fn}")
            sess = ort.InferenceSession(str(paths[fn]), opts, providers=["CPUExecutionProvider"])
            for _ in range(runs):
                sess.run(None, feed)
            events = json.loads(Path(sess.end_profiling()).read_text())
            by_op: dict[str, list[float]] = collections.defaultdict(list)
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    by_op[e["args"]["op_name"]].append(float(e["dur"]))
            ops = sorted(({"op": op, "us_per_run": sum(d) / runs, "calls": len(d) // runs}
                          for op, d in by_op.items()), key=lambda o: -o["us_per_run"])
            whole_us = float(np.median(whole)) / 1e3
            out[fn] = {"whole_us": whole_us, "nodes_us": sum(o["us_per_run"] for o in ops), "ops": ops}
            print(f"ORT {fn}: whole {whole_us:.0f} us; nodes {out[fn]['nodes_us']:.0f} us", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tuning-dir", required=True)
    ap.add_argument("--space", default="quickstart")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=RESULTS / "kernel-profile-cpu.json")
    args = ap.parse_args()
    space = get_space(args.space)
    mc = ModelConfig(vocab_size=VOCAB, qkv_dim=space.qkv_dim)
    rows = {}
    for name, cfg in (("largest", space.largest()), ("smallest", space.smallest())):
        build = BuildInput(cfg, mc, host_target(), tuning_dir=args.tuning_dir, cache_len=STEPS,
                           source_length_tokens=space.source_length_tokens)
        tvm_p, ort_p = profile_tvm(build, args.runs, args.threads), profile_ort(build, args.runs, args.threads)
        sentence = {rt: p[ENCODER]["whole_us"] + STEPS * p[DECODER_STEP]["whole_us"]
                    for rt, p in (("tvm", tvm_p), ("onnxruntime", ort_p))}
        rows[name] = {"subnet": cfg.to_dict(), "tvm": tvm_p, "onnxruntime": ort_p, "sentence_us": sentence,
                      "tvm_vs_onnxruntime": sentence["tvm"] / sentence["onnxruntime"]}
        print(f"{name}: sentence TVM {sentence['tvm'] / 1e3:.2f} ms, ORT {sentence['onnxruntime'] / 1e3:.2f} ms",
              flush=True)
    from hwnas.kernels import count_tuning_records

    report = {"benchmark": "kernel-profile", "space": space.name, "threads": args.threads, "runs": args.runs,
              "tuning_records": count_tuning_records(args.tuning_dir), "fingerprint": local_fingerprint(),
              "subnets": rows, "command": "python bench/kernel_profile.py " + " ".join(sys.argv[1:])}
    atomic_write(args.out, lambda p: p.write_text(json.dumps(report, indent=2, default=str) + "\n"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
