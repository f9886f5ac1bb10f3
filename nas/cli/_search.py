"""`hwnas search ...` and `hwnas export`: run, resume, inspect and cancel search jobs; export a candidate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from hwnas.cli._common import JobBars, console, db, device, settings
from hwnas.exceptions import SearchError

if TYPE_CHECKING:
    from hwnas.db import Database

search_app = typer.Typer(no_args_is_help=True, help="Latency-constrained search jobs (HAT evolution, NSGA-II, TPE).")

JobArg = Annotated[int, typer.Argument(help="Search job id")]


def default_plot_path(job_id: int) -> Path:
    return settings().jobs_dir() / f"job-{job_id}-pareto.png"


@search_app.command("run")
def search_run(
    space: Annotated[str, typer.Option("--space", help="Search space name or .json file")] = "quickstart",
    device_name: Annotated[str, typer.Option("--device", help="Device profile (needs a trained latency predictor)")] =
        "local-cpu",
    latency_ms: Annotated[float, typer.Option("--latency-ms", help="Latency budget on the device (ms)")] = ...,  # type: ignore[assignment]
    strategy: Annotated[str, typer.Option(help="evo | nsga2 | tpe | random")] = "evo",
    workers: Annotated[int, typer.Option(min=1, help="Ray actors scoring candidates")] = 1,
    gpus_per_worker: Annotated[float, typer.Option(min=0.0, help="GPUs of each scoring actor (0: CPUs)")] = 0.0,
    precision: Annotated[str, typer.Option(help="Autocast dtype of scoring: fp32, bf16 or fp16 (GPUs)")] = "fp32",
    supernet: Annotated[Path | None, typer.Option(help="Supernet checkpoint (default: the newest registered for "
                                                       "the space; see hwnas supernet list)")] = None,
    seed: int = 0,
    population: Annotated[int | None, typer.Option(min=4, help="evo: population (parents/mutations/crossovers "
                                                               "scale as HAT's 25/50/50 of 125)")] = None,
    generations: Annotated[int | None, typer.Option(min=1, help="Generations (evo) or batches (others)")] = None,
    valid_sentences: Annotated[int | None, typer.Option(min=1, help="Fixed validation subset for fitness")] = None,
    fitness: Annotated[str, typer.Option(help="loss | bleu")] = "loss",
    also: Annotated[list[str] | None, typer.Option("--also", help="Another constraint, DEVICE:MS (repeatable)")] =
        None,
    verify: Annotated[bool, typer.Option(help="Measure the final front on the device")] = True,
    retrain_steps: Annotated[int | None, typer.Option(
        min=1, help="Then retrain the best verified member for this many updates (HAT's step 5); exports of it "
                    "carry those weights")] = None,
    retrain_init: Annotated[str, typer.Option(help="scratch (HAT) or inherited (fine-tune)")] = "scratch",
    retrain_average: Annotated[int, typer.Option(min=1, help="Checkpoints averaged into the retrained model")] = 1,
    verified_members: Annotated[int | None, typer.Option(
        min=1, help="Front members that must meet the budget when measured (others are measured in place of those "
                    "that do not); default: the predicted front's size, at least 5")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: $HWNAS_RAY_ADDRESS, "
                                                     "$RAY_ADDRESS, else a local Ray)")] = None,
) -> None:
    """Create a search job and run it; Ctrl-C leaves it resumable (`hwnas search resume JOB`)."""
    from hwnas.jobs import FitnessConfig, RetrainSpec, SearchSpec, create_job, run_job, tuning_to_use
    from hwnas.search import strategy_options
    from hwnas.search_spaces import get_space

    extra = tuple(_parse_also(a) for a in also or ())
    spec = SearchSpec(space=space, device=device_name, latency_ms=latency_ms, strategy=strategy, seed=seed,
                      supernet=str(supernet or ""),
                      options=strategy_options(strategy, population=population, generations=generations),
                      fitness=FitnessConfig(metric=fitness, valid_sentences=valid_sentences,  # type: ignore[arg-type]
                                            precision=precision),
                      extra_constraints=extra, workers=workers, gpus_per_worker=gpus_per_worker, verify=verify,
                      verified_members=verified_members,
                      retrain=RetrainSpec(steps=retrain_steps, init=retrain_init, average_last=retrain_average,
                                          checkpoint_every=max(1, min(200, retrain_steps // retrain_average)))
                      if retrain_steps else None,
                      tuning_dir=tuning_to_use(device(device_name), get_space(space).name))
    database = db()
    job_id = create_job(database, spec)
    console.print(f"search job {job_id}: {strategy} on {device_name} under {latency_ms:g} ms")
    with JobBars() as bars:
        run_job(database, job_id, address=address, on_progress=bars)
    show_job(database, job_id, None)


def _parse_also(text: str) -> tuple[str, float]:
    name, _, ms = text.rpartition(":")
    try:
        return name, float(ms)
    except ValueError:
        raise SearchError(f"--also '{text}' must be DEVICE:MS, e.g. rpi4:500") from None


@search_app.command("resume")
def search_resume(job: JobArg, address: Annotated[str | None, typer.Option()] = None) -> None:
    """Continue an interrupted or failed job from its last finished generation."""
    from hwnas.jobs import run_job

    database = db()
    with JobBars() as bars:
        run_job(database, job, address=address, on_progress=bars)
    show_job(database, job, None)


@search_app.command("list")
def search_list(status: Annotated[str | None, typer.Option(help="Only jobs with this status")] = None,
                limit: Annotated[int, typer.Option(min=1)] = 50) -> None:
    """Search jobs, newest first."""
    from hwnas.jobs import list_jobs

    table = Table("job", "status", "space", "device", "strategy", "budget ms", "generation", "evaluations",
                  "best loss")
    for j in list_jobs(db(), status=status, limit=limit):
        table.add_row(str(j.id), j.status, j.spec.space, j.spec.device, j.spec.strategy, f"{j.spec.latency_ms:g}",
                      f"{j.generation}/{j.generations_total}", str(j.evaluations),
                      "-" if j.best_loss is None else f"{j.best_loss:.4f}")
    console.print(table)


@search_app.command("show")
def search_show(job: JobArg, plot: Annotated[Path | None, typer.Option(help="Pareto plot PNG path")] = None) -> None:
    """The job's status and verified Pareto table; writes the Pareto plot."""
    show_job(db(), job, plot)


@search_app.command("cancel")
def search_cancel(job: JobArg) -> None:
    """Cancel a job; a running search stops at its next candidate."""
    from hwnas.jobs import cancel_job

    console.print(f"search job {job}: {cancel_job(db(), job).status}")


def show_job(database: Database, job_id: int, plot: Path | None) -> None:
    """The job's status line, its verified front as a table, and its Pareto plot (written)."""
    from hwnas.jobs import candidates, front, get_job, plot_front

    info = get_job(database, job_id)
    spec = info.spec
    console.print(f"search job {job_id}: {info.status} - {spec.strategy} on {spec.device} under "
                  f"{spec.latency_ms:g} ms, generation {info.generation}/{info.generations_total}, "
                  f"{info.evaluations} evaluated" + (f"; error: {info.error}" if info.error else ""))
    if info.note:
        console.print(info.note)
    members = front(database, job_id)
    if not members:
        return
    with_bleu = spec.fitness.metric == "bleu"
    table = Table("candidate", "subnet", "valid loss", *(["BLEU"] if with_bleu else []), "predicted ms",
                  "measured ms", "meets budget", "params M", "GFLOPs")
    for m in members:
        c = m.candidate
        meets = "-" if m.meets_constraint is None else ("yes" if m.meets_constraint else "[red]NO[/red]")
        bleu = ["-" if c.bleu is None else f"{c.bleu:.2f}"] if with_bleu else []
        table.add_row(str(c.id), c.subnet.key(), f"{c.loss:.4f}", *bleu, f"{c.predicted_latency_ms:.2f}",
                      "-" if m.measured_latency_ms is None else f"{m.measured_latency_ms:.2f}", meets,
                      f"{c.params / 1e6:.2f}", f"{c.flops / 1e9:.3f}")
    console.print(table)
    path = plot_front(plot or default_plot_path(job_id), title=f"job {job_id}: {spec.space} on {spec.device}",
                      rows=candidates(database, job_id), members=members, budget_ms=spec.latency_ms)
    console.print(f"Pareto plot: {path}")


def export_command(
    job: JobArg,
    candidate: Annotated[int, typer.Option("--candidate", help="Candidate id (the first column of `search show`)")],
    fmt: Annotated[str, typer.Option("--format", help="torchscript | onnx | tvm")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="Bundle directory (default: under $HWNAS_HOME/exports)")] = None,
    device: Annotated[str | None, typer.Option(
        help="Device of the certificate; its runtime must be the format's (onnx: onnxruntime, torchscript: torch, "
             "tvm: tvm). Default: the job's device, or this machine's CPU under the format's runtime")] = None,
    weights: Annotated[str | None, typer.Option(
        help="The candidate retrained or fine-tuned (model.pt of `hwnas subnet train`), or 'inherited'; default: "
             "the model the job's retraining stage made of it, else the weights it inherits from the supernet")] =
        None,
) -> None:
    """Write a candidate as a standalone bundle: model, config, tokenizer and a latency certificate measured with
    the runtime the format deploys with."""
    from hwnas.export import load_bundle
    from hwnas.jobs import export_candidate

    target = out or settings().exports_dir() / f"job-{job}-candidate-{candidate}-{fmt}"
    path = export_candidate(db(), job, candidate, fmt=fmt, out_dir=target, device=device, weights=weights)
    bundle = load_bundle(path)
    console.print(f"wrote {path}")
    console.print(bundle.covers())
    prov = bundle.weights or {}
    bleu = f", test BLEU {prov['test_bleu']:.2f}" if prov.get("test_bleu") is not None else ""
    console.print(f"weights: {prov.get('weights', 'unknown')} ({prov.get('steps', '?')} updates{bleu})")
