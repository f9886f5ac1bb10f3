"""Benchmark: how repeatable is one latency measurement on this device?

Builds the largest subnet of a space once (with the device's tuning database if there is
one) and measures the same library repeatedly: in fresh worker processes (how `collect`
measures) and in one process, for a few run counts and thread counts. Reports per-session
median latency, within-session CV and the between-session spread (max/min - 1). Writes
bench/results/noise-<device>.json.

`--mode passes` compares the classic protocol (passes=1) with `--passes N` (same total timed
runs; the runner interleaves the subnets pass by pass and a record's latency is its fastest
pass's median) on K subnets of the space (largest, smallest, random ones; one build each),
measured in S sessions of fresh worker processes (as `collect` measures). Per protocol: each
subnet's between-session spread (max/min - 1), its median and p90 over subnets, and the
per-record CV. Waits (up to --wait-s) for the 1-minute load average to drop below
--max-load before it starts, and records the load averages. Writes
bench/results/noise-passes-<device>.json.

    python bench/noise.py [--sessions 6]
    python bench/noise.py --mode passes [--device local-cpu] [--sessions 8] [--runs 100] [--passes 5]
                          [--threads T] [--number K]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hwnas.io import atomic_write
from hwnas.kernels import BuildInput, build_one
from hwnas.latency import (
    DeviceProfile,
    MeasureConfig,
    RunInput,
    RunResult,
    TVMLocalRunner,
    builtin_device,
    cv,
    local_cpu_profile,
    measure_tvm_local,
    protocol_for,
)
from hwnas.search_spaces import get_space
from hwnas.supernet import ModelConfig

RESULTS = Path(__file__).parent / "results"


def summarize(results: list[RunResult], steps: int) -> dict:
    medians = [r.latency_ms(steps) for r in results]
    return {"medians_ms": medians, "within_session_cv": [r.latency_cv() for r in results],
            "between_session_spread": max(medians) / min(medians) - 1}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_for_quiet(max_load: float, wait_s: float) -> dict:
    """Poll the 1-minute load average every 60 s until it is below `max_load` (at most `wait_s`)."""
    t0, seen = time.monotonic(), [loadavg()]
    while seen[-1][0] >= max_load and time.monotonic() - t0 < wait_s:
        print(f"load average {seen[-1]}: waiting for the 1-minute figure to drop below {max_load}", flush=True)
        time.sleep(60)
        seen.append(loadavg())
    return {"max_load": max_load, "waited_s": round(time.monotonic() - t0), "quiet": seen[-1][0] < max_load,
            "load_while_waiting": seen}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def passes_mode(args: argparse.Namespace) -> None:
    """passes=1 against passes=N, same total runs, same builds, same sessions."""
    from hwnas.jobs import default_vocab_size, tuning_to_use
    from hwnas.kernels import TVMBuilder
    from hwnas.latency import distinct_subnets, runner_for

    device: DeviceProfile = builtin_device(args.device)
    space = get_space(args.space)
    base = dataclasses.replace(protocol_for(device, space), timed_runs=args.runs)
    if args.threads is not None:
        base = dataclasses.replace(base, threads=args.threads)
    base = dataclasses.replace(base, number=args.number)
    protocols = {"passes=1": dataclasses.replace(base, passes=1),
                 f"passes={args.passes}": dataclasses.replace(base, passes=args.passes)}
    tdir = tuning_to_use(device, args.space)
    mc = ModelConfig(vocab_size=default_vocab_size(args.space), qkv_dim=space.qkv_dim)
    rnd = [c for c in distinct_subnets(space, args.subnets + 2, seed=args.seed)
           if c not in (space.largest(), space.smallest())][:max(0, args.subnets - 2)]
    names = ["largest", "smallest", *(f"random-{i}" for i in range(len(rnd)))][:args.subnets]
    cfgs = [space.largest(), space.smallest(), *rnd][:args.subnets]
    builds = [BuildInput(c, mc, device.target, source_length_tokens=base.source_length_tokens,
                         cache_len=base.decode_steps, tuning_dir=tdir) for c in cfgs]
    steps = base.decode_steps
    per = {name: {"latency_ms": [[] for _ in cfgs], "cv_all_runs": [[] for _ in cfgs], "cv": [[] for _ in cfgs],
                  "wall_s": []} for name in protocols}
    posthoc = [[] for _ in cfgs]  # passes=1 runs cut into N consecutive passes afterwards: no interleaving
    session_load = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs: list[RunInput] = [RunInput(b) for b in builds]
        if device.runtime == "tvm":
            t0 = time.perf_counter()
            built = TVMBuilder(max_workers=2, timeout_s=1200).build(builds, [f"{tmp}/{i}" for i in range(len(builds))])
            for name, b in zip(names, built, strict=True):
                if b.error:
                    raise SystemExit(f"build of {name} failed: {b.error}")
            inputs = [RunInput(b, r.artifact) for b, r in zip(builds, built, strict=True)]
            print(f"built {len(builds)} subnets in {time.perf_counter() - t0:.0f} s", flush=True)
        gate = wait_for_quiet(args.max_load, args.wait_s)  # after the build: it loads the CPU too
        load_before = loadavg()
        print(f"load average before: {load_before}", flush=True)
        for s in range(args.sessions):
            order = list(protocols) if s % 2 == 0 else list(reversed(protocols))  # alternate: no order bias
            for name in order:
                protocol = protocols[name]
                t0 = time.perf_counter()
                results = runner_for(device, timeout_s=1200).run(inputs, protocol)  # fresh workers: a session
                per[name]["wall_s"].append(round(time.perf_counter() - t0, 2))
                for i, r in enumerate(results):
                    if not r.ok:
                        raise SystemExit(f"{names[i]} failed under {name}: {r.error}")
                    per[name]["latency_ms"][i].append(r.latency_ms(steps, protocol.passes))
                    per[name]["cv"][i].append(r.latency_cv(protocol.passes, decode_steps=steps))
                    per[name]["cv_all_runs"][i].append(max(cv(r.encoder_ms), cv(r.decoder_step_ms)))  # type: ignore[arg-type]
                    if protocol.passes == 1:
                        posthoc[i].append(r.latency_ms(steps, args.passes))
            session_load.append(loadavg())
            print(f"session {s + 1}/{args.sessions} done, load {session_load[-1]}: " + "  ".join(
                f"{n} {np.round([v[-1] for v in per[n]['latency_ms']], 2)}" for n in protocols), flush=True)
    load_after = loadavg()

    def summary(lat: list[list[float]], cvs: list[list[float]] | None = None,
                cvs_all: list[list[float]] | None = None, wall: list[float] | None = None) -> dict:
        spread = [max(v) / min(v) - 1 for v in lat]
        out = {"spread_per_subnet": dict(zip(names, spread, strict=True)),
               "spread_median": float(np.median(spread)), "spread_p90": pct(spread, 90),
               "spread_max": float(max(spread)),
               "latency_ms_per_subnet": dict(zip(names, lat, strict=True)),
               "median_latency_ms_per_subnet": dict(zip(names, map(float, map(np.median, lat)), strict=True))}
        if cvs is not None and cvs_all is not None:
            flat, flat_all = [x for v in cvs for x in v], [x for v in cvs_all for x in v]
            out |= {"cv_median": float(np.median(flat)), "cv_p90": pct(flat, 90),
                    "cv_all_runs_median": float(np.median(flat_all)), "cv_all_runs_p90": pct(flat_all, 90)}
        if wall is not None:
            out["wall_s_per_session"] = wall
        return out

    cases = {n: summary(per[n]["latency_ms"], per[n]["cv"], per[n]["cv_all_runs"], per[n]["wall_s"])
             for n in protocols}
    cases[f"passes=1 runs re-cut into {args.passes} passes (not interleaved)"] = summary(posthoc)
    one, many = cases["passes=1"], cases[f"passes={args.passes}"]
    ratio = [many["median_latency_ms_per_subnet"][n] / one["median_latency_ms_per_subnet"][n] for n in names]
    for name, c in cases.items():
        line = f"{name:48s} spread median {100 * c['spread_median']:.1f}%  p90 {100 * c['spread_p90']:.1f}%"
        if "cv_median" in c:
            line += (f"  CV median {100 * c['cv_median']:.1f}% (all runs {100 * c['cv_all_runs_median']:.1f}%)"
                     f"  {np.mean(c['wall_s_per_session']):.1f} s/session")
        print(line)
    print(f"passes={args.passes} / passes=1 latency (median over sessions): {np.round(ratio, 3)}")
    suffix = ("-tuned" if tdir else "") + (f"-threads{args.threads}" if args.threads is not None else "")
    suffix += (f"-runs{args.runs}" if args.runs != 100 else "") + (f"-number{args.number}" if args.number != 1 else "")
    path = RESULTS / f"noise-passes-{device.name}{suffix}.json"
    report = {"benchmark": "noise-passes", "device": device.name, "runtime": device.runtime,
              "fingerprint": device.fingerprint, "space": space.name, "tuned": tdir is not None,
              "subnets": dict(zip(names, (c.to_dict() for c in cfgs), strict=True)), "sessions": args.sessions,
              "protocols": {n: p.to_dict() for n, p in protocols.items()},
              "cases": cases, "latency_ratio_passes_over_1": dict(zip(names, ratio, strict=True)),
              "load_gate": gate, "load_before": load_before, "load_after_each_session": session_load,
              "load_after": load_after, "cpu_count": os.cpu_count(),
              "command": "python bench/noise.py " + " ".join(sys.argv[1:])}
    atomic_write(path, lambda t: t.write_text(json.dumps(report, indent=2) + "\n"))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="quickstart")
    ap.add_argument("--sessions", type=int, default=None, help="6 (runs mode) or 8 (passes mode)")
    ap.add_argument("--mode", choices=("runs", "passes"), default="runs")
    ap.add_argument("--device", default="local-cpu", help="passes mode: local-cpu (TVM) or local-cpu-torch")
    ap.add_argument("--runs", type=int, default=100, help="passes mode: timed runs of both protocols")
    ap.add_argument("--passes", type=int, default=5, help="passes mode: the protocol compared with passes=1")
    ap.add_argument("--subnets", type=int, default=5, help="passes mode: largest, smallest, then random ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--number", type=int, default=1, help="passes mode: back-to-back calls per timed run")
    ap.add_argument("--threads", type=int, default=None, help="passes mode: threads of both protocols "
                    "(default: the device's); the results file is then named ...-threads<T>.json")
    ap.add_argument("--max-load", type=float, default=1.0, help="passes mode: wait for a lower 1-minute load")
    ap.add_argument("--wait-s", type=float, default=1200.0, help="passes mode: longest wait for --max-load")
    args = ap.parse_args()
    if args.mode == "passes":
        args.sessions = args.sessions or 8
        MeasureConfig(timed_runs=args.runs, passes=args.passes)  # a clear error before minutes of building
        passes_mode(args)
        return
    args.sessions = args.sessions or 6

    from hwnas.jobs import default_vocab_size, tuning_to_use

    device, space = local_cpu_profile(), get_space(args.space)
    base = protocol_for(device, space)
    tdir = tuning_to_use(device, args.space)
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
        same = [RunResult(*map(tuple, measure_tvm_local(lib, protocol))) for _ in range(args.sessions)]
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
