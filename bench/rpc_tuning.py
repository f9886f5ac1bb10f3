"""Benchmark: MetaSchedule tuning over RPC on emulated aarch64 boards (scripts/aarch64-rpc-*.sh).

1. Tuning throughput: the same number of trials of the quickstart space's tasks, timed on 1 board and then on 2
   boards under one key (fresh databases, same seed): trials per minute and the ratio.
2. That tuning reached the board: the largest and smallest subnet measured on the board untuned and with the
   2-board database (emulated timings mean nothing in absolute terms; untuned loops against tuned ones show).

Needs root (chroot, binfmt_misc) and the emulated root (built by scripts/aarch64-rpc-root.sh on first use).
On a 2-core host the builder and two emulated boards share the cores: the 2-board ratio is a floor.

    sudo .venv/bin/python bench/rpc_tuning.py [--trials 32] [--root /var/cache/hwnas/aarch64-root]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hwnas.io import atomic_write
from hwnas.kernels import tune_space
from hwnas.latency import DeviceProfile, MeasureConfig, loopback_farm, measure, tuning_runner, tuning_target
from hwnas.search_spaces import get_space
from hwnas.supernet import ModelConfig

RESULTS = Path(__file__).parent / "results"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
KEY = "rpi-emulated"
VOCAB = 4000  # the quickstart tokenizer's size


def timed_records(work: Path) -> int:
    """Records of the database whose candidate ran (MetaSchedule stores a failed one with a 1e10 s time)."""
    lines = (work / "database_tuning_record.json").read_text().splitlines()
    return sum(1 for line in lines if max(float(t) for t in json.loads(line)[1][1]) < 1e9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--space", default="quickstart")
    ap.add_argument("--root", type=Path, default=Path("/var/cache/hwnas/aarch64-root"))
    ap.add_argument("--out", type=Path, default=RESULTS / "rpc-tuning-emulated.json")
    args = ap.parse_args()
    subprocess.run([str(SCRIPTS / "aarch64-rpc-root.sh"), str(args.root)], check=True)
    space = get_space(args.space)
    mc = ModelConfig(vocab_size=VOCAB, qkv_dim=space.qkv_dim)
    server = [str(SCRIPTS / "aarch64-rpc-server.sh"), str(args.root)]
    report: dict[str, Any] = {"benchmark": "rpc-tuning", "space": space.name, "target": TARGET,
                              "trials": args.trials, "tuning": {}, "latency_ms": {},
                              "command": "python bench/rpc_tuning.py " + " ".join(sys.argv[1:]),
                              "note": "emulated boards (qemu-user) on this host: timings mean nothing in absolute "
                                      "terms; the builder and the boards share the host's cores"}
    with tempfile.TemporaryDirectory() as tmp:
        for boards in (1, 2):
            with loopback_farm(KEY, boards=boards, server=lambda t: [*server, t, KEY], join_timeout_s=300) as farm:
                device = DeviceProfile(name="rpi-emulated", kind="iot", target=TARGET, location="rpc",
                                       tracker=farm.tracker, rpc_key=KEY,
                                       protocol=MeasureConfig(warmup_runs=1, timed_runs=5, threads=1))
                work = Path(tmp, f"tuning-{boards}")
                t0 = time.perf_counter()
                tuned = tune_space(space=space, mc=mc, target=tuning_target(device), work_dir=work, trials=args.trials,
                                   decode_steps=space.source_length_tokens, num_trials_per_iter=8,
                                   runner=tuning_runner(device, session_timeout_s=300))
                seconds = time.perf_counter() - t0
                report["tuning"][f"{boards}_boards"] = {
                    "seconds": seconds, "tuning_s": tuned.tuning_s, "trials": tuned.trials,
                    "timed_on_the_board": timed_records(work), "trials_per_min": 60 * tuned.trials / tuned.tuning_s,
                    "tasks": [t.__dict__ for t in tuned.tasks if t.trials]}
                print(f"{boards} board(s): {tuned.trials} trials in {tuned.tuning_s:.0f} s of tuning "
                      f"({seconds:.0f} s with task extraction)", flush=True)
                if boards == 2:
                    for name, cfg in (("largest", space.largest()), ("smallest", space.smallest())):
                        row = {}
                        for label, tuning in (("untuned", None), ("tuned", str(work))):
                            [rec] = measure(device=device, space=space, model_config=mc, subnets=[cfg],
                                            tuning_dir=tuning, timeout_s=1200)
                            row[label] = rec.latency_ms() if rec.result.ok else {"error": rec.result.error}
                        if all(isinstance(v, float) for v in row.values()):
                            row["tuned_speedup"] = row["untuned"] / row["tuned"]
                        report["latency_ms"][name] = row
                        print(name, row, flush=True)
    one, two = report["tuning"]["1_boards"], report["tuning"]["2_boards"]
    report["two_vs_one_board_throughput"] = two["trials_per_min"] / one["trials_per_min"]
    atomic_write(args.out, lambda p: p.write_text(json.dumps(report, indent=2, default=str) + "\n"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
