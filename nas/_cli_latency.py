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


def default_vocab_size(space: str) -> int:
    """The output layer is part of the latency: quickstart's tokenizer has 4000 entries, HAT's WMT BPE ~32K."""
    return 4000 if Path(space).stem == "quickstart" else 32768


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
    from hwnas.latency._devices import get_device
    from hwnas.search_spaces import get_space
    from hwnas.supernet import ModelConfig

    dev, sp = get_device(device), get_space(space)
    mc = ModelConfig(vocab_size=vocab_size or default_vocab_size(space), qkv_dim=sp.qkv_dim)
    out = tuning_dir(device, space)
    report = tune_space(space=sp, mc=mc, target=dev.target, work_dir=out, trials=trials,
                        decode_steps=dev.protocol.decode_steps)
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
    from hwnas.latency._devices import get_device
    from hwnas.search_spaces import get_space
    from hwnas.supernet import ModelConfig

    dev, sp = get_device(device), get_space(space)
    cfg = _load_subnet(subnet, sp)
    tdir = tuning_dir(device, space)
    use = None if untuned or dev.runtime != "tvm" or not (tdir / "database_tuning_record.json").exists() else str(tdir)
    mc = ModelConfig(vocab_size=vocab_size or default_vocab_size(space), qkv_dim=sp.qkv_dim)
    rec = measure(device=dev, space=sp, model_config=mc, subnets=[cfg], tuning_dir=use)[0]
    if not rec.result.ok:
        raise typer.Exit(code=_fail(f"measurement failed: {rec.result.error}"))
    r, steps = rec.result, dev.protocol.decode_steps
    from hwnas.latency import median

    console.print(f"{dev.name} ({'tuned' if use else 'untuned'}): {r.latency_ms(steps):.3f} ms = encoder "
                  f"{median(r.encoder_ms or ()):.3f} + {steps} x step {median(r.decoder_step_ms or ()):.4f}  "
                  f"(CV {100 * r.latency_cv():.1f}%, {len(r.encoder_ms or ())} runs)")


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
    """Device profiles (built-in for now; registered devices come with the database)."""
    from hwnas.latency._devices import builtin_devices

    table = Table("name", "kind", "runtime", "where", "target")
    for d in builtin_devices().values():
        table.add_row(d.name, d.kind, d.runtime, d.location if d.location == "local" else f"{d.tracker} ({d.rpc_key})",
                      json.dumps(d.target))
    console.print(table)


@devices_app.command("show")
def devices_show(name: Annotated[str, typer.Argument(help="Device name")]) -> None:
    """A device profile as JSON: target, fingerprint and measurement protocol."""
    from hwnas.latency._devices import get_device

    typer.echo(json.dumps(get_device(name).to_dict(), indent=2))


def _fail(message: str) -> int:
    import sys

    print(f"error: {message}", file=sys.stderr)
    return 2
