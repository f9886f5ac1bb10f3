"""How long `hwnas quickstart` takes from nothing: the command with its default settings, as a user runs it.

    python bench/quickstart.py [--keep] [-- extra quickstart options]

Runs `hwnas quickstart` in a subprocess with a fresh temporary $HWNAS_HOME (no cached checkpoint, tuning
database or measurements), and writes bench/results/quickstart.json: each stage's seconds (from the
run's own summary), the total wall time of the process, and the machine: cores, CPU, load average
before and after (this 2-core VM is shared, so the load is part of every figure), date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hwnas.io import atomic_write

RESULTS = Path(__file__).parent / "results"
TIMEOUT_S = 3600  # a run past an hour is a failure on any machine this targets


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _machine() -> dict[str, Any]:
    from hwnas.latency import cpu_model

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}


def run(extra: list[str], home: Path) -> dict[str, Any]:
    """One quickstart in `home`; its summary, the wall time and the load around it."""
    env = {**os.environ, "HWNAS_HOME": str(home), "COLUMNS": "160"}
    env.pop("HWNAS_DB_URL", None)  # the default SQLite database under the fresh home
    load_before, t0 = _load(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hwnas.cli", "quickstart", *extra], env=env, timeout=TIMEOUT_S,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall_s, load_after = time.perf_counter() - t0, _load()
    (home / "quickstart.log").write_text(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"hwnas quickstart failed (exit {proc.returncode}); last output:\n{proc.stdout[-3000:]}")
    summary = json.loads((home / "quickstart.json").read_text())
    return {"summary": summary, "wall_s": round(wall_s, 1), "load_before": load_before, "load_after": load_after}


def _job_note(home: Path, job_id: int | None) -> str | None:
    """The search job's note: how verification ended (members that met the budget, extra measurements)."""
    if job_id is None:
        return None
    from hwnas.db import Database
    from hwnas.jobs import get_job

    with Database(f"sqlite:///{home / 'hwnas.db'}") as db:
        return get_job(db, job_id).note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temporary HWNAS_HOME (its path is printed)")
    ap.add_argument("--summary-of", type=Path, default=None,
                    help="write the results of a finished run kept in this home instead of running (no wall time)")
    ap.add_argument("extra", nargs="*", help="options passed to hwnas quickstart (after --)")
    args = ap.parse_args()
    if args.summary_of:
        home = args.summary_of
        result = {"summary": json.loads((home / "quickstart.json").read_text()), "wall_s": None,
                  "load_before": None, "load_after": None}
    else:
        home = Path(tempfile.mkdtemp(prefix="hwnas-quickstart-bench-"))
        result = run(args.extra, home)
    s = result["summary"]
    out = {
        "benchmark": "quickstart",
        "command": "python bench/quickstart.py " + " ".join(sys.argv[1:]),
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_average_before": result["load_before"],  # 1, 5, 15 min
        "load_average_after": result["load_after"],
        "settings": s["sizes"],
        "stage_seconds": s["stage_seconds"],
        "total_seconds_in_command": s["total_seconds"],
        "total_wall_seconds": result["wall_s"],  # the process: imports and startup included
        "budget": s["budget"], "predictor": s["predictor"], "best": s["best"],
        "tuning_records": s["tuning_records"], "checkpoint_step": s["checkpoint_step"],
        "verification": _job_note(home, s.get("job_id")),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "quickstart.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(out, indent=2) + "\n"))
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in s["stage_seconds"].items())
    total = result["wall_s"] or s["total_seconds"]
    print(f"quickstart: {total / 60:.1f} min ({stages}); load {result['load_before']} -> "
          f"{result['load_after']}; wrote {path}")
    if args.keep or args.summary_of:  # never remove a home the caller named
        print(f"kept {home}")
    else:
        import shutil

        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
