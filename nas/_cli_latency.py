"""`hwnas kernels ...` and `hwnas latency ...`: tuning, measuring and predicting on devices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

devices_app = typer.Typer(no_args_is_help=True, help="Device profiles and remote devices (TVM RPC).")
kernels_app = typer.Typer(no_args_is_help=True, help="TVM kernels: MetaSchedule tuning per (device, space).")
latency_app = typer.Typer(no_args_is_help=True, help="Measure subnets on devices; train latency predictors.")
console = Console()

DeviceOpt = Annotated[str, typer.Option("--device", help="Device profile name (built-in: local-cpu, local-cpu-torch)")]
SpaceOpt = Annotated[str, typer.Option("--space", help="Search space name or .json file")]


def _db():  # noqa: ANN202 - hwnas.db.Database, imported lazily
    from hwnas.db import Database

    return Database()


def _device(name: str):  # noqa: ANN202 - DeviceProfile
    """Built-in devices need no database; any other name is looked up in it."""
    from hwnas.latency._devices import builtin_devices
    from hwnas.latency._registry import DeviceRegistry

    return builtin_devices().get(name) or DeviceRegistry(_db()).get(name)


def default_vocab_size(space: str) -> int:
    """The output layer is part of the latency: quickstart's tokenizer has 4000 entries, HAT's WMT BPE ~32K."""
    return 4000 if Path(space).stem == "quickstart" else 32768


def _tuning_to_use(dev, space: str, untuned: bool) -> str | None:  # noqa: ANN001 - DeviceProfile
    """The device's tuning database for this space, if it has one and it applies (TVM runtime)."""
    tdir = tuning_dir(dev.name, space)
    if untuned or dev.runtime != "tvm" or not (tdir / "database_tuning_record.json").exists():
        return None
    return str(tdir)


def tuning_dir(device: str, space: str) -> Path:
    from hwnas.cli import home

    return home() / "tuning" / device / Path(space).stem


@kernels_app.command("tune")
def kernels_tune(
    device: DeviceOpt = "local-cpu",
    space: SpaceOpt = "quickstart",
    trials: Annotated[int, typer.Option(min=0, help="MetaSchedule trials to add to the database")] = 200,
    vocab_size: Annotated[int | None, typer.Option(min=8)] = None,
) -> None:
    """Tune every workload of a space for a device, into a database that every subnet build reuses."""
    from hwnas.kernels._tune import tune_space
    from hwnas.search_spaces import get_space
    from hwnas.supernet import ModelConfig

    dev, sp = _device(device), get_space(space)
    mc = ModelConfig(vocab_size=vocab_size or default_vocab_size(space), qkv_dim=sp.qkv_dim)
    out = tuning_dir(device, space)
    report = tune_space(space=sp, mc=mc, target=dev.target, work_dir=out, trials=trials,
                        decode_steps=sp.source_length_tokens)
    table = Table("task", "calls/sentence", "trials", "best us", "GFLOP/s", "% of peak")
    for t in report.tasks[:20]:
        peak = f"{100 * t.peak_fraction:.0f}" if t.peak_fraction else "-"
        table.add_row(t.name[:48], f"{t.weight:g}", str(t.trials), f"{t.best_us:.1f}" if t.best_us else "-",
                      f"{t.gflops:.1f}" if t.gflops else "-", peak)
    console.print(table)
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    console.print(f"tuning database: {out}  ({report.trials} records over {len(report.tasks)} workloads; "
                  f"peak {report.peak_gflops:.0f} GFLOP/s measured by SGEMM; {report.seconds:.0f} s)")


@latency_app.command("measure")
def latency_measure(
    device: DeviceOpt = "local-cpu",
    space: SpaceOpt = "quickstart",
    subnet: Annotated[str, typer.Option(help="Subnet JSON file, or 'largest' / 'smallest'")] = "largest",
    untuned: Annotated[bool, typer.Option(help="Ignore the device's tuning database")] = False,
    vocab_size: Annotated[int | None, typer.Option(min=8)] = None,
) -> None:
    """Build and time one subnet on a device (encoder + decoder steps, raw runs summarized)."""
    from hwnas.cli import _load_subnet
    from hwnas.latency._collect import measure
    from hwnas.search_spaces import get_space
    from hwnas.supernet import ModelConfig

    dev, sp = _device(device), get_space(space)
    cfg = _load_subnet(subnet, sp)
    use = _tuning_to_use(dev, space, untuned)
    mc = ModelConfig(vocab_size=vocab_size or default_vocab_size(space), qkv_dim=sp.qkv_dim)
    rec = measure(device=dev, space=sp, model_config=mc, subnets=[cfg], tuning_dir=use)[0]
    if not rec.result.ok:
        raise typer.Exit(code=_fail(f"measurement failed: {rec.result.error}"))
    r, steps = rec.result, rec.protocol.decode_steps
    enc, dec = r.parts_ms(steps, rec.protocol.passes)
    console.print(f"{dev.name} ({'tuned' if use else 'untuned'}): {rec.latency_ms():.3f} ms = encoder "
                  f"{enc:.3f} + {steps} x step {dec:.4f}  "
                  f"(CV {100 * rec.latency_cv():.1f}%, {len(r.encoder_ms or ())} runs)")
    if rec.reference_ms is not None:  # how fast the machine ran meanwhile: the reference subnet, same session
        console.print(f"reference subnet (the space's smallest) in the same session: {rec.reference_ms:.3f} ms")


@devices_app.command("serve")
def devices_serve(
    tracker: Annotated[str, typer.Option(help="HOST:PORT of the TVM RPC tracker to join")],
    key: Annotated[str, typer.Option(help="Device key that measurements ask the tracker for")],
    host: Annotated[str, typer.Option(help="Address to listen on")] = "0.0.0.0",
    port: Annotated[int, typer.Option(min=1, max=65000)] = 9090,
) -> None:
    """Run on the device (a Raspberry Pi, a GPU box): serve TVM RPC sessions for the tracker."""
    import os

    from hwnas.latency._rpc import server_command

    cmd = server_command(tracker=tracker, key=key, host=host, port=port)
    console.print(f"joining tracker {tracker} as '{key}': {' '.join(cmd[1:])}")
    os.execv(cmd[0], cmd)  # become the server: signals and exit codes reach it directly


@devices_app.command("list")
def devices_list() -> None:
    """Built-in and registered device profiles."""
    from hwnas.latency._registry import DeviceRegistry

    table = Table("name", "kind", "runtime", "where", "target")
    for d in DeviceRegistry(_db()).list():
        where = d.location if d.location == "local" else f"{d.tracker} ({d.rpc_key})"
        table.add_row(d.name, d.kind, d.runtime, where, json.dumps(d.target))
    console.print(table)


@devices_app.command("show")
def devices_show(name: Annotated[str, typer.Argument(help="Device name")]) -> None:
    """A device profile as JSON: target, fingerprint, protocol, measurements and predictors."""
    from hwnas.latency._registry import DeviceRegistry, list_predictors

    db = _db()
    out = {**_device(name).to_dict(), "measurements": DeviceRegistry(db).measurement_counts(name),
           "predictors": list_predictors(db, name)}
    typer.echo(json.dumps(out, indent=2, default=str))


@devices_app.command("add")
def devices_add(
    name: Annotated[str, typer.Argument(help="A new device name")],
    kind: Annotated[str, typer.Option(help="cpu, gpu or iot")],
    target: Annotated[str, typer.Option(help='TVM target as JSON, e.g. {"kind": "llvm", "mcpu": "znver4"}')],
    runtime: Annotated[str, typer.Option(help="tvm or torch")] = "tvm",
    tracker: Annotated[str | None, typer.Option(help="HOST:PORT of the RPC tracker (remote devices)")] = None,
    key: Annotated[str | None, typer.Option(help="RPC device key (remote devices)")] = None,
    timed_runs: Annotated[int, typer.Option(min=20, help="Timed runs per measurement")] = 100,
    passes: Annotated[int, typer.Option(min=1, help="Split the timed runs into this many passes, interleaved "
                                                    "across a batch's subnets; latency = the fastest pass")] = 1,
) -> None:
    """Register a device; remote ones join a tracker with `hwnas devices serve`."""
    from hwnas.exceptions import MeasurementError
    from hwnas.kernels import make_target
    from hwnas.latency._devices import DeviceProfile, measure_config
    from hwnas.latency._registry import DeviceRegistry

    try:
        target_dict = json.loads(target)
    except json.JSONDecodeError as e:
        raise MeasurementError(f"--target is not valid JSON: {e}") from e
    make_target(target_dict)  # reject a bad target now, not at the first measurement
    profile = DeviceProfile(name=name, kind=kind, target=target_dict, runtime=runtime,
                            location="rpc" if tracker or key else "local", tracker=tracker, rpc_key=key,
                            protocol=measure_config(timed_runs=timed_runs, passes=passes))
    DeviceRegistry(_db()).add(profile)
    console.print(f"added device '{name}'")


@devices_app.command("remove")
def devices_remove(name: Annotated[str, typer.Argument(help="Device name")]) -> None:
    """Remove a registered device with its measurements and predictors."""
    from hwnas.latency._registry import DeviceRegistry

    DeviceRegistry(_db()).remove(name)
    console.print(f"removed device '{name}'")


@latency_app.command("collect")
def latency_collect(
    device: DeviceOpt = "local-cpu",
    space: SpaceOpt = "quickstart",
    n: Annotated[int, typer.Option("-n", min=1, help="Distinct subnets to have measured")] = 2000,
    seed: int = 0,
    untuned: Annotated[bool, typer.Option(help="Ignore the device's tuning database")] = False,
    vocab_size: Annotated[int | None, typer.Option(min=8)] = None,
    workers: Annotated[int, typer.Option(min=1, help="Parallel builds")] = 2,
) -> None:
    """Measure n random subnets into the database; resumable, skips what is already measured."""
    from hwnas.latency._collect import collect
    from hwnas.latency._registry import SQLMeasurementStore
    from hwnas.search_spaces import get_space
    from hwnas.supernet import ModelConfig

    dev, sp = _device(device), get_space(space)
    use = _tuning_to_use(dev, space, untuned)
    mc = ModelConfig(vocab_size=vocab_size or default_vocab_size(space), qkv_dim=sp.qkv_dim)
    report = collect(device=dev, space=sp, model_config=mc, n=n, store=SQLMeasurementStore(_db()), seed=seed,
                     tuning_dir=use, build_workers=workers)
    console.print(f"{report.measured} measured, {report.failed} failed, {report.skipped} already in the database "
                  f"({'tuned' if use else 'untuned'} kernels)")


@latency_app.command("train")
def latency_train(
    device: DeviceOpt = "local-cpu",
    space: SpaceOpt = "quickstart",
    kinds: Annotated[str, typer.Option(help="Comma-separated predictor kinds")] = "layerwise,hat-mlp",
    test_fraction: Annotated[float, typer.Option(min=0.05, max=0.9)] = 0.2,
    constraint_ms: Annotated[float | None, typer.Option(help="Report the error near this latency")] = None,
    seed: int = 0,
    untuned: Annotated[bool, typer.Option(help="Train on measurements of untuned kernels")] = False,
) -> None:
    """Train predictors on the device's measurements; report held-out accuracy; store new versions."""
    from hwnas.latency._training import train_predictors
    from hwnas.search_spaces import get_space

    dev, sp = _device(device), get_space(space)
    use = _tuning_to_use(dev, space, untuned)
    results = train_predictors(_db(), device=dev, space=sp, kinds=kinds.split(","), tuning_dir=use,
                               test_fraction=test_fraction, constraint_ms=constraint_ms, seed=seed)
    table = Table("predictor", "version", "train/test", "RMSE ms", "MAPE %", "within 5%", "within 10%", "Spearman",
                  "Kendall")
    for r in results:
        m = r["metrics"]
        table.add_row(r["kind"], str(r["version"]), f"{r['train']}/{r['test']}", f"{m['rmse_ms']:.3f}",
                      f"{100 * m['mape']:.2f}", f"{100 * m['within_5pct']:.1f}%", f"{100 * m['within_10pct']:.1f}%",
                      f"{m['spearman']:.3f}", f"{m['kendall']:.3f}")
    console.print(table)


def _fail(message: str) -> int:
    import sys

    print(f"error: {message}", file=sys.stderr)
    return 2
