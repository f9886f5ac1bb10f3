"""Measuring subnets on a device: build (parallel), time (one at a time), store every record.

`collect` draws a seeded sequence of distinct subnets and skips those the store already has
for this (device, space, protocol, tuning database), so an interrupted collection resumes
where it stopped and a repeated one measures nothing twice.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hwnas.exceptions import InfeasibleConstraintError, MeasurementError
from hwnas.kernels import BuildInput, BuildResult, TVMBuilder, count_tuning_records
from hwnas.latency._devices import DeviceProfile, fingerprint_key, probe_fingerprint, protocol_for
from hwnas.latency._predictor import Sample
from hwnas.latency._protocol import MeasureConfig, RunResult
from hwnas.latency._rpc import tracker_boards
from hwnas.latency._runner import (
    OrtRunner,
    RPCRunner,
    RunInput,
    Runner,
    TorchRunner,
    TVMLocalRunner,
)
from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet import ModelConfig


@dataclasses.dataclass(frozen=True)
class MeasurementRecord:
    """One stored measurement: what was timed (subnet of which model), how, on what, and the raw result (or
    its failure).

    `fingerprint` is the device's as probed for this measurement (it decides the device revision the record
    belongs to; {} = the device's current one); `revision` is that revision's number, as a store read it back.
    """

    device: str
    space: str
    subnet: SubnetConfig
    protocol: MeasureConfig
    tuning_key: str
    result: RunResult
    reference_ms: float | None = None  # the reference subnet's latency in the same session (protocol.reference)
    model_key: str = ""  # latency_model_key of the model the subnet was cut from ('' = not recorded)
    fingerprint: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)
    revision: int | None = None

    def sample(self) -> Sample:
        """The record's two parts (the fastest pass's medians, `RunResult.parts_ms`), for the predictors."""
        if not self.result.ok:
            raise ValueError("a failed measurement has no sample")
        enc, dec = self.result.parts_ms(self.protocol.decode_steps, self.protocol.passes)
        return Sample(self.subnet, enc, dec, self.protocol.decode_steps)

    def latency_ms(self) -> float:
        """The record's sentence latency under its own protocol (decode steps and passes)."""
        return self.result.latency_ms(self.protocol.decode_steps, self.protocol.passes)

    def latency_cv(self) -> float:
        """The record's noise figure under its own protocol (see `RunResult.latency_cv`)."""
        return self.result.latency_cv(self.protocol.passes, decode_steps=self.protocol.decode_steps)


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What a latency figure belongs to: one device revision, space, model (`latency_model_key`), protocol
    and tuning database (`tuning_key`, '' = untuned). A predictor is trained on, and only ever used for,
    one provenance; a measurement has one."""

    device: str
    revision: int
    space: str
    model_key: str
    protocol_key: str
    tuning_key: str

    def describe(self) -> str:
        kernels = f"tuning {self.tuning_key}" if self.tuning_key else "untuned kernels"
        return (f"{self.device} rev {self.revision} on space '{self.space}' ({self.model_key}, "
                f"protocol {self.protocol_key}, {kernels})")

    def differences(self, other: Provenance) -> str:
        """The fields where `other` differs, e.g. "space 'a' (not 'b')"."""
        return ", ".join(f"{f.name} {getattr(other, f.name)!r} (not {getattr(self, f.name)!r})"
                         for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name))


class MeasurementStore(abc.ABC):
    """Where measurement records live. `add` must be atomic per record; reads see committed records.

    The store numbers each device's revisions (`revision`): a record belongs to the revision of the
    fingerprint it was measured with, and reads filter by revision number.
    """

    @abc.abstractmethod
    def add(self, record: MeasurementRecord) -> None: ...

    @abc.abstractmethod
    def records(self, *, device: str, space: str, revision: int | None = None, model_key: str | None = None,
                protocol_key: str | None = None, tuning_key: str | None = None) -> list[MeasurementRecord]: ...

    @abc.abstractmethod
    def revision(self, device: DeviceProfile, *, create: bool = False) -> int | None:
        """The number of the revision `device.fingerprint` belongs to; None when it is a new one (made when
        `create`)."""

    def records_of(self, provenance: Provenance) -> list[MeasurementRecord]:
        """The records of one provenance: its device revision, space, model, protocol and tuning database."""
        p = provenance
        return self.records(device=p.device, space=p.space, revision=p.revision, model_key=p.model_key,
                            protocol_key=p.protocol_key, tuning_key=p.tuning_key)

    def measured_keys(self, *, device: str, space: str, revision: int | None, model_key: str, protocol_key: str,
                      tuning_key: str) -> set[str]:
        if revision is None:  # a revision not stored yet holds no measurements
            return set()
        return {r.subnet.key() for r in self.records(device=device, space=space, revision=revision,
                                                     model_key=model_key, protocol_key=protocol_key,
                                                     tuning_key=tuning_key)}


class InMemoryStore(MeasurementStore):
    """A process-local store (tests, one-off scripts); thread-safe. Revisions are numbered per device in
    the order their fingerprints first appear (records without a fingerprint share one)."""

    def __init__(self) -> None:
        self._records: list[MeasurementRecord] = []
        self._revisions: dict[tuple[str, str], int] = {}  # (device, fingerprint key) -> number
        self._runtimes: dict[str, str] = {}  # a device's runtime, once `revision` was asked about it
        self._lock = threading.Lock()

    def _number(self, device: str, key: str, create: bool) -> int | None:
        if (device, key) not in self._revisions and create:
            self._revisions[device, key] = 1 + sum(d == device for d, _ in self._revisions)
        return self._revisions.get((device, key))

    def revision(self, device: DeviceProfile, *, create: bool = False) -> int | None:
        with self._lock:
            self._runtimes[device.name] = device.runtime
            return self._number(device.name, fingerprint_key(device.fingerprint, device.runtime), create)

    def add(self, record: MeasurementRecord) -> None:
        with self._lock:
            runtime = self._runtimes.get(record.device, "tvm")
            key = fingerprint_key(record.fingerprint, runtime) if record.fingerprint else ""
            self._records.append(dataclasses.replace(record, revision=self._number(record.device, key, True)))

    def records(self, *, device: str, space: str, revision: int | None = None, model_key: str | None = None,
                protocol_key: str | None = None, tuning_key: str | None = None) -> list[MeasurementRecord]:
        with self._lock:
            return [r for r in self._records if r.device == device and r.space == space
                    and (revision is None or r.revision == revision)
                    and (model_key is None or r.model_key == model_key)
                    and (protocol_key is None or r.protocol.key() == protocol_key)
                    and (tuning_key is None or r.tuning_key == tuning_key)]


def latency_model_key(model_config: ModelConfig) -> str:
    """What of the model a latency depends on besides the subnet: the output layer's size and the attention
    width (dropout and token ids do not change the kernels). Readable, for messages."""
    return f"vocab={model_config.vocab_size},qkv={model_config.qkv_dim}"


def tuning_key(tuning_dir: str | None, target: dict[str, Any]) -> str:
    """Identity of a tuning database as it is now, for `target`: its path, its number of records, the
    target and the TVM version it was tuned with ('' = untuned). MetaSchedule applies records of the
    target and version that made them only, so the same directory under another target is another key."""
    if not tuning_dir:
        return ""
    count = count_tuning_records(tuning_dir)
    try:
        tvm_version = metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        tvm_version = "unknown"
    what = json.dumps([str(Path(tuning_dir).resolve()), count, target, tvm_version], sort_keys=True)
    return hashlib.sha1(what.encode()).hexdigest()[:16]


def runner_for(device: DeviceProfile, *, timeout_s: float = 300.0) -> Runner:
    if device.runtime == "torch":
        return TorchRunner(device=device.torch_device, timeout_s=timeout_s)
    if device.runtime == "onnxruntime":
        return OrtRunner(timeout_s=timeout_s)
    if device.location == "local":
        return TVMLocalRunner(timeout_s=timeout_s)
    if device.location == "ray":
        raise MeasurementError(f"device '{device.name}' is a Ray node: measure() runs it there, as a local device")
    if not device.tracker or not device.rpc_key:
        raise MeasurementError(f"device '{device.name}' is remote but has no tracker/key")
    return RPCRunner(tracker=device.tracker, key=device.rpc_key, timeout_s=timeout_s)


def reference_subnet(space: SearchSpace) -> SubnetConfig:
    """The subnet `MeasureConfig.reference` times with every batch: the space's smallest (the cheapest to time)."""
    return space.smallest()


def measure(*, device: DeviceProfile, space: SearchSpace, model_config: ModelConfig, subnets: Sequence[SubnetConfig],
            tuning_dir: str | None = None, work_dir: str | None = None, build_workers: int = 1,
            timeout_s: float = 600.0, reference_cache: dict[str, str] | None = None,
            fingerprint: dict[str, Any] | None = None, reference_root: str | Path | None = None
            ) -> list[MeasurementRecord]:
    """Build and time `subnets` on `device`; one record per subnet, failures included.

    Under `protocol.reference` the reference subnet is timed with them (first, interleaved like the
    rest) and its latency stored with every record; its build is kept in `reference_cache` (a dict
    the caller holds for a whole collection, with `work_dir` outliving it) when one is given.
    `reference_root` keeps it on disk instead, across calls and processes: a directory under which each
    provenance's reference build is kept (`reference_build_dir`), reused when there, built there otherwise.
    Each record carries the device's `fingerprint` as probed now (`probe_fingerprint`, unless the caller
    probed it already).
    """
    if device.location == "ray":  # all of it on the device's node, which measures as a local device there
        from hwnas.latency._ray import on_node

        return on_node(device, _measure_local, space=space, model_config=model_config, subnets=list(subnets),
                       tuning_dir=tuning_dir, build_workers=build_workers, timeout_s=timeout_s,
                       fingerprint=fingerprint, reference_root=reference_root)
    protocol = protocol_for(device, space)
    runner = runner_for(device, timeout_s=timeout_s)
    if isinstance(runner, RPCRunner):
        tracker_boards(runner.tracker, runner.key)  # before minutes of building for a board that is not there
    fingerprint = fingerprint if fingerprint is not None else probe_fingerprint(device)

    def build_input(cfg: SubnetConfig) -> BuildInput:
        return BuildInput(cfg, model_config, device.target, batch=protocol.batch_size,
                          source_length_tokens=protocol.source_length_tokens, cache_len=protocol.decode_steps,
                          tuning_dir=tuning_dir)

    builds = [build_input(cfg) for cfg in subnets]
    key = tuning_key(tuning_dir, device.target)
    ref_build = build_input(reference_subnet(space)) if protocol.reference else None
    cache = reference_cache if reference_cache is not None else {}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        ref_key = f"{device.name}:{key}:{ref_build.subnet.key()}" if ref_build else ""
        if ref_build is not None and reference_root is not None and device.runtime == "tvm":
            where = reference_build_dir(reference_root, dataclasses.replace(device, fingerprint=fingerprint), space,
                                        model_config, key)
            _reference_from_disk(where, ref_build, ref_key, cache, build_workers, timeout_s)
        if device.runtime == "tvm":
            todo, dirs = list(builds), [str(Path(tmp) / str(i)) for i in range(len(builds))]
            if ref_build is not None and ref_key not in cache:
                todo.append(ref_build)
                dirs.append(tempfile.mkdtemp(prefix="hwnas-reference-", dir=work_dir) if reference_cache is not None
                            else str(Path(tmp) / "reference"))
            tvm_built = TVMBuilder(max_workers=build_workers, timeout_s=timeout_s).build(todo, dirs)
            if len(tvm_built) > len(builds):
                ref = tvm_built.pop()
                if ref.artifact:
                    cache[ref_key] = ref.artifact
            built = cast(list[BuildResult | None], tvm_built)  # the same list; None only in the branch below
        else:
            built = [None] * len(builds)
        to_run = [i for i, b in enumerate(built) if b is None or b.artifact]
        inputs = [RunInput(builds[i], b.artifact if (b := built[i]) else None) for i in to_run]
        with_ref = ref_build is not None and (device.runtime != "tvm" or ref_key in cache)
        if with_ref:
            inputs.insert(0, RunInput(cast(BuildInput, ref_build), cache.get(ref_key)))  # with_ref: not None
        timed = runner.run(inputs, protocol)
    reference_ms = None
    if with_ref:
        ref_result, timed = timed[0], timed[1:]
        reference_ms = ref_result.latency_ms(protocol.decode_steps, protocol.passes) if ref_result.ok else None
    results: list[RunResult | None] = [RunResult(error=f"build failed: {b.error}") if b and b.error else None
                                       for b in built]
    for i, r in zip(to_run, timed, strict=True):
        results[i] = r
    # Every slot is filled now: failed builds above, the rest (`to_run`) from `timed`.
    return [MeasurementRecord(device.name, space.name, cfg, protocol, key, r,
                              reference_ms=reference_ms if r.ok else None, model_key=latency_model_key(model_config),
                              fingerprint=fingerprint)
            for cfg, r in zip(subnets, cast(list[RunResult], results), strict=True)]


def _measure_local(device: DeviceProfile, **kwargs: Any) -> list[MeasurementRecord]:
    return measure(device=device, **kwargs)


def reference_build_dir(root: str | Path, device: DeviceProfile, space: SearchSpace, model_config: ModelConfig,
                        tuning: str) -> Path:
    """Where the reference subnet's build for a provenance lives under `root`. A library depends on all of it: the
    device revision (its fingerprint: compiler and CPU), its target, the space's shapes under the device's
    protocol, the model, and the tuning database (`tuning`: its `tuning_key`)."""
    what = json.dumps([fingerprint_key(device.fingerprint, device.runtime), device.target, space.name,
                       reference_subnet(space).key(), protocol_for(device, space).key(),
                       latency_model_key(model_config), tuning], sort_keys=True, default=str)
    return Path(root) / f"{device.name}-{hashlib.sha1(what.encode()).hexdigest()[:16]}"


def _reference_from_disk(where: Path, build: BuildInput, ref_key: str, cache: dict[str, str], workers: int,
                         timeout_s: float) -> None:
    """Put the reference build of `where` into `cache`: the one there when it is this build, else built there
    (in a sibling directory renamed into place, so a reader never sees half a build; of two processes building
    at once, the first rename wins and the other's build is dropped)."""
    meta = where / "meta.json"
    try:
        if json.loads(meta.read_text()).get("subnet") == build.subnet.to_dict():
            cache[ref_key] = str(where)
            return
    except (OSError, ValueError):
        pass  # not built yet, or unreadable: build it
    where.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{where.name}.", suffix=".partial", dir=where.parent))
    (built,) = TVMBuilder(max_workers=workers, timeout_s=timeout_s).build([build], [str(partial)])
    if not built.artifact:
        shutil.rmtree(partial, ignore_errors=True)
        return  # measure builds it with the batch and reports the failure there
    shutil.rmtree(where, ignore_errors=True)  # a stale or unreadable build
    try:
        os.rename(partial, where)
    except OSError:  # another process renamed its build first: use that one
        shutil.rmtree(partial, ignore_errors=True)
    cache[ref_key] = str(where)


def drift_factor(record: MeasurementRecord, baseline: float | None) -> float | None:
    """What brings a successful record to the footing `baseline` (a median reference latency):
    baseline / its session's reference; 1.0 without a baseline; None when it has no footing (failed,
    or its session's reference failed)."""
    if not record.result.ok:
        return None
    if baseline is None:
        return 1.0
    return baseline / record.reference_ms if record.reference_ms else None


def drift_corrected(
        records: Sequence[MeasurementRecord]) -> tuple[list[tuple[MeasurementRecord, Sample]], float | None]:
    """The successful records with their samples on one footing: each scaled by median(reference) / its
    session's reference (`drift_factor`), and that median.

    Without a reference protocol the samples are as measured and the median None. Records of a reference
    protocol whose reference failed have no footing and are left out.
    """
    ok = [r for r in records if r.result.ok]
    if not ok or not ok[0].protocol.reference:
        return [(r, r.sample()) for r in ok], None
    refs = [r.reference_ms for r in ok if r.reference_ms]
    if not refs:
        return [], None
    baseline = float(np.median(refs))
    out = []
    for r in ok:
        f = drift_factor(r, baseline)
        if f is not None:
            s = r.sample()
            out.append((r, Sample(s.subnet, s.encoder_ms * f, s.decoder_step_ms * f, s.decode_steps)))
    return out, baseline


def distinct_subnets(space: SearchSpace, n: int, *, seed: int, max_attempts: int | None = None) -> list[SubnetConfig]:
    """The first `n` distinct subnets of a seeded uniform sequence (bounded: a tiny space raises)."""
    rng = np.random.default_rng(seed)
    seen: dict[SubnetConfig, None] = {}
    for _ in range(max_attempts or 50 * n + 100):
        seen.setdefault(space.sample(rng), None)
        if len(seen) == n:
            return list(seen)
    raise InfeasibleConstraintError(f"space '{space.name}' gave only {len(seen)} distinct subnets, {n} asked")


@dataclasses.dataclass(frozen=True)
class CollectReport:
    asked: int
    skipped: int  # already in the store
    measured: int
    failed: int


def collect(*, device: DeviceProfile, space: SearchSpace, model_config: ModelConfig, n: int,
            store: MeasurementStore, seed: int = 0, tuning_dir: str | None = None, batch: int = 4,
            build_workers: int = 2, progress: bool = True, on_batch: Callable[[int], None] | None = None,
            reference_root: str | Path | None = None) -> CollectReport:
    """Measure `n` distinct subnets of `space` on `device` into `store`, resuming what is there."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    subnets = distinct_subnets(space, n, seed=seed)
    fingerprint = probe_fingerprint(device)  # once: every batch of this collection is on the same revision
    device = dataclasses.replace(device, fingerprint=fingerprint)
    done = store.measured_keys(device=device.name, space=space.name, revision=store.revision(device),
                               model_key=latency_model_key(model_config),
                               protocol_key=protocol_for(device, space).key(),
                               tuning_key=tuning_key(tuning_dir, device.target))
    todo = [c for c in subnets if c.key() not in done]
    measured = failed = 0
    reference_cache: dict[str, str] = {}  # the reference subnet is built once per collection
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=Console(stderr=True),
                   disable=not progress)
    with tempfile.TemporaryDirectory() as ref_dir, bar:
        task = bar.add_task(f"measure on {device.name}", total=n, completed=n - len(todo), info="")
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            for rec in measure(device=device, space=space, model_config=model_config, subnets=chunk,
                               tuning_dir=tuning_dir, build_workers=build_workers, work_dir=ref_dir,
                               reference_cache=reference_cache, fingerprint=fingerprint,
                               reference_root=reference_root):
                store.add(rec)
                measured += rec.result.ok
                failed += not rec.result.ok
            bar.update(task, advance=len(chunk), info=f"{failed} failed")
            if on_batch is not None:
                on_batch(measured + failed)
    return CollectReport(n, n - len(todo), measured, failed)
