"""The reference protocol: a fixed subnet timed with every batch puts sessions on one footing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from hwnas.latency import (
    MeasureConfig,
    MeasurementRecord,
    RunResult,
    drift_corrected,
    local_cpu_profile,
    measure,
    reference_build_dir,
    reference_subnet,
)
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig

STEPS = 4


def test_reference_keeps_older_keys_and_changes_its_own() -> None:
    assert MeasureConfig(reference=False).key() == MeasureConfig().key()  # stored records keep their key
    assert "reference" not in MeasureConfig().to_dict()
    on = MeasureConfig(reference=True)
    assert on.key() != MeasureConfig().key() and MeasureConfig.from_dict(on.to_dict()) == on


def _record(space: SearchSpace, seed: int, scale: float, reference_ms: float | None,
            protocol: MeasureConfig) -> MeasurementRecord:
    """A stand-in record: this subnet's "true" parts times a session's slowdown `scale`."""
    cfg = space.sample(np.random.default_rng(seed))
    enc, dec = 1.0 + 0.1 * cfg.encoder_layer_num, 0.2 + 0.05 * cfg.decoder_layer_num
    return MeasurementRecord("local-cpu", space.name, cfg, protocol, "", RunResult((enc * scale,), (dec * scale,)),
                             reference_ms)


def test_drift_correction_puts_sessions_on_one_footing(tiny_space: SearchSpace) -> None:
    protocol = MeasureConfig(decode_steps=STEPS, reference=True)
    # Three sessions, the machine 0%, 20% and 10% slower: the reference (2.0 ms when quiet) slows alike.
    recs = [_record(tiny_space, seed, scale, 2.0 * scale, protocol)
            for seed, scale in ((1, 1.0), (2, 1.0), (3, 1.2), (4, 1.2), (5, 1.1))]
    recs.append(_record(tiny_space, 6, 1.3, None, protocol))  # its reference failed: no footing, left out
    usable, baseline = drift_corrected(recs)
    samples = [s for _, s in usable]
    assert baseline == pytest.approx(2.2)  # the median reference
    assert [r for r, _ in usable] == recs[:5]
    assert [s.subnet for s in samples] == [r.subnet for r in recs[:5]]
    quiet = [_record(tiny_space, seed, 1.0, 2.0, protocol).sample() for seed in (1, 2, 3, 4, 5)]
    for got, want in zip(samples, quiet, strict=True):  # every sample at the median session's speed (1.1x)
        assert got.latency_ms == pytest.approx(1.1 * want.latency_ms)


def test_without_a_reference_samples_are_as_measured(tiny_space: SearchSpace) -> None:
    recs = [_record(tiny_space, seed, 1.0 + seed / 10, None, MeasureConfig(decode_steps=STEPS)) for seed in (1, 2)]
    usable, baseline = drift_corrected(recs)
    assert baseline is None and usable == [(r, r.sample()) for r in recs]


@pytest.mark.slow  # 40 s; the quickstart test measures under the reference protocol
def test_measure_times_the_reference_with_every_batch(tmp_path: Path, tiny_space: SearchSpace,
                                                      tiny_mc: ModelConfig) -> None:
    """The reference is timed with every batch, and built once: kept in the caller's dict within a collection,
    on disk per provenance across calls and processes (a job's verification, a later export)."""
    device = dataclasses.replace(local_cpu_profile(), protocol=MeasureConfig(warmup_runs=1, timed_runs=4, passes=2,
                                                                             reference=True))
    root = tmp_path / "refs"
    where = reference_build_dir(root, device, tiny_space, tiny_mc, "")
    rng = np.random.default_rng(0)
    subnets = [tiny_space.sample(rng) for _ in range(3)]
    first = measure(device=device, space=tiny_space, model_config=tiny_mc, subnets=subnets[:2], work_dir=str(tmp_path),
                    reference_root=root)
    built = (where / "meta.json").stat().st_mtime_ns
    assert [p.name for p in root.iterdir()] == [where.name]  # no partial build left behind
    cache: dict[str, str] = {}
    second = measure(device=device, space=tiny_space, model_config=tiny_mc, subnets=subnets[2:], work_dir=str(tmp_path),
                     reference_cache=cache, reference_root=root)
    assert list(cache.values()) == [str(where)] and (where / "meta.json").stat().st_mtime_ns == built  # reused
    for rec in (*first, *second):
        assert rec.result.ok, rec.result.error
        assert rec.reference_ms is not None and rec.reference_ms > 0 and rec.protocol.reference
    assert first[0].reference_ms == first[1].reference_ms  # one session, one reference figure
    assert reference_subnet(tiny_space) == tiny_space.smallest()
    # another model, tuning database or device revision is another build
    other_model = dataclasses.replace(tiny_mc, vocab_size=tiny_mc.vocab_size + 1)
    moved = dataclasses.replace(device, fingerprint={**device.fingerprint, "cpu_model": "another CPU"})
    assert len({where, reference_build_dir(root, device, tiny_space, other_model, ""),
                reference_build_dir(root, device, tiny_space, tiny_mc, "abc"),
                reference_build_dir(root, moved, tiny_space, tiny_mc, "")}) == 4
