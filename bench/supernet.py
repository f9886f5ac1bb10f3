"""Benchmark: train the quickstart SuperTransformer on Bible De->En on this CPU.

Measures training throughput (tokens/s, s/step), valid loss and BLEU of the smallest and
largest subnets with inherited weights, and how well inherited-weight valid loss ranks
subnets: Kendall tau against the valid loss of the same subnets each trained alone for
the same short budget. Writes bench/results/supernet.json and a scatter plot PNG.

    python bench/supernet.py                 # full budget (about 30 min on 2 cores)
    python bench/supernet.py --steps 40 --standalone-steps 10 --subnets 8 --limit 16   # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from hwnas.io import atomic_write
from hwnas.latency import cpu_model
from hwnas.search_spaces import get_space
from hwnas.supernet import DataSpec, TrainConfig, count_params, evaluate_subnet, load_supernet, train_supernet

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1200, help="supernet training steps")
    ap.add_argument("--standalone-steps", type=int, default=300, help="steps for each subnet trained alone")
    ap.add_argument("--subnets", type=int, default=8, help="subnets in the ranking comparison (>= 8)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N valid sentences (smoke runs)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "hwnas-bench-supernet")
    ap.add_argument("--out", type=Path, default=RESULTS / "supernet.json")
    args = ap.parse_args()

    space = get_space("quickstart")
    data = DataSpec.parse("bible:de-en")
    valid = data.load("valid")
    if args.limit:
        valid = valid.head(args.limit)
    config = TrainConfig(steps=args.steps)
    t0 = time.perf_counter()
    result = train_supernet(space=space, data=data, out=args.work / "supernet", config=config, resume=False)
    train_s = time.perf_counter() - t0
    loaded = load_supernet(result.checkpoint)

    ends = {}
    for name, cfg in (("smallest", space.smallest()), ("largest", space.largest())):
        r = evaluate_subnet(loaded, cfg, valid, with_bleu=True, beam=4)
        ends[name] = {"valid_loss": r.valid_loss, "bleu": r.bleu, "params": r.params,
                      "params_no_embed": r.params_no_embed, "subnet": cfg.to_dict()}
        print(f"{name}: loss {r.valid_loss:.3f} BLEU {r.bleu:.2f}", flush=True)

    rng = np.random.default_rng(2026)
    chosen = [space.smallest(), space.largest()]
    while len(chosen) < args.subnets:  # distinct subnets, drawn with a fixed seed
        cfg = space.sample(rng)
        if cfg not in chosen:
            chosen.append(cfg)
    short = dataclasses.replace(config, steps=args.standalone_steps)
    rows = []
    for i, cfg in enumerate(chosen):
        inherited = evaluate_subnet(loaded, cfg, valid, with_bleu=False).valid_loss
        alone = train_supernet(space=space, data=data, out=args.work / f"alone-{i}", config=short, subnet=cfg,
                               resume=False)
        alone_loss = evaluate_subnet(load_supernet(alone.checkpoint), cfg, valid, with_bleu=False).valid_loss
        rows.append({"subnet": cfg.to_dict(), "key": cfg.key(), "inherited_valid_loss": inherited,
                     "standalone_valid_loss": alone_loss, "params": count_params(cfg, loaded.model.mc)})
        print(f"subnet {i}: inherited {inherited:.3f} alone {alone_loss:.3f}", flush=True)
    tau = kendalltau([r["inherited_valid_loss"] for r in rows], [r["standalone_valid_loss"] for r in rows])
    rho = spearmanr([r["inherited_valid_loss"] for r in rows], [r["standalone_valid_loss"] for r in rows])

    report = {
        "benchmark": "supernet",
        "command": "python bench/supernet.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in ("steps", "standalone_steps",
                                                                                  "subnets", "limit") and v),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "space": space.name, "data": str(data), "valid_sentences": len(valid),
        "train": {"steps": result.step, "tokens_per_s": result.tokens_per_s,
                  "seconds_per_step": result.seconds_per_step, "wall_s": train_s,
                  "final_train_loss": result.train_loss, "config": dataclasses.asdict(config)},
        "inherited": ends,
        "ranking": {"standalone_steps": args.standalone_steps, "subnets": rows,
                    "kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
                    "spearman_rho": float(rho.statistic)},
    }
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    plot(rows, float(tau.statistic), args.out.with_suffix(".png"))
    print(json.dumps({k: report[k] for k in ("train", "inherited")}, indent=2))
    print(f"Kendall tau {tau.statistic:.3f} (p={tau.pvalue:.3f}), Spearman {rho.statistic:.3f}")


def plot(rows: list[dict], tau: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    x = [r["inherited_valid_loss"] for r in rows]
    y = [r["standalone_valid_loss"] for r in rows]
    ax.scatter(x, y, c=[r["params"] / 1e6 for r in rows], cmap="viridis")
    for r in rows:
        ax.annotate(f"{r['params'] / 1e6:.2f}M", (r["inherited_valid_loss"], r["standalone_valid_loss"]), fontsize=7)
    ax.set_xlabel("valid loss, inherited supernet weights")
    ax.set_ylabel("valid loss, trained alone")
    ax.set_title(f"quickstart subnets: Kendall tau = {tau:.2f}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


if __name__ == "__main__":
    main()
