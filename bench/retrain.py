"""Benchmark: test BLEU of the best subnet of a quickstart search, by what its weights are.

Runs `hwnas quickstart` in a fresh home (supernet, kernels, latency, search, export), takes the job's best
member within budget (`hwnas.jobs.best_member`, the one a job's retraining stage picks) and scores on the
Bible's held-out test books (sacreBLEU, beam 4):

- its weights inherited from the supernet (what the search scored; what exports carried before retraining),
- fine-tuned from those weights for N updates,
- retrained from scratch for the same N updates (HAT's step 5),
- the supernet's largest subnet with inherited weights (the most the supernet itself offers).

    python bench/retrain.py                   # about 35 min on 2 cores (quickstart 14, 2 x 600 updates)
    python bench/retrain.py --steps 20 --quickstart-steps 40 --test-limit 20   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hwnas.db import Database
from hwnas.io import atomic_write
from hwnas.jobs import best_member, get_job
from hwnas.latency import cpu_model
from hwnas.search_spaces import get_space
from hwnas.supernet import RECIPES, inherited_provenance, train_subtransformer

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="updates of fine-tuning and of retraining")
    ap.add_argument("--quickstart-steps", type=int, default=None, help="supernet steps (default: quickstart's)")
    ap.add_argument("--test-limit", type=int, default=None, help="only the first N test sentences (smoke)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "hwnas-bench-retrain")
    args = ap.parse_args()
    home = args.work / "home"
    env = {**os.environ, "HWNAS_HOME": str(home)}
    summary_file = home / "quickstart.json"
    t0 = time.perf_counter()
    if not summary_file.exists():
        extra = ["--steps", str(args.quickstart_steps)] if args.quickstart_steps else []
        subprocess.run([sys.executable, "-m", "hwnas.cli", "quickstart", *extra], env=env, check=True)
    quickstart_s = time.perf_counter() - t0
    summary = json.loads(summary_file.read_text())
    db = Database(f"sqlite:///{home / 'hwnas.db'}")
    job = get_job(db, summary["job_id"])
    best = best_member(db, job.id)
    space = get_space(job.spec.space)
    beam, rows = 4, {}

    for name, cfg in (("best member, inherited weights", best.subnet), ("largest subnet, inherited weights",
                                                                        space.largest())):
        _, _, prov = inherited_provenance(job.spec.supernet, cfg, beam=beam, test_limit=args.test_limit)
        rows[name] = {"test_bleu": prov["test_bleu"], "test_loss": prov["test_loss"], "updates": prov["steps"]}
        print(name, rows[name], flush=True)
    config = RECIPES["quickstart"].config(subnet=True, steps=args.steps, checkpoint_every=max(1, args.steps // 5))
    for init, name in (("inherited", "best member, fine-tuned"), ("scratch", "best member, retrained from scratch")):
        t = time.perf_counter()
        r = train_subtransformer(supernet=job.spec.supernet, subnet=best.subnet, out=args.work / init, config=config,
                                 init=init, average_last=1, device="cpu", resume=False, progress=False, beam=beam,
                                 test_limit=args.test_limit)
        rows[name] = {"test_bleu": r.test_bleu, "test_loss": r.test_loss, "updates": r.steps,
                      "train_s": time.perf_counter() - t, "tokens_per_s": r.tokens_per_s}
        print(name, rows[name], flush=True)
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "job": job.id, "best_member": {"candidate": best.id, "subnet": best.subnet.to_dict(), "valid_loss": best.loss,
                                       "params": best.params},
        "supernet_updates": next(iter(rows.values()))["updates"], "retrain_updates": args.steps,
        "test_sentences": args.test_limit or "all (465)", "beam": beam, "rows": rows,
        "quickstart_s": quickstart_s,
        "command": "python bench/retrain.py" + (f" --steps {args.steps}" if args.steps != 600 else ""),
    }
    if not args.test_limit:
        atomic_write(RESULTS / "retrain.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
