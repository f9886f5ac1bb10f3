"""`hwnas spaces ...` and `hwnas supernet ...`: search spaces; train, register, list, evaluate and extract supernets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hwnas.cli._common import console, db, load_subnet, settings

spaces_app = typer.Typer(no_args_is_help=True, help="Shipped and user search spaces.")
supernet_app = typer.Typer(no_args_is_help=True, help="Train, register and evaluate weight-sharing SuperTransformers.")
data_app = typer.Typer(no_args_is_help=True, help="Parallel text: tokenize a corpus once for training at scale.")


def _checkpoint(path: Path | None, space: str = "quickstart") -> Path:
    """`path`, else the newest supernet registered for `space`."""
    from hwnas.jobs import get_supernet

    return path or Path(get_supernet(db(), space=space).path)


# -- spaces ------------------------------------------------------------------------------
@spaces_app.command("list")
def spaces_list() -> None:
    """List the shipped search spaces."""
    from hwnas.search_spaces import get_space, list_spaces

    table = Table("name", "subnets", "genes", "description")
    for name in list_spaces():
        space = get_space(name)
        table.add_row(name, f"{space.size():.3g}", str(len(space.genes())), space.description)
    console.print(table)


@spaces_app.command("show")
def spaces_show(name: Annotated[str, typer.Argument(help="A shipped space, or a .json file")]) -> None:
    """Print a space's choices (JSON), its size and its largest and smallest subnets."""
    from hwnas.search_spaces import get_space

    space = get_space(name)
    out = {**space.to_dict(), "size": space.size(), "genes": len(space.genes()),
           "largest": space.largest().to_dict(), "smallest": space.smallest().to_dict()}
    typer.echo(json.dumps(out, indent=2))


# -- supernet ----------------------------------------------------------------------------
Opt = typer.Option
Device = Annotated[str, Opt(help="auto (CUDA when present), cpu or cuda; data-parallel workers use what Ray "
                                 "gives them")]
Precision = Annotated[str | None, Opt(help="fp32, bf16 or fp16 (autocast; fp16 with loss scaling, CUDA only)")]
Workers = Annotated[int, Opt(min=1, help="Data-parallel workers on Ray Train (1: this process)")]
GpusPerWorker = Annotated[float, Opt(min=0.0, help="GPUs per data-parallel worker (NCCL); 0 trains on CPUs (gloo)")]
CpusPerWorker = Annotated[float | None, Opt(min=0.0, help="CPUs per worker (default: the cluster's CPUs / "
                                                              "workers)")]
Address = Annotated[str | None, Opt(help="Ray cluster to train on (default: $HWNAS_RAY_ADDRESS, else a local "
                                         "Ray)")]


@supernet_app.command("train")
def supernet_train(
    space: Annotated[str, Opt(help="Search space name or .json file")] = "quickstart",
    data: Annotated[str, Opt(help="'bible:SRC-TGT', 'files:DIR:SRC-TGT' or 'prepared:DIR' (hwnas data "
                                  "prepare)")] = "bible:de-en",
    out: Annotated[Path | None, Opt(help="Output directory (default: under $HWNAS_HOME)")] = None,
    recipe: Annotated[str | None, Opt(help="HAT's hyper-parameters for a shipped space (wmt14.en-de, "
                                           "wmt14.en-fr, wmt19.en-de, iwslt14.de-en, quickstart); options "
                                           "below override it")] = None,
    steps: Annotated[int | None, Opt(min=1, help="Updates (default 1200)")] = None,
    max_tokens: Annotated[int | None, Opt(min=64, help="Padded tokens per batch and worker (default 2048)")] = None,
    update_freq: Annotated[int | None, Opt(min=1, help="Batches per update and worker (gradient "
                                                       "accumulation) (default 1)")] = None,
    lr: Annotated[float | None, Opt(min=0.0, help="Peak learning rate (default 0.002)")] = None,
    schedule: Annotated[str | None, Opt(help="inverse_sqrt or cosine (default inverse_sqrt)")] = None,
    warmup: Annotated[int | None, Opt(min=0, help="Warmup updates (default 200)")] = None,
    dropout: Annotated[float | None, Opt(min=0.0, max=0.99)] = None,
    vocab_size: Annotated[int | None, Opt(min=100, help="Of the BPE trained at the start (default 4000)")] = None,
    precision: Precision = None,
    sandwich: Annotated[bool | None, Opt("--sandwich/--no-sandwich",
                                         help="Also train largest and smallest every update")] = None,
    seed: int | None = None,
    device: Device = "auto",
    workers: Workers = 1,
    gpus_per_worker: GpusPerWorker = 0.0,
    cpus_per_worker: CpusPerWorker = None,
    address: Address = None,
    resume: Annotated[bool, Opt(help="Continue from the checkpoint in OUT")] = True,
    threads: Annotated[int | None, Opt(min=1, help="Torch CPU threads (one process)")] = None,
) -> None:
    """Train a SuperTransformer on real parallel text, one sampled subnet per update, on a CPU, a GPU or
    data-parallel on Ray Train."""
    import torch

    from hwnas.jobs import register_supernet
    from hwnas.search_spaces import get_space
    from hwnas.supernet import DataSpec, TrainConfig, get_recipe, train_supernet

    if threads:
        torch.set_num_threads(threads)
    space_obj = get_space(space)
    spec = DataSpec.parse(data)
    out = out or settings().supernet_dir(space, str(spec))
    overrides: dict[str, Any] = dict(  # None: not given, the recipe's (or the default) value stays
        steps=steps, max_tokens=max_tokens, update_freq=update_freq, lr=lr, schedule=schedule, warmup_steps=warmup,
        dropout=dropout, vocab_size=vocab_size, precision=precision, sandwich=sandwich, seed=seed)
    if recipe:
        cfg = get_recipe(recipe, space_obj.name).config(workers=workers, **overrides)
    else:
        cfg = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    if spec.kind == "prepared":
        from hwnas.supernet import PreparedData

        vocab = PreparedData.open(spec.directory or ".", verify=False).meta["vocab_size"]
        console.print(f"vocabulary: {vocab} (the prepared data's tokenizer)")
    result = train_supernet(space=space_obj, data=spec, out=out, config=cfg, resume=resume, device=device,
                            workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                            address=address)
    registered = register_supernet(db(), result.checkpoint)
    console.print(f"checkpoint: {result.checkpoint}  step {result.step}  train loss {result.train_loss:.3f}  "
                  f"{result.tokens_per_s:.0f} tokens/s  {result.seconds_per_step:.3f} s/step  "
                  f"({result.workers} worker(s), {result.device}, {result.precision}; "
                  f"registered as supernet {registered.id})")


@supernet_app.command("eval")
def supernet_eval(
    subnet: Annotated[str, typer.Option(help="Subnet JSON file, or 'largest' / 'smallest'")] = "largest",
    checkpoint: Annotated[Path | None, typer.Option(help="Supernet checkpoint (default: the newest registered "
                                                          "for the quickstart space)")] = None,
    split: Annotated[str, typer.Option(help="valid or test")] = "valid",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N sentences")] = None,
    beam: Annotated[int, typer.Option(min=1)] = 4,
    bleu: Annotated[bool, typer.Option(help="Also decode and score BLEU")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Valid loss and BLEU of a subnet with weights inherited from the supernet."""
    from hwnas.supernet import DataSpec, evaluate_subnet, load_supernet

    ckpt = _checkpoint(checkpoint)
    loaded = load_supernet(ckpt)
    cfg = load_subnet(subnet, loaded.model.space)
    corpus = DataSpec.parse(loaded.data).load(split)
    if limit:
        corpus = corpus.head(limit)
    r = evaluate_subnet(loaded, cfg, corpus, with_bleu=bleu, beam=beam)
    if as_json:
        typer.echo(json.dumps({"subnet": cfg.to_dict(), "split": r.split, "sentences": r.sentences,
                               "valid_loss": r.valid_loss, "bleu": r.bleu, "params": r.params,
                               "params_no_embed": r.params_no_embed, "checkpoint": str(ckpt)}))
        return
    bleu_text = f"  BLEU {r.bleu:.2f}" if r.bleu is not None else ""
    console.print(f"{r.split} ({r.sentences} sentences): loss {r.valid_loss:.4f}{bleu_text}  "
                  f"params {r.params / 1e6:.2f}M ({r.params_no_embed / 1e6:.2f}M without embeddings)")


@supernet_app.command("extract")
def supernet_extract(
    out: Annotated[Path, typer.Option(help="Where to write the standalone model (.pt)")],
    subnet: Annotated[str, typer.Option(help="Subnet JSON file, or 'largest' / 'smallest'")] = "largest",
    checkpoint: Annotated[Path | None, typer.Option(help="Supernet checkpoint (default: the newest registered "
                                                          "for the quickstart space)")] = None,
) -> None:
    """Write one subnet as a standalone SubTransformer: its own weights, config and tokenizer."""
    from hwnas.supernet import load_supernet, save_subtransformer

    loaded = load_supernet(_checkpoint(checkpoint))
    model = loaded.model.extract_subnet(load_subnet(subnet, loaded.model.space))
    save_subtransformer(out, model, loaded.tokenizer,
                        provenance={"weights": "inherited", "steps": loaded.step, "supernet": str(loaded.path)})
    params = sum(p.numel() for p in model.parameters())
    console.print(f"wrote {out}: {params / 1e6:.2f}M parameters (the supernet has "
                  f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.2f}M)")


@supernet_app.command("register")
def supernet_register(checkpoint: Annotated[Path, typer.Argument(help="A supernet checkpoint (.pt)")]) -> None:
    """Register a checkpoint trained elsewhere, so search jobs of its space can find it."""
    from hwnas.jobs import register_supernet

    info = register_supernet(db(), checkpoint)
    console.print(f"supernet {info.id}: {info.space} on {info.data}, step {info.step}, {info.path}")


@supernet_app.command("list")
def supernet_list(space: Annotated[str | None, typer.Option(help="Only this space's")] = None) -> None:
    """Registered supernets, newest first (a search job uses the newest of its space)."""
    from hwnas.jobs import list_supernets

    table = Table("id", "space", "data", "step", "registered (UTC)", "checkpoint")
    for n in list_supernets(db(), space=space):
        table.add_row(str(n.id), n.space, n.data, str(n.step), f"{n.created_at:%Y-%m-%d %H:%M}", n.path)
    console.print(table)


# -- data --------------------------------------------------------------------------------
@data_app.command("prepare")
def data_prepare(
    out: Annotated[Path, Opt(help="New directory for the prepared data (must not exist)")],
    data: Annotated[str, Opt(help="'bible:SRC-TGT' or 'files:DIR:SRC-TGT'")] = "bible:de-en",
    vocab_size: Annotated[int, Opt(min=100, help="Joint BPE vocabulary (HAT: 32K on WMT)")] = 32000,
) -> None:
    """Tokenize a parallel corpus once into memory-mapped token files that training reads as
    'prepared:OUT'."""
    import resource
    import time

    from rich.progress import Progress, SpinnerColumn, TextColumn

    from hwnas.supernet import DataSpec, prepare_data

    spec = DataSpec.parse(data)
    start = time.perf_counter()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console) as bar:
        task = bar.add_task("training the tokenizer on the train split")

        def progress(split: str, pairs: int) -> None:
            bar.update(task, description=f"encoding {split}: {pairs:,} pairs")

        prepared = prepare_data(spec, out, vocab_size=vocab_size, on_progress=progress)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    splits = ", ".join(f"{k} {v['pairs']:,}" for k, v in prepared.meta["splits"].items())
    console.print(f"wrote {out}: {splits} pairs, vocabulary {prepared.meta['vocab_size']}, "
                  f"{seconds:.1f} s, peak memory {peak_mib:.0f} MiB; train with --data prepared:{out}")
