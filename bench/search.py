"""Benchmarks of the search (issue #3), on the trained quickstart supernet and this CPU.

    python bench/search.py quality      # hypervolume at an equal evaluation budget: evo / nsga2 / tpe / random
    python bench/search.py throughput   # candidates scored per second with 1 and 2 Ray workers
    python bench/search.py e2e          # best subnet under 1/3 of the largest subnet's measured latency

`quality` and `e2e` use the layerwise predictor trained on the measurements bench/predictor.py
collected (its database, --db); `e2e` runs a real job (Ray, verification on the device). Results
go to bench/results/search-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.io import atomic_write

RESULTS = Path(__file__).parent / "results"
BENCH_DB = f"sqlite:///{Path(os.environ.get('TMPDIR', '/tmp')) / 'hwnas-bench.db'}"


def _write(name: str, out: dict[str, Any]) -> Path:
    out["command"] = "python bench/search.py " + " ".join(sys.argv[1:])
    path = RESULTS / f"search-{name}.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(out, indent=2) + "\n"))
    print(f"wrote {path}")
    return path


def _checkpoint(args: argparse.Namespace) -> str:
    from hwnas.db import Database
    from hwnas.jobs import get_supernet

    return str(args.supernet or get_supernet(Database(), space="quickstart").path)


def _predictor(db: Any, device: Any, space: Any, tuning_dir: str | None, mc: Any) -> Any:
    """Train the layerwise predictor on the stored measurements of this machine's revision of the device, of
    model `mc` (and store it)."""
    from hwnas.latency import DeviceRegistry, load_predictor, train_predictors

    report = train_predictors(db, device=device, space=space, model_config=mc, kinds=["layerwise"],
                              tuning_dir=tuning_dir)
    prov = DeviceRegistry(db).provenance(device, space, mc, tuning_dir)
    pred, info = load_predictor(db, prov, kind="layerwise", version=report[0]["version"])
    return pred, report[0]


def _tuning(device: str) -> str | None:
    from hwnas.settings import Settings

    t = Settings().tuning_dir(device, "quickstart")
    return str(t) if (t / "database_tuning_record.json").exists() else None


def quality(args: argparse.Namespace) -> None:
    """Each strategy runs until `budget` candidates are scored; HV of (valid loss, predicted latency)."""
    from hwnas.db import Database
    from hwnas.jobs import FitnessConfig, LocalEvaluator
    from hwnas.latency import DeviceRegistry
    from hwnas.search import Evaluation, LatencyConstraint, Problem, create_strategy, hypervolume_2d
    from hwnas.search_spaces import get_space

    db = Database(args.db)
    space, device = get_space("quickstart"), DeviceRegistry(db).get(args.device)
    from hwnas.supernet import ModelConfig, read_checkpoint

    mc = ModelConfig(**read_checkpoint(_checkpoint(args))["model_config"])
    pred, _ = _predictor(db, device, space, _tuning(args.device), mc)
    rng = np.random.default_rng(0)
    lat = pred.predict([space.sample(rng) for _ in range(2000)])
    budget_ms = float(np.percentile(lat, 50))  # half the space is feasible
    problem = Problem(space, (LatencyConstraint(device.name, budget_ms, pred.predict),))
    fitness = FitnessConfig(valid_sentences=args.valid_sentences)
    evaluator = LocalEvaluator(_checkpoint(args), fitness, threads=2)
    memo: dict[Any, float] = {}  # scores are deterministic: one subnet is scored once for all runs
    sizes = {"evo": {"population": 20, "parents": 4, "mutations": 8, "crossovers": 8, "generations": 50},
             "nsga2": {"batch_size": 20, "batches": 50}, "tpe": {"batch_size": 20, "batches": 50},
             "random": {"batch_size": 20, "batches": 50}}
    runs: dict[str, list[dict[str, Any]]] = {}
    points_all: list[tuple[float, float]] = []
    for name, opts in sizes.items():
        for seed in range(args.seeds):
            strategy = create_strategy(name, problem, seed=seed, **opts)
            scored: list[tuple[float, float]] = []
            t0 = time.perf_counter()
            while len(scored) < args.budget and (batch := strategy.ask()) is not None:
                new = [c for c in batch if c not in memo]
                for c, s in zip(new, evaluator.evaluate(new), strict=True):
                    memo[c] = s.valid_loss if s.valid_loss is not None else float("inf")
                strategy.tell(batch, [Evaluation(memo[c]) for c in batch])
                scored += [(memo[c], float(v)) for c, v in zip(batch, pred.predict(batch), strict=True)]
            runs.setdefault(name, []).append({"seed": seed, "scored": len(scored), "s": time.perf_counter() - t0,
                                              "points": scored[:args.budget]})
            points_all += scored
            print(f"{name} seed {seed}: {len(scored)} scored, best {min(p[0] for p in scored):.4f}", flush=True)
    ref = (max(p[0] for p in points_all) + 1e-3, budget_ms)
    summary = {}
    for name, rs in runs.items():
        hv = [hypervolume_2d(np.array(r["points"]), ref) for r in rs]
        best = [min(p[0] for p in r["points"]) for r in rs]
        for r, h in zip(rs, hv, strict=True):
            r["hypervolume"] = h
        summary[name] = {"hypervolume_mean": float(np.mean(hv)), "hypervolume_std": float(np.std(hv)),
                         "best_loss_mean": float(np.mean(best)), "best_loss_std": float(np.std(best))}
        print(f"{name:7s} HV {np.mean(hv):.4f} +- {np.std(hv):.4f}  best loss {np.mean(best):.4f}")
    _write("quality", {"benchmark": "search quality at equal evaluation budget", "device": device.name,
                       "budget_evaluations": args.budget, "seeds": args.seeds, "latency_budget_ms": budget_ms,
                       "reference_point": ref, "valid_sentences": args.valid_sentences, "sizes": sizes,
                       "summary": summary, "runs": runs})


def throughput(args: argparse.Namespace) -> None:
    import ray

    from hwnas.jobs import FitnessConfig, RayEvaluator, init_ray
    from hwnas.search_spaces import get_space

    space = get_space("quickstart")
    rng = np.random.default_rng(0)
    subnets = [space.sample(rng) for _ in range(args.n)]
    fitness = FitnessConfig(valid_sentences=args.valid_sentences)
    init_ray(num_cpus=os.cpu_count())
    rows = []
    for workers, threads in ((1, 1), (2, 1), (1, 2)):
        ev = RayEvaluator(_checkpoint(args), fitness, workers=workers, threads_per_worker=threads)
        ev.evaluate(subnets[:workers])  # warm the replicas
        t0 = time.perf_counter()
        scores = ev.evaluate(subnets)
        s = time.perf_counter() - t0
        ev.close()
        rows.append({"workers": workers, "threads_per_worker": threads, "subnets": len(subnets), "s": s,
                     "subnets_per_s": len(subnets) / s, "errors": sum(x.error is not None for x in scores)})
        print(rows[-1], flush=True)
    ray.shutdown()
    base = rows[0]["subnets_per_s"]
    _write("throughput", {"benchmark": "search evaluation throughput (Ray actors, one supernet replica each)",
                          "cpus": os.cpu_count(), "valid_sentences": args.valid_sentences, "rows": rows,
                          "speedup_2_workers": rows[1]["subnets_per_s"] / base,
                          "scaling_efficiency_2_workers": rows[1]["subnets_per_s"] / base / 2})


def e2e(args: argparse.Namespace) -> None:
    """A real job: budget = 1/3 of the largest subnet's measured latency; BLEU of the best vs the largest."""
    from hwnas.db import Database
    from hwnas.jobs import FitnessConfig, SearchSpec, create_job, front, get_job, run_job
    from hwnas.latency import DeviceRegistry, measure
    from hwnas.search import strategy_options
    from hwnas.search_spaces import get_space
    from hwnas.supernet import DataSpec, bleu, count_params, load_supernet, translate

    db = Database(args.db)
    space, device = get_space("quickstart"), DeviceRegistry(db).get(args.device)
    tdir = _tuning(args.device)
    ckpt = _checkpoint(args)
    sup = load_supernet(ckpt)
    _, pred_report = _predictor(db, device, space, tdir, sup.model.mc)
    largest = measure(device=device, space=space, model_config=sup.model.mc, subnets=[space.largest()],
                      tuning_dir=tdir)[0]
    largest_ms = largest.latency_ms()
    budget = largest_ms / 3
    spec = SearchSpec(space="quickstart", device=device.name, latency_ms=budget, supernet=ckpt, strategy="evo",
                      seed=0, options=strategy_options("evo", population=args.population,
                                                       generations=args.generations),
                      fitness=FitnessConfig(valid_sentences=args.valid_sentences), workers=2, tuning_dir=tdir)
    t0 = time.perf_counter()
    job = run_job(db, create_job(db, spec), progress=True)
    search_s = time.perf_counter() - t0
    members = front(db, job.id)
    ok = [m for m in members if m.meets_constraint]
    best = min(ok or members, key=lambda m: m.candidate.loss or float("inf"))
    test = DataSpec.parse(sup.data).load("test")
    refs, srcs = list(test.target), list(test.source)

    def score(cfg: Any) -> float:
        return bleu(translate(sup.model.subnet(cfg), sup.tokenizer, srcs, beam=4), refs)

    out = {"benchmark": "search end to end", "device": device.name, "fingerprint": device.fingerprint,
           "tuned": tdir is not None, "predictor": {k: pred_report[k] for k in ("kind", "version", "train", "test")},
           "predictor_metrics": pred_report["metrics"],
           "largest": {"measured_ms": largest_ms, "test_bleu": score(space.largest()),
                       "params": count_params(space.largest(), sup.model.mc)},
           "budget_ms": budget, "job": job.id, "search_s": search_s, "evaluations": job.evaluations,
           "generations": job.generation, "front_size": len(members),
           "front_breaking_budget_when_measured": sum(m.meets_constraint is False for m in members),
           "best": {"subnet": best.candidate.subnet.to_dict(), "valid_loss": best.candidate.loss,
                    "predicted_ms": best.candidate.predicted_latency_ms, "measured_ms": best.measured_latency_ms,
                    "meets_budget": best.meets_constraint, "test_bleu": score(best.candidate.subnet),
                    "params": best.candidate.params},
           "status": get_job(db, job.id).status}
    out["speedup_vs_largest"] = largest_ms / best.measured_latency_ms if best.measured_latency_ms else None
    out["size_ratio_vs_largest"] = out["largest"]["params"] / best.candidate.params
    print(json.dumps({k: out[k] for k in ("largest", "budget_ms", "best", "speedup_vs_largest")}, indent=1))
    _write("e2e", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("quality", "throughput", "e2e"))
    ap.add_argument("--db", default=BENCH_DB)
    ap.add_argument("--device", default="local-cpu")
    ap.add_argument("--supernet", default=None)
    ap.add_argument("--valid-sentences", type=int, default=50, help="fixed validation subset of the fitness")
    ap.add_argument("--budget", type=int, default=150, help="quality: candidates scored per run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("-n", type=int, default=24, help="throughput: candidates per configuration")
    ap.add_argument("--population", type=int, default=40)
    ap.add_argument("--generations", type=int, default=10)
    args = ap.parse_args()
    {"quality": quality, "throughput": throughput, "e2e": e2e}[args.mode](args)


if __name__ == "__main__":
    main()
