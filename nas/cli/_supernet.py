"""`hwnas spaces ...` and `hwnas supernet ...`: search spaces; train, register, list, evaluate and extract supernets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hwnas.cli._common import console, db, load_subnet, settings

spaces_app = typer.Typer(no_args_is_help=True, help="Shipped and user search spaces.")
supernet_app = typer.Typer(no_args_is_help=True, help="Train, register and evaluate weight-sharing SuperTransformers.")


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
@supernet_app.command("train")
def supernet_train(
    space: Annotated[str, typer.Option(help="Search space name or .json file")] = "quickstart",
    data: Annotated[str, typer.Option(help="'bible:SRC-TGT' or 'files:DIR:SRC-TGT'")] = "bible:de-en",
    out: Annotated[Path | None, typer.Option(help="Output directory (default: under $HWNAS_HOME)")] = None,
    steps: Annotated[int, typer.Option(min=1)] = 1200,
    max_tokens: Annotated[int, typer.Option(min=64, help="Padded tokens per batch")] = 2048,
    lr: Annotated[float, typer.Option(min=0.0)] = 2e-3,
    warmup: Annotated[int, typer.Option(min=0)] = 200,
    vocab_size: Annotated[int, typer.Option(min=100)] = 4000,
    sandwich: Annotated[bool, typer.Option(help="Also train largest and smallest every step")] = False,
    seed: int = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in OUT")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch CPU threads")] = None,
) -> None:
    """Train a SuperTransformer on real parallel text, one sampled subnet per step."""
    import torch

    from hwnas.jobs import register_supernet
    from hwnas.search_spaces import get_space
    from hwnas.supernet import DataSpec, TrainConfig, train_supernet

    if threads:
        torch.set_num_threads(threads)
    space_obj = get_space(space)
    spec = DataSpec.parse(data)
    out = out or settings().supernet_dir(space, str(spec))
    cfg = TrainConfig(steps=steps, max_tokens=max_tokens, lr=lr, warmup_steps=warmup, vocab_size=vocab_size,
                      sandwich=sandwich, seed=seed)
    result = train_supernet(space=space_obj, data=spec, out=out, config=cfg, resume=resume)
    registered = register_supernet(db(), result.checkpoint)
    console.print(f"checkpoint: {result.checkpoint}  step {result.step}  train loss {result.train_loss:.3f}  "
                  f"{result.tokens_per_s:.0f} tokens/s  {result.seconds_per_step:.3f} s/step  "
                  f"(registered as supernet {registered.id})")


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
    save_subtransformer(out, model, loaded.tokenizer)
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
