"""`hwnas devices ...`, `hwnas kernels ...` and `hwnas latency ...`: devices, tuning, measuring and predicting."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from hwnas.cli._common import console, db, device, load_subnet, settings

if TYPE_CHECKING:  # heavy imports (torch, TVM) wait until a command runs
    from hwnas.search_spaces import SearchSpace
    from hwnas.supernet import ModelConfig

devices_app = typer.Typer(no_args_is_help=True, help="Device profiles and remote devices (TVM RPC).")
kernels_app = typer.Typer(no_args_is_help=True, help="TVM kernels: MetaSchedule tuning per (device, space).")
latency_app = typer.Typer(no_args_is_help=True, help="Measure subnets on devices; train latency predictors.")

DeviceOpt = Annotated[str, typer.Option(
    "--device", help="Device profile name (built-in: local-cpu, local-cpu-torch, local-cpu-ort)")]
SpaceOpt = Annotated[str, typer.Option("--space", help="Search space name or .json file")]


@kernels_app.command("tune")
def kernels_tune(
    device_name: DeviceOpt = "local-cpu",
    space: SpaceOpt = "quickstart",
    trials: Annotated[int, typer.Option(min=0, help="MetaSchedule trials to add to the database")] = 200,
    vocab_size: Annotated[int | None, typer.Option(min=8)] = None,
) -> None:
    """Tune every workload of a space for a device, into a database that every subnet build reuses."""
    from hwnas.jobs import tune_kernels, tuning_records
    from hwnas.search_spaces import get_space

    dev, sp = device(device_name), get_space(space)
    mc = _model_config(space, sp, vocab_size)
    out = settings().tuning_dir(dev.name, sp.name)
    report = tune_kernels(device=dev, space=sp, model_config=mc,
                          records=tuning_records(dev.name, sp.name) + trials)
    if report is None:
        console.print(f"tuning database: {out} (no trials asked for)")
        return
    table = Table("task", "calls/sentence", "trials", "best us", "GFLOP/s", "% of peak")
    for t in report.tasks[:20]:
        peak = f"{100 * t.peak_fraction:.0f}" if t.peak_fraction else "-"
        table.add_row(t.name[:48], f"{t.weight:g}", str(t.trials), f"{t.best_us:.1f}" if t.best_us else "-",
                      f"{t.gflops:.1f}" if t.gflops else "-", peak)
    console.print(table)
    where = f"timed on the boards of '{dev.rpc_key}' at {dev.tracker}" if dev.location == "rpc" else \
        f"peak {report.peak_gflops:.0f} GFLOP/s measured by SGEMM" if report.peak_gflops else "timed here"
    console.print(f"tuning database: {out}  ({report.trials} records over {len(report.tasks)} workloads; "
                  f"{where}; {report.seconds:.0f} s)")


@latency_app.command("measure")
def latency_measure(
    device_name: DeviceOpt = "local-cpu",
    space: SpaceOpt = "quickstart",
    subnet: Annotated[str, typer.Option(help="Subnet JSON file, or 'largest' / 'smallest'")] = "largest",
    untuned: Annotated[bool, typer.Option(help="Ignore the device's tuning database")] = False,
    vocab_size: Annotated[int | None, typer.Option(min=8)] = None,
) -> None:
    """Build and time one subnet on a device (encoder + decoder steps, raw runs summarized)."""
    from hwnas.jobs import tuning_to_use
    from hwnas.latency import measure
    from hwnas.search_spaces import get_space

    dev, sp = device(device_name), get_space(space)
    cfg = load_subnet(subnet, sp)
    use = tuning_to_use(dev, sp.name, untuned=untuned)
    mc = _model_config(space, sp, vocab_size)
    rec = measure(device=dev, space=sp, model_config=mc, subnets=[cfg], tuning_dir=use)[0]
    if not rec.result.ok:
        raise typer.Exit(code=_fail(f"measurement failed: {rec.result.error}"))
    r, steps = rec.result, rec.protocol.decode_steps
    enc, dec = r.parts_ms(steps, rec.protocol.passes)
    board = f" on board {r.board}" if r.board else ""
    console.print(f"{dev.name}{board} ({'tuned' if use else 'untuned'}): {rec.latency_ms():.3f} ms = encoder "
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
    from hwnas.latency import server_command

    cmd = server_command(tracker=tracker, key=key, host=host, port=port)
    console.print(f"joining tracker {tracker} as '{key}': {' '.join(cmd[1:])}")
    os.execv(cmd[0], cmd)  # become the server: signals and exit codes reach it directly


@devices_app.command("list")
def devices_list() -> None:
    """Built-in and registered device profiles: shared ones, and users' private ones with their owner."""
    from hwnas.latency import DeviceRegistry

    table = Table("name", "kind", "runtime", "where", "owner", "target")
    for d in DeviceRegistry(db()).list():
        where = {"local": "local", "ray": "Ray node"}.get(d.location) or f"{d.tracker} ({d.rpc_key})"
        table.add_row(d.name, d.kind, d.runtime, where, d.owner or "shared", json.dumps(d.target))
    console.print(table)


@devices_app.command("show")
def devices_show(name: Annotated[str, typer.Argument(help="Device name")]) -> None:
    """A device profile as JSON: target, fingerprint (as probed now), protocol, its revisions (each with its
    fingerprint and how many measurements and predictors belong to it), measurements and predictors."""
    import dataclasses

    from hwnas.latency import DeviceRegistry, list_predictors

    database = db()
    registry = DeviceRegistry(database)
    revisions = [dataclasses.asdict(r) for r in registry.revisions(name)]
    out = {**device(name).to_dict(),
           "current_revision": next((r["number"] for r in revisions if r["current"]), None),
           "revisions": [{k: v for k, v in r.items() if k != "device"} for r in revisions],
           "measurements": registry.measurement_counts(name), "predictors": list_predictors(database, name)}
    typer.echo(json.dumps(out, indent=2, default=str))


@devices_app.command("add")
def devices_add(
    name: Annotated[str, typer.Argument(help="A new device name")],
    kind: Annotated[str, typer.Option(help="cpu, gpu or iot")],
    target: Annotated[str, typer.Option(help='TVM target as JSON, e.g. {"kind": "llvm", "mcpu": "znver4"}')],
    runtime: Annotated[str, typer.Option(help="tvm, torch or onnxruntime (this machine's CPU only)")] = "tvm",
    tracker: Annotated[str | None, typer.Option(help="HOST:PORT of the RPC tracker (remote devices)")] = None,
    key: Annotated[str | None, typer.Option(help="RPC device key (remote devices)")] = None,
    ray_node: Annotated[bool, typer.Option(
        "--ray-node", help="Measured on the Ray node dedicated to it: one started with --num-cpus 0 --resources "
                           "'{\"hwnas_device:NAME\": 1}' (see the README's cluster section)")] = False,
    timed_runs: Annotated[int, typer.Option(min=20, help="Timed runs per measurement")] = 100,
    passes: Annotated[int, typer.Option(min=1, help="Split the timed runs into this many passes, interleaved "
                                                    "across a batch's subnets; latency = the fastest pass")] = 1,
) -> None:
    """Register a device; remote ones join a tracker with `hwnas devices serve`, Ray nodes the cluster."""
    from hwnas.exceptions import MeasurementError
    from hwnas.kernels import check_target
    from hwnas.latency import DeviceProfile, DeviceRegistry, measure_config

    try:
        target_dict = json.loads(target)
    except json.JSONDecodeError as e:
        raise MeasurementError(f"--target is not valid JSON: {e}") from e
    if ray_node and (tracker or key):
        raise MeasurementError(f"device '{name}': --ray-node and --tracker/--key exclude each other (a device is "
                               f"measured on its Ray node or through an RPC tracker)")
    profile = DeviceProfile(name=name, kind=kind, target=target_dict, runtime=runtime,
                            location="rpc" if tracker or key else "ray" if ray_node else "local", tracker=tracker,
                            rpc_key=key,
                            protocol=measure_config(timed_runs=timed_runs, passes=passes))
    check_target(target_dict, compiler_options=True)  # now, not at the first measurement; operators' CLI
    DeviceRegistry(db()).add(profile)
    console.print(f"added device '{name}'")
    if ray_node:
        from hwnas.latency import ray_node_command

        console.print(f"dedicate a node of the cluster to it: {ray_node_command(name)}")


@devices_app.command("remove")
def devices_remove(name: Annotated[str, typer.Argument(help="Device name")]) -> None:
    """Remove a registered device with its measurements and predictors."""
    from hwnas.latency import DeviceRegistry

    DeviceRegistry(db()).remove(name)
    console.print(f"removed device '{name}'")


@latency_app.command("collect")
def latency_collect(
    device_name: DeviceOpt = "local-cpu",
    space: SpaceOpt = "quickstart",
    n: Annotated[int, typer.Option("-n", min=1, help="Distinct subnets to have measured")] = 2000,
    seed: int = 0,
    untuned: Annotated[bool, typer.Option(help="Ignore the device's tuning database")] = False,
    vocab_size: Annotated[int | None, typer.Option(min=8)] = None,
    workers: Annotated[int, typer.Option(min=1, help="Parallel builds")] = 2,
) -> None:
    """Measure n random subnets into the database; resumable, skips what is already measured."""
    from hwnas.jobs import measure_subnets, tuning_to_use
    from hwnas.search_spaces import get_space

    dev, sp = device(device_name), get_space(space)
    use = tuning_to_use(dev, sp.name, untuned=untuned)
    mc = _model_config(space, sp, vocab_size)
    report = measure_subnets(db(), device=dev, space=sp, model_config=mc, n=n, seed=seed, untuned=untuned,
                             build_workers=workers)
    console.print(f"{report.measured} measured, {report.failed} failed, {report.skipped} already in the database "
                  f"({'tuned' if use else 'untuned'} kernels)")


@latency_app.command("train")
def latency_train(
    device_name: DeviceOpt = "local-cpu",
    space: SpaceOpt = "quickstart",
    kinds: Annotated[str, typer.Option(help="Comma-separated predictor kinds")] = "layerwise,hat-mlp",
    test_fraction: Annotated[float, typer.Option(min=0.05, max=0.9)] = 0.2,
    constraint_ms: Annotated[float | None, typer.Option(help="Report the error near this latency")] = None,
    seed: int = 0,
    untuned: Annotated[bool, typer.Option(help="Train on measurements of untuned kernels")] = False,
    vocab_size: Annotated[int | None, typer.Option(min=8, help="The model's vocabulary (as measured)")] = None,
) -> None:
    """Train predictors on the measurements of the device's current revision (of this space, model and tuning
    database); report held-out accuracy; store new versions."""
    from hwnas.jobs import fit_predictors
    from hwnas.search_spaces import get_space

    dev, sp = device(device_name), get_space(space)
    mc = _model_config(space, sp, vocab_size)
    results = fit_predictors(db(), device=dev, space=sp, model_config=mc, kinds=kinds.split(","), untuned=untuned,
                             test_fraction=test_fraction, constraint_ms=constraint_ms, seed=seed)
    if results:
        console.print(f"{dev.name} revision {results[0]['revision']}, space {sp.name}")
    table = Table("predictor", "version", "train/test", "RMSE ms", "MAPE %", "within 5%", "within 10%", "Spearman",
                  "Kendall")
    for r in results:
        m = r["metrics"]
        table.add_row(r["kind"], str(r["version"]), f"{r['train']}/{r['test']}", f"{m['rmse_ms']:.3f}",
                      f"{100 * m['mape']:.2f}", f"{100 * m['within_5pct']:.1f}%", f"{100 * m['within_10pct']:.1f}%",
                      f"{m['spearman']:.3f}", f"{m['kendall']:.3f}")
    console.print(table)


@latency_app.command("predict")
def latency_predict(
    device_name: DeviceOpt = "local-cpu",
    space: SpaceOpt = "quickstart",
    subnet: Annotated[str, typer.Option(help="Subnet JSON file, or 'largest' / 'smallest'")] = "largest",
    kind: Annotated[str | None, typer.Option(help="Predictor kind (default: the newest of any kind)")] = None,
    version: Annotated[int | None, typer.Option(min=1, help="Predictor version (with --kind)")] = None,
    revision: Annotated[int | None, typer.Option(min=1, help="Device revision (default: as probed now)")] = None,
    untuned: Annotated[bool, typer.Option(help="The predictor of untuned kernels")] = False,
    vocab_size: Annotated[int | None, typer.Option(min=8, help="The model's vocabulary (as measured)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Predict a subnet's latency on a device, with the predictor's version, the device revision and the
    predictor's held-out error bar."""
    from hwnas.jobs import predict_latency
    from hwnas.search_spaces import get_space

    dev, sp = device(device_name), get_space(space)
    cfg = load_subnet(subnet, sp)
    mc = _model_config(space, sp, vocab_size)
    p = predict_latency(db(), device=dev, space=sp, model_config=mc, subnet=cfg, kind=kind, version=version,
                        revision=revision, untuned=untuned)
    if as_json:
        typer.echo(json.dumps(p.to_dict(), indent=2))
        return
    console.print(f"{p.latency_ms:.3f} ms +- {p.error_ms:.3f} ms (held-out MAPE {100 * p.mape:.1f}%, "
                  f"{100 * p.within_10pct:.0f}% within 10%) on {p.device} rev {p.revision}, space {p.space}: "
                  f"{p.kind} predictor v{p.version}")


def _model_config(space: str, sp: SearchSpace, vocab_size: int | None) -> ModelConfig:
    """The model the subnets of `space` (as named on the command line, loaded as `sp`) are measured as from the
    CLI: the space's widths, and `--vocab-size` or the space's usual vocabulary (the output layer is part of the
    latency)."""
    from hwnas.jobs import default_vocab_size
    from hwnas.supernet import ModelConfig

    return ModelConfig(vocab_size=vocab_size or default_vocab_size(space), qkv_dim=sp.qkv_dim)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
