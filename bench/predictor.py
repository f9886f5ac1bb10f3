"""Benchmark: latency predictors on real measurements of this CPU (TVM-compiled subnets).

Collects n random quickstart subnets on `local-cpu` into a benchmark database (resumable),
using the device's tuning database when there is one, then trains HAT's MLP baseline and
the layer-additive predictor on the same seeded split and reports held-out accuracy,
measurement noise (CV) and collection throughput. Writes bench/results/predictor-<device>.json
(another space: predictor-<device>-<space>.json) and a predicted-vs-measured scatter PNG. Any device
works: `--device local-cpu-ort` measures the same subnets' ONNX graphs in ONNX Runtime.

Also reported, on the same split:
- the layerwise predictor with its feature set 1 (no encoder-side cross-attention key/value
  terms), to show what set 2 adds;
- a learning curve: each predictor fitted on the first k training subnets;
- with `--retest`, the held-out subnets measured again in a new session and scored like a
  predictor: how far the ground truth moves between two measurements of the same subnet,
  i.e. the best accuracy any predictor can show against it.

    python bench/predictor.py -n 150 [--passes 5] [--retest]
    python bench/predictor.py --rescore      # add the two-session scores to an existing results file
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

from hwnas.db import Database
from hwnas.io import atomic_write
from hwnas.latency import (
    DeviceRegistry,
    LatencyPredictor,
    LayerwisePredictor,
    Sample,
    SQLMeasurementStore,
    accuracy,
    collect,
    create_predictor,
    drift_corrected,
    drift_factor,
    measure,
    protocol_for,
    split,
)
from hwnas.search_spaces import get_space
from hwnas.supernet import ModelConfig

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=150)
    ap.add_argument("--device", default="local-cpu")
    ap.add_argument("--space", default="quickstart")
    ap.add_argument("--tuning-dir", default=None, help="default: the device's tuning database, if any")
    ap.add_argument("--db", default=f"sqlite:///{Path(os.environ.get('TMPDIR', '/tmp')) / 'hwnas-bench.db'}")
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--passes", type=int, default=None,
                    help="measure under the device's protocol with this many interleaved passes (a device "
                         "'<device>-p<N>' in the benchmark database)")
    ap.add_argument("--retest", action="store_true", help="measure the held-out subnets again (the noise floor)")
    ap.add_argument("--rescore", action="store_true",
                    help="only recompute the two-session scores of the device's results file (no measuring)")
    args = ap.parse_args()
    if args.rescore:
        path = results_path(args.device, args.space)
        out = json.loads(path.read_text())
        two_session_scores(out)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(out, indent=2) + "\n"))
        for kind, m in out["predictors"].items():
            if "against_two_session_mean" in m:
                t = m["against_two_session_mean"]
                print(f"{kind:26s} vs two-session mean: MAPE {100 * t['mape']:.2f}%  within 10% "
                      f"{100 * t['within_10pct']:.1f}%  within 5% {100 * t['within_5pct']:.1f}%")
        return

    from hwnas.jobs import default_vocab_size
    from hwnas.settings import Settings

    db = Database(args.db)
    registry = DeviceRegistry(db)
    device, space = registry.get(args.device), get_space(args.space)
    if args.passes is not None and args.passes != device.protocol.passes:
        device = dataclasses.replace(device, name=f"{device.name}-p{args.passes}",
                                     protocol=dataclasses.replace(device.protocol, passes=args.passes))
        if device.name not in {d.name for d in registry.list()}:
            registry.add(device)
    tdir = args.tuning_dir or str(Settings().tuning_dir(args.device, args.space))
    tdir = tdir if Path(tdir, "database_tuning_record.json").exists() else None
    mc = ModelConfig(vocab_size=default_vocab_size(args.space), qkv_dim=space.qkv_dim)
    store = SQLMeasurementStore(db)
    t0 = time.perf_counter()
    report = collect(device=device, space=space, model_config=mc, n=args.n, store=store, tuning_dir=tdir)
    collect_s = time.perf_counter() - t0

    protocol = protocol_for(device, space)
    prov = registry.provenance(device, space, mc, tdir)  # this machine's revision, this model and tuning
    records = store.records_of(prov)
    usable, baseline = drift_corrected(records)  # as measured when the protocol has no reference
    ok = [r for r, _ in usable]
    cvs = np.array([r.latency_cv() for r in ok])
    train, test = split(usable, args.test_fraction, seed=0)
    measured = np.array([s.latency_ms for _, s in test])
    measured_raw = np.array([r.latency_ms() for r, _ in test])
    constraint = float(np.median(measured))
    candidates = {kind: create_predictor(kind, space, protocol.decode_steps) for kind in ("hat-mlp", "layerwise")}
    candidates["layerwise (feature set 1)"] = LayerwisePredictor(space, protocol.decode_steps, features=1)
    train_samples, test_subnets = [s for _, s in train], [r.subnet for r, _ in test]
    predictors = {}
    for name, blank in candidates.items():
        t1 = time.perf_counter()
        pred = blank.fit(train_samples, seed=0)
        fit_s = time.perf_counter() - t1
        predicted = pred.predict(test_subnets)
        predictors[name] = {**accuracy(predicted, measured, constraint_ms=constraint), "fit_s": fit_s,
                            "predicted_ms": predicted.tolist()}
        if baseline is not None:  # the same predictions against the latencies as measured, without the correction
            predictors[name]["against_uncorrected"] = accuracy(predicted, measured_raw)
    curve = learning_curve(candidates, train_samples, test_subnets, measured)
    retest = None
    if args.retest:
        retest = remeasure(device, space, mc, test_subnets, tdir, baseline)
        if retest["failed"]:
            print(f"re-measurement: {retest['failed']} of {len(test)} failed; scored on the others")
        ok_idx = [i for i, v in enumerate(retest["latency_ms"]) if v is not None]
        again = np.array([retest["latency_ms"][i] for i in ok_idx])
        retest["accuracy"] = accuracy(again, measured[ok_idx], constraint_ms=constraint)
        if baseline is not None:
            raw = np.array([retest["uncorrected_ms"][i] for i in ok_idx])
            retest["accuracy_uncorrected"] = accuracy(raw, measured_raw[ok_idx])
    out = {
        "benchmark": "predictor", "device": device.name, "fingerprint": device.fingerprint, "space": space.name,
        "revision": prov.revision, "model_key": prov.model_key, "tuned": tdir is not None,
        "tuning_key": prov.tuning_key, "protocol": protocol.to_dict(),
        "measurements": {"ok": len(ok), "failed": len(records) - len(ok), "train": len(train), "test": len(test)},
        "noise_cv": {"median": float(np.median(cvs)), "p90": float(np.percentile(cvs, 90)),
                     "max": float(cvs.max())},
        "collection": {"this_run_measured": report.measured, "this_run_s": collect_s,
                       "subnets_per_min": 60 * report.measured / collect_s if report.measured else None},
        "latency_ms": {"min": float(min(r.latency_ms() for r in ok)), "max": float(max(r.latency_ms() for r in ok))},
        "reference_baseline_ms": baseline, "measured_ms": measured.tolist(), "measured_uncorrected_ms":
            measured_raw.tolist(), "predictors": predictors, "learning_curve": curve, "retest": retest,
        "command": "python bench/predictor.py " + " ".join(sys.argv[1:]),
    }
    two_session_scores(out)
    path = results_path(device.name, space.name)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(out, indent=2) + "\n"))
    plot(measured, predictors, curve, path.with_suffix(".png"), device.name)
    rows = dict(predictors)
    if retest is not None:
        rows["re-measurement"] = retest["accuracy"]
    for kind, m in rows.items():
        print(f"{kind:26s} MAPE {100 * m['mape']:.2f}%  within 10% {100 * m['within_10pct']:.1f}%  "
              f"within 5% {100 * m['within_5pct']:.1f}%  RMSE {m['rmse_ms']:.3f} ms  Kendall {m['kendall']:.3f}")
    if baseline is not None:
        lw = predictors["layerwise"]["against_uncorrected"]
        print(f"without the drift correction: layerwise MAPE {100 * lw['mape']:.2f}%  within 10% "
              f"{100 * lw['within_10pct']:.1f}%" + (f"; re-measurement MAPE "
              f"{100 * retest['accuracy_uncorrected']['mape']:.2f}%" if retest else ""))
    cv = out["noise_cv"]
    print(f"noise CV median {100 * cv['median']:.2f}%  p90 {100 * cv['p90']:.2f}%; wrote {path}")


def results_path(device: str, space: str) -> Path:
    """predictor-<device>.json for the quickstart space, predictor-<device>-<space>.json for the others."""
    return RESULTS / (f"predictor-{device}.json" if space == "quickstart" else f"predictor-{device}-{space}.json")


def two_session_scores(out: dict) -> None:
    """With a re-measurement: score each predictor against the mean of the two sessions' latencies too (a
    truth with less noise than either), and against the second session alone; adds them to `out` in place."""
    retest = out.get("retest")
    if not retest:
        return
    idx = [i for i, v in enumerate(retest["latency_ms"]) if v is not None]
    first = np.array(out["measured_ms"])[idx]
    second = np.array([retest["latency_ms"][i] for i in idx])
    for m in out["predictors"].values():
        predicted = np.array(m["predicted_ms"])[idx]
        m["against_two_session_mean"] = accuracy(predicted, (first + second) / 2)
        m["against_second_session"] = accuracy(predicted, second)


def learning_curve(candidates: dict[str, LatencyPredictor], train: list[Sample], test: list,
                   measured: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """Held-out MAPE and share within 10% of each predictor fitted on the first k training subnets."""
    sizes = [k for k in (10, 20, 40, 80, 160, 320, 640, 1280) if k < len(train)] + [len(train)]
    out: dict[str, dict[str, list[float]]] = {}
    for name, blank in candidates.items():
        metrics = [accuracy(blank.fit(train[:k], seed=0).predict(test), measured) for k in sizes]
        out[name] = {"train_size": [float(k) for k in sizes], "mape": [m["mape"] for m in metrics],
                     "within_10pct": [m["within_10pct"] for m in metrics]}
    return out


def remeasure(device, space, mc, subnets: list, tuning_dir: str | None,  # noqa: ANN001 - bench script
              baseline: float | None) -> dict:
    """The same subnets measured again, in batches of 4 like `collect` (fresh workers: new sessions),
    drift-corrected with the collection's reference baseline when there is one."""
    latencies: list[float | None] = []
    uncorrected: list[float | None] = []
    cache: dict[str, str] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as ref_dir:
        for start in range(0, len(subnets), 4):
            for rec in measure(device=device, space=space, model_config=mc, subnets=subnets[start:start + 4],
                               tuning_dir=tuning_dir, build_workers=2, work_dir=ref_dir, reference_cache=cache):
                f = drift_factor(rec, baseline)
                uncorrected.append(rec.latency_ms() if f is not None else None)
                latencies.append(rec.latency_ms() * f if f is not None else None)
    return {"latency_ms": latencies, "uncorrected_ms": uncorrected, "failed": sum(v is None for v in latencies),
            "seconds": time.perf_counter() - t0}


def plot(measured: np.ndarray, predictors: dict, curve: dict, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 5))
    lo, hi = float(measured.min()) * 0.9, float(measured.max()) * 1.1
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="+-10%")
    for kind, m in predictors.items():
        ax.scatter(measured, m["predicted_ms"], s=12, label=f"{kind} (MAPE {100 * m['mape']:.1f}%)")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"held-out subnets on {device}")
    ax.legend()
    for name, c in curve.items():
        ax2.plot(c["train_size"], [100 * m for m in c["mape"]], "o-", label=name)
    ax2.set_xscale("log")
    ax2.set_xlabel("training subnets")
    ax2.set_ylabel("held-out MAPE (%)")
    ax2.set_title("learning curve")
    ax2.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


if __name__ == "__main__":
    main()
