"""Benchmark: `hwnas data prepare` on a corpus of more than 1M real sentence pairs, and how fast training opens it.

The Bible holds 2 German and 4 English translations: 8 German-English pairs, 16 with both directions, about
484K training pairs. The corpus adds the French (3) and Spanish (2) translations into English, 20 more real
pairs, for about 1.09M: real parallel text at WMT size (WMT14 En-De has 4.5M pairs). The pairs are written as
aligned text files (train/valid/test, split by book as everywhere in hwnas), then prepared with a 32K joint BPE
in a child process whose peak memory (max RSS) and wall time are reported; then the time to open the prepared
set (checksums included) and batch it, as training does before its first update.

    python bench/data_prepare.py            # about 5 min on 2 cores
    python bench/data_prepare.py --pairs 4  # smoke: 4 translation pairs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from hwnas.io import atomic_write
from hwnas.latency import cpu_model
from hwnas.supernet import BIBLE_TRANSLATIONS, PreparedData, load_bible, make_batches

RESULTS = Path(__file__).parent / "results"


def translation_pairs() -> list[tuple[str, str]]:
    by_lang: dict[str, list[str]] = {}
    for tid in BIBLE_TRANSLATIONS:
        by_lang.setdefault(tid.split(".")[0], []).append(tid)
    de_en = [(d, e) for d in by_lang["de"] for e in by_lang["en"]]
    into_en = [(x, e) for lang in ("fr", "es") for x in by_lang[lang] for e in by_lang["en"]]
    return de_en + [(e, d) for d, e in de_en] + into_en


def write_corpus(directory: Path, pairs: list[tuple[str, str]]) -> dict[str, int]:
    directory.mkdir(parents=True)
    counts = {}
    for split in ("train", "valid", "test"):
        n = 0
        with (directory / f"{split}.src").open("w") as fs, (directory / f"{split}.tgt").open("w") as ft:
            for src, tgt in pairs:
                corpus = load_bible(src, tgt, split)
                fs.writelines(s + "\n" for s in corpus.source)
                ft.writelines(t + "\n" for t in corpus.target)
                n += len(corpus)
        counts[split] = n
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=None, help="only the first N translation pairs (smoke)")
    ap.add_argument("--vocab-size", type=int, default=32_000)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "hwnas-bench-data")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    pairs = translation_pairs()[:args.pairs]
    t0 = time.perf_counter()
    counts = write_corpus(args.work / "text", pairs)
    write_s = time.perf_counter() - t0
    print(f"{len(pairs)} translation pairs: {counts}", flush=True)

    out = args.work / "prepared"
    t0 = time.perf_counter()
    text = args.work / "text"
    subprocess.run([sys.executable, "-m", "hwnas.cli", "data", "prepare", "--data", f"files:{text}:src-tgt",
                    "--out", str(out), "--vocab-size", str(args.vocab_size)], check=True)
    prepare_s = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    t0 = time.perf_counter()
    prepared = PreparedData.open(out)
    open_s = time.perf_counter() - t0
    train = prepared.split("train")
    t0 = time.perf_counter()
    batches = make_batches(train, 4096, max_len=256)
    batch_s = time.perf_counter() - t0
    text_mib = sum(p.stat().st_size for p in (args.work / "text").iterdir()) / 2**20
    tokens_mib = sum(p.stat().st_size for p in out.glob("*.bin")) / 2**20
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "corpus": {"translation_pairs": [f"{s}->{t}" for s, t in pairs], "pairs": counts, "text_mib": text_mib},
        "vocab_size": prepared.meta["vocab_size"],
        "write_text_s": write_s,
        "prepare_s": prepare_s,
        "prepare_peak_rss_mib": peak_mib,
        "token_files_mib": tokens_mib,
        "open_and_verify_s": open_s,
        "batching_s": batch_s,
        "batches_of_4096_tokens": len(batches),
        "command": "python bench/data_prepare.py" + (f" --pairs {args.pairs}" if args.pairs else ""),
    }
    if not args.pairs:
        atomic_write(RESULTS / "data-prepare.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    print(json.dumps({k: v for k, v in result.items() if k != "corpus"} | {"pairs": counts}, indent=2))


if __name__ == "__main__":
    main()
