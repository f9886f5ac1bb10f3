"""Benchmark: how repeatable is one latency measurement on this device?

Builds the largest subnet of a space once (with the device's tuning database if there is
one) and measures the same library repeatedly: in fresh worker processes (how `collect`
measures) and in one process, for a few run counts and thread counts. Reports per-session
median latency, within-session CV and the between-session spread (max/min - 1). Writes
bench/results/noise-<device>.json.

    python bench/noise.py [--sessions 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from hwnas.io import atomic_write
from hwnas.kernels import BuildInput, build_one
from hwnas.latency import RunInput, RunResult, TVMLocalRunner
from hwnas.latency._devices import local_cpu_profile, protocol_for
from hwnas.latency._runner import _measure_tvm_local
from hwnas.search_spaces import get_space
from hwnas.supernet import ModelConfig

RESULTS = Path(__file__).parent / "results"


def summarize(results: list[RunResult], steps: int) -> dict:
    medians = [r.latency_ms(steps) for r in results]
    return {"medians_ms": medians, "within_session_cv": [r.latency_cv() for r in results],
            "between_session_spread": max(medians) / min(medians) - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="quickstart")
    ap.add_argument("--sessions", type=int, default=6)
    args = ap.parse_args()

    from hwnas._cli_latency import _tuning_to_use, default_vocab_size

    device, space = local_cpu_profile(), get_space(args.space)
    base = protocol_for(device, space)
    tdir = _tuning_to_use(device, args.space, untuned=False)
    build = BuildInput(space.largest(), ModelConfig(vocab_size=default_vocab_size(args.space), qkv_dim=space.qkv_dim),
                       device.target, source_length_tokens=base.source_length_tokens, cache_len=base.decode_steps,
                       tuning_dir=tdir)
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_one(build, f"{tmp}/lib")
        for threads, runs in ((base.threads, 20), (base.threads, 100), (1, 20)):
            protocol = dataclasses.replace(base, threads=threads, timed_runs=runs)
            fresh = [TVMLocalRunner().run([RunInput(build, lib)], protocol)[0] for _ in range(args.sessions)]
            cases[f"fresh-process threads={threads} runs={runs}"] = summarize(fresh, base.decode_steps)
        protocol = dataclasses.replace(base, timed_runs=20)
        same = [RunResult(*map(tuple, _measure_tvm_local(lib, protocol))) for _ in range(args.sessions)]
        cases[f"same-process threads={base.threads} runs=20"] = summarize(same, base.decode_steps)
    for name, c in cases.items():
        print(f"{name:40s} medians {np.round(c['medians_ms'], 2)}  spread {100 * c['between_session_spread']:.0f}%  "
              f"within-session CV {100 * float(np.median(c['within_session_cv'])):.0f}%")
    path = RESULTS / f"noise-{device.name}.json"
    report = {"benchmark": "noise", "device": device.name, "fingerprint": device.fingerprint, "space": space.name,
              "subnet": "largest", "tuned": tdir is not None, "sessions": args.sessions, "cases": cases,
              "command": "python bench/noise.py " + " ".join(sys.argv[1:])}
    atomic_write(path, lambda t: t.write_text(json.dumps(report, indent=2) + "\n"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
