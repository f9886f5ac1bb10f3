"""Benchmark: is a subnet's latency a property of its structure, or of the session it was measured in?

Builds 5 libraries sharing one decoder structure: one subnet built twice, and 3 subnets that
differ from it only in the encoder. Times them together (the device's protocol, interleaved)
in several sessions (fresh worker processes, as `collect` measures) and reports, per session,
each library's decoder-step figure: how far libraries of one structure differ inside a session
(structure) against how far the session medians move (drift). Writes
bench/results/drift-<device>.json.

    python bench/drift.py [--sessions 4] [--device local-cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from hwnas.io import atomic_write
from hwnas.kernels import BuildInput, TVMBuilder
from hwnas.latency import RunInput, builtin_device, protocol_for, runner_for
from hwnas.search_spaces import get_space
from hwnas.supernet import ModelConfig

RESULTS = Path(__file__).parent / "results"
DECODER_FIELDS = ("decoder_embed_dim", "decoder_layer_num", "decoder_ffn_embed_dim", "decoder_self_attention_heads",
                  "decoder_ende_attention_heads", "decoder_arbitrary_ende_attn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="local-cpu")
    ap.add_argument("--space", default="quickstart")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    from hwnas.jobs import default_vocab_size, tuning_to_use

    device, space = builtin_device(args.device), get_space(args.space)
    protocol = protocol_for(device, space)
    tdir = tuning_to_use(device, args.space)
    mc = ModelConfig(vocab_size=default_vocab_size(args.space), qkv_dim=space.qkv_dim)
    rng = np.random.default_rng(args.seed)
    base = space.sample(rng)
    same_decoder = {f: getattr(base, f) for f in DECODER_FIELDS}
    cfgs = [base, base, *(dataclasses.replace(space.sample(rng), **same_decoder) for _ in range(3))]
    names = ["subnet", "subnet, built again", "other encoder 1", "other encoder 2", "other encoder 3"]
    builds = [BuildInput(c, mc, device.target, source_length_tokens=protocol.source_length_tokens,
                         cache_len=protocol.decode_steps, tuning_dir=tdir) for c in cfgs]
    sessions: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        built = TVMBuilder(max_workers=2).build(builds, [f"{tmp}/{i}" for i in range(len(builds))])
        for name, b in zip(names, built, strict=True):
            if b.error:
                raise SystemExit(f"build of {name} failed: {b.error}")
        inputs = [RunInput(b, r.artifact) for b, r in zip(builds, built, strict=True)]
        for s in range(args.sessions):
            results = runner_for(device).run(inputs, protocol)
            for name, r in zip(names, results, strict=True):
                if not r.ok:
                    raise SystemExit(f"{name} failed: {r.error}")
            sessions.append([r.parts_ms(protocol.decode_steps, protocol.passes)[1] for r in results])
            print(f"session {s + 1}: decoder step ms " + "  ".join(f"{v:.4f}" for v in sessions[-1]), flush=True)
    steps = np.array(sessions)  # sessions x libraries
    within = [float(row.max() / row.min() - 1) for row in steps]
    medians = np.median(steps, axis=1)
    out = {"benchmark": "drift", "device": device.name, "fingerprint": device.fingerprint, "space": space.name,
           "tuned": tdir is not None, "protocol": protocol.to_dict(), "libraries": names,
           "subnets": [c.to_dict() for c in cfgs], "decoder_step_ms": steps.tolist(),
           "within_session_spread": within, "session_median_ms": medians.tolist(),
           "between_session_spread": float(medians.max() / medians.min() - 1), "cpu_count": os.cpu_count(),
           "command": "python bench/drift.py " + " ".join(sys.argv[1:])}
    path = RESULTS / f"drift-{device.name}.json"
    atomic_write(path, lambda t: t.write_text(json.dumps(out, indent=2) + "\n"))
    print(f"libraries of one decoder structure, within a session: {100 * max(within):.1f}% apart at most; "
          f"session medians: {100 * out['between_session_spread']:.1f}% apart; wrote {path}")


if __name__ == "__main__":
    main()
