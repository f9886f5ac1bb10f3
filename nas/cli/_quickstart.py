"""`hwnas quickstart`: the whole HAT method end to end on embedded defaults, in minutes on a small CPU.

Five stages, each the library call behind one of the other commands, each resumable or cached:

1. train the `quickstart` SuperTransformer on Bible De->En (`hwnas supernet train`), or reuse the
   checkpoint under $HWNAS_HOME when it was trained with the same settings for at least as many steps;
2. tune the space's TVM kernels for this CPU (`hwnas kernels tune`) up to `trials` records in the
   cached tuning database (a rerun tunes nothing more);
3. measure `samples` random subnets (`hwnas latency collect`: what is measured is skipped) and train the
   latency predictors (`hwnas latency train`); the one with the lower held-out error is used;
4. search under a budget between the predicted latencies of the smallest and the largest subnet
   (`hwnas search run`, the front measured on the device);
5. export the best front member that met the budget when measured (`hwnas export --format onnx`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hwnas.cli._common import JobBars, console, db, device, settings
from hwnas.cli._search import default_plot_path, show_job
from hwnas.exceptions import SearchError

if TYPE_CHECKING:  # heavy imports (torch, TVM) wait until the command runs
    from hwnas.db import Database
    from hwnas.jobs import FrontMember, SearchSpec
    from hwnas.latency import DeviceProfile
    from hwnas.search_spaces import SearchSpace
    from hwnas.supernet import ModelConfig

# The embedded setup. Module constants, not options: the quickstart is one fixed recipe (tests point
# SPACE and DATA at a tiny space and corpus to run the same code in seconds).
SPACE = "quickstart"
DATA = "bible:de-en"
DEVICE = "local-cpu"
PREDICTOR_KINDS = ("layerwise", "hat-mlp")
VALID_SENTENCES = 100  # fitness subset: 100 of the 391 held-out verses ranks subnets at ~1 candidate/s/worker
TEST_FRACTION = 0.2  # of the measured subnets, held out to choose the predictor
SEED = 0
STAGES = ("supernet", "kernels", "latency", "search", "export")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The quickstart's size knobs; the defaults (see `quickstart_command`) were timed on 2 cores."""

    steps: int
    trials: int
    samples: int
    population: int
    generations: int
    budget_fraction: float
    workers: int

    def __post_init__(self) -> None:
        # typer checks the integer bounds; this one is open at 0, and a library caller gets it too
        if not 0.0 < self.budget_fraction <= 1.0:
            raise SearchError(f"--budget-fraction must be in (0, 1] (0 = the smallest subnet's predicted latency, "
                              f"1 = the largest's), got {self.budget_fraction:g}")


@dataclasses.dataclass
class Summary:
    """What a run produced: stage timings, the budget, the chosen subnet and where everything is."""

    sizes: Sizes
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    total_seconds: float = 0.0
    checkpoint: str | None = None
    checkpoint_step: int | None = None
    tuning_dir: str | None = None
    tuning_records: int | None = None
    database: str | None = None
    measured_subnets: int | None = None
    predictor: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    job_id: int | None = None
    best: dict[str, Any] | None = None
    pareto_plot: str | None = None
    export: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def summary_path() -> Path:
    return settings().home / "quickstart.json"


def quickstart_command(
    budget_fraction: Annotated[float, typer.Option(
        help="Latency budget: predicted smallest + F x (largest - smallest), 0 < F <= 1")] = 0.5,
    workers: Annotated[int, typer.Option(min=1, help="Parallel TVM builds and Ray actors scoring candidates")] = 2,
    steps: Annotated[int, typer.Option(min=1, help="Supernet training steps")] = 300,
    trials: Annotated[int, typer.Option(min=1, help="MetaSchedule trials in the tuning database")] = 64,
    samples: Annotated[int, typer.Option(min=10, help="Random subnets measured for the predictor")] = 16,
    population: Annotated[int, typer.Option(min=4, help="Evolution population")] = 16,
    generations: Annotated[int, typer.Option(min=1, help="Evolution generations")] = 4,
) -> None:
    """Run the whole method on this CPU: supernet, tuned kernels, latency predictor, search, export."""
    sizes = Sizes(steps=steps, trials=trials, samples=samples, population=population, generations=generations,
                  budget_fraction=budget_fraction, workers=workers)
    summary = run_quickstart(sizes)
    if summary.export is None:  # the run is shown; the missing result is the one error line, exit 2
        budget_ms = (summary.budget or {}).get("budget_ms", float("nan"))
        raise SearchError(f"no front member of search job {summary.job_id} met the {budget_ms:.2f} ms budget when "
                          f"measured, so nothing was exported; try a larger --budget-fraction or more --samples")


def run_quickstart(sizes: Sizes) -> Summary:
    """All five stages; prints progress, the verified front and the paths; writes `summary_path()`."""
    from hwnas.db import masked
    from hwnas.search_spaces import get_space

    summary, start = Summary(sizes), time.perf_counter()
    dev, space = device(DEVICE), get_space(SPACE)
    database = db()
    summary.database = masked(database.url)
    with _stage(summary, "supernet", f"train the {space.name} SuperTransformer on {DATA}, {sizes.steps} steps"):
        mc = _supernet(summary, space, sizes.steps)
    with _stage(summary, "kernels", f"tune TVM kernels for {dev.name}, {sizes.trials} trials"):
        _kernels(summary, dev, space, mc, sizes.trials)
    with _stage(summary, "latency", f"measure {sizes.samples} subnets on {dev.name}, train the predictor"):
        _latency(summary, database, dev, space, mc, sizes)
    with _stage(summary, "search", f"evolution ({sizes.population} x {sizes.generations}) under the budget, "
                                   f"front measured on {dev.name}"):
        _search(summary, database, space, sizes)
    with _stage(summary, "export", "the best subnet that met the budget when measured, as ONNX"):
        _export(summary, database)
    summary.total_seconds = time.perf_counter() - start
    path = summary_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary.to_dict(), indent=2))
    _print_summary(summary, path)
    return summary


@contextmanager
def _stage(summary: Summary, name: str, what: str) -> Iterator[None]:
    """Announce a stage and record its wall time (also when it fails, for the record)."""
    number = STAGES.index(name) + 1
    console.rule(f"[bold][{number}/{len(STAGES)}] {name}[/bold]: {what}", align="left")
    t0 = time.perf_counter()
    try:
        yield
    finally:
        summary.stage_seconds[name] = round(time.perf_counter() - t0, 1)
    console.print(f"[dim]{name}: {summary.stage_seconds[name]:.0f} s[/dim]")


# -- 1. supernet ------------------------------------------------------------------------------------------

def _recipe(train_config: dict[str, Any]) -> dict[str, Any]:
    """What decides the weights at a given step: everything but the step count and checkpoint interval
    (the learning-rate schedule does not depend on `steps`, so a shorter run is a prefix of a longer one)."""
    return {k: v for k, v in train_config.items() if k not in ("steps", "checkpoint_every")}


def _checkpoint_dir(config: Any, data: Any) -> Path:  # TrainConfig, DataSpec
    """`hwnas supernet train`'s default directory, unless its checkpoint follows another recipe (say
    `--sandwich`): then a sibling named after this recipe, so neither run overwrites the other."""
    import hashlib

    from hwnas.search_spaces import get_space
    from hwnas.supernet import read_checkpoint

    base = settings().supernet_dir(get_space(SPACE).name, str(data))  # where jobs.train_supernet looks
    ckpt = base / "checkpoint.pt"
    if not ckpt.exists() or _recipe(read_checkpoint(ckpt)["train_config"]) == _recipe(dataclasses.asdict(config)):
        return base
    key = hashlib.sha1(json.dumps(_recipe(dataclasses.asdict(config)), sort_keys=True).encode()).hexdigest()[:8]
    return base.with_name(f"{base.name}-{key}")


def _supernet(summary: Summary, space: SearchSpace, steps: int) -> ModelConfig:
    """Train to `steps` (resuming a shorter run), or reuse a checkpoint of the same recipe that went as far."""
    from hwnas.jobs import train_supernet
    from hwnas.supernet import DataSpec, ModelConfig, TrainConfig, read_checkpoint

    config, data = TrainConfig(steps=steps), DataSpec.parse(DATA)
    out = _checkpoint_dir(config, data)
    ckpt = out / "checkpoint.pt"
    before = read_checkpoint(ckpt)["step"] if ckpt.exists() else None
    net = train_supernet(db(), space=space, data=str(data), config=config, out=out)  # reused when far enough
    state = read_checkpoint(ckpt)
    if before is not None and before == net.step:
        console.print(f"reusing {ckpt}: step {net.step}, same recipe")
    else:
        recent = state["history"][-50:] or [float("nan")]  # the trainer's own train-loss figure
        console.print(f"checkpoint {ckpt}: step {net.step}, train loss {sum(recent) / len(recent):.3f}")
    console.print(f"registered as supernet {net.id}")
    summary.checkpoint, summary.checkpoint_step = str(ckpt), net.step
    # tune and measure the very models the search scores and exports: the checkpoint's vocabulary and widths
    return ModelConfig(**state["model_config"])


# -- 2. kernels -------------------------------------------------------------------------------------------

@contextmanager
def _record_progress(device: str, space: str, have: int, want: int) -> Iterator[None]:
    """A progress bar fed by the growing database: MetaSchedule reports only to its logs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hwnas.jobs import tuning_records

    stop = threading.Event()
    with Progress(TextColumn("[bold]tune kernels"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("tune", total=want, completed=have)

        def watch() -> None:
            while not stop.wait(2.0):  # ends when tuning returns (the finally below)
                bar.update(task, completed=min(tuning_records(device, space), want))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join(timeout=5.0)
            bar.update(task, completed=min(tuning_records(device, space), want))


def _kernels(summary: Summary, device: DeviceProfile, space: SearchSpace, mc: ModelConfig, trials: int) -> None:
    """Top the device's tuning database for the space up to `trials` records (`hwnas kernels tune` adds them)."""
    import logging

    from hwnas.jobs import tune_kernels, tuning_records

    tdir = settings().tuning_dir(device.name, space.name)
    have = tuning_records(device.name, space.name)
    if have >= trials:
        console.print(f"reusing {tdir}: {have} records")
    else:
        # MetaSchedule logs every batch to stdout at INFO; its log files under tdir/logs keep them all
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        console.print(f"extracting the space's workloads, then {trials - have} trials "
                      f"({have} already in {tdir})")
        with _record_progress(device.name, space.name, have, trials):
            report = tune_kernels(device=device, space=space, model_config=mc, records=trials)
        if report is not None:  # None: another process filled the database meanwhile
            tuned = sum(1 for t in report.tasks if t.trials)
            console.print(f"tuning database {tdir}: {report.trials} records, {tuned} of {len(report.tasks)} "
                          f"tasks tuned, the heaviest first")
    summary.tuning_dir, summary.tuning_records = str(tdir), tuning_records(device.name, space.name)


# -- 3. latency -------------------------------------------------------------------------------------------

def _latency(summary: Summary, database: Database, device: DeviceProfile, space: SearchSpace, mc: ModelConfig,
             sizes: Sizes) -> None:
    """Measure the subnets (`hwnas latency collect`), fit both predictors, keep the better one held out."""
    from hwnas.jobs import choose_predictor, fit_predictors, measure_subnets

    report = measure_subnets(database, device=device, space=space, model_config=mc, n=sizes.samples, seed=SEED,
                             build_workers=sizes.workers)
    console.print(f"{report.measured} measured, {report.failed} failed, {report.skipped} already in the database")
    results = fit_predictors(database, device=device, space=space, model_config=mc, kinds=PREDICTOR_KINDS,
                             test_fraction=TEST_FRACTION, seed=SEED)
    best = choose_predictor(results)
    for r in results:
        m = r["metrics"]
        mark = "  <- used" if r is best else ""
        console.print(f"predictor {r['kind']} v{r['version']}: held-out MAPE {100 * m['mape']:.1f}%, "
                      f"Spearman {m['spearman']:.2f} ({r['train']} train / {r['test']} held out){mark}")
    summary.measured_subnets = best["train"] + best["test"]  # the usable ones
    summary.predictor = {"kind": best["kind"], "version": best["version"], "revision": best["revision"],
                         "mape": best["metrics"]["mape"], "held_out": best["test"]}


# -- 4. search --------------------------------------------------------------------------------------------

def _budget(database: Database, spec: SearchSpec, predictor: dict[str, Any], fraction: float) -> dict[str, Any]:
    """The budget between the predicted latencies of the space's smallest and largest subnets."""
    from hwnas.jobs import job_provenance
    from hwnas.latency import load_predictor
    from hwnas.search_spaces import get_space

    space = get_space(spec.space)
    model, _ = load_predictor(database, job_provenance(database, spec), kind=predictor["kind"],
                              version=predictor["version"])
    smallest_ms, largest_ms = (float(v) for v in model.predict([space.smallest(), space.largest()]))
    budget_ms = smallest_ms + fraction * (largest_ms - smallest_ms)
    return {"budget_ms": round(budget_ms, 3), "fraction": fraction, "basis": f"{predictor['kind']} predictor",
            "smallest_predicted_ms": round(smallest_ms, 3), "largest_predicted_ms": round(largest_ms, 3)}


def _search(summary: Summary, database: Database, space: SearchSpace, sizes: Sizes) -> None:
    """Create and run the job as `hwnas search run` does, pinned to the chosen predictor; show its front."""
    from hwnas.jobs import FitnessConfig, SearchSpec, create_job, run_job
    from hwnas.search import strategy_options

    predictor = summary.predictor or {}
    spec = SearchSpec(space=SPACE, device=DEVICE, latency_ms=1.0, strategy="evo", seed=SEED,
                      supernet=str(summary.checkpoint),
                      options=strategy_options("evo", population=sizes.population, generations=sizes.generations),
                      fitness=FitnessConfig(valid_sentences=VALID_SENTENCES), workers=sizes.workers, verify=True,
                      tuning_dir=summary.tuning_dir, predictor_kind=predictor.get("kind"),
                      predictor_version=predictor.get("version"))
    budget = summary.budget = _budget(database, spec, predictor, sizes.budget_fraction)
    console.print(f"budget {budget['budget_ms']:.2f} ms = predicted smallest {budget['smallest_predicted_ms']:.2f} + "
                  f"{sizes.budget_fraction:g} x (predicted largest {budget['largest_predicted_ms']:.2f} - "
                  f"{budget['smallest_predicted_ms']:.2f}) ms, by the {budget['basis']}")
    summary.job_id = create_job(database, dataclasses.replace(spec, latency_ms=budget["budget_ms"]))
    with JobBars() as bars:
        run_job(database, summary.job_id, on_progress=bars)
    show_job(database, summary.job_id, None)  # status, the verified front, and the Pareto plot
    summary.pareto_plot = str(default_plot_path(summary.job_id))


# -- 5. export --------------------------------------------------------------------------------------------

def best_member(members: list[FrontMember]) -> FrontMember | None:
    """The lowest-loss front member whose measured latency met the budget (faster first among equals)."""
    met = [m for m in members if m.meets_constraint and m.candidate.loss is not None]
    return min(met, key=lambda m: (m.candidate.loss, m.measured_latency_ms), default=None)


def _export(summary: Summary, database: Database) -> None:
    """`hwnas export JOB --candidate K --format onnx` for the best member that met the budget."""
    from hwnas.jobs import export_candidate, front

    job_id = int(summary.job_id or 0)
    best = best_member(front(database, job_id))
    if best is None:
        console.print("[yellow]no front member met the budget when measured; nothing to export[/yellow]")
        return
    c = best.candidate
    summary.best = {"candidate": c.id, "subnet": c.subnet.to_dict(), "valid_loss": c.loss,
                    "predicted_latency_ms": c.predicted_latency_ms, "measured_latency_ms": best.measured_latency_ms,
                    "params": c.params}
    out = settings().exports_dir() / f"job-{job_id}-candidate-{c.id}-onnx"  # where `hwnas export` puts it
    summary.export = str(export_candidate(database, job_id, c.id, fmt="onnx", out_dir=out))


# -- the report -------------------------------------------------------------------------------------------

def _print_summary(summary: Summary, path: Path) -> None:
    timing = Table("stage", "seconds", title="quickstart timings")
    for name in STAGES:
        timing.add_row(name, f"{summary.stage_seconds.get(name, 0.0):.0f}")
    timing.add_row("[bold]total[/bold]", f"[bold]{summary.total_seconds:.0f}[/bold]")
    console.print(timing)
    budget, best = summary.budget or {}, summary.best
    if best:
        console.print(f"best under {budget.get('budget_ms', 0):.2f} ms: candidate {best['candidate']}, valid loss "
                      f"{best['valid_loss']:.4f}, measured {best['measured_latency_ms']:.2f} ms (predicted "
                      f"{best['predicted_latency_ms']:.2f}), {best['params'] / 1e6:.2f}M parameters")
    rows = (("checkpoint", summary.checkpoint, f"step {summary.checkpoint_step}"),
            ("tuning database", summary.tuning_dir, f"{summary.tuning_records} records"),
            ("database", summary.database, f"{summary.measured_subnets} usable measurements"),
            ("Pareto plot", summary.pareto_plot, f"job {summary.job_id}"),
            ("export bundle", summary.export or "-", "onnx"), ("summary", str(path), "JSON"))
    for what, where, note in rows:  # one unwrapped line each: paths are copied from here
        console.print(f"  {what + ':':<17}{where}  ({note})", soft_wrap=True, highlight=False)
    console.print(f"next: hwnas search show {summary.job_id}; a longer run: hwnas supernet train --space {SPACE} "
                  f"(continues this checkpoint), hwnas kernels tune --trials 1000")
