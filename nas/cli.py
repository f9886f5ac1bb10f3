"""The `hwnas` command line. Errors from hwnas reach the user as one line and exit code 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from platformdirs import user_data_dir
from rich.console import Console
from rich.table import Table

from hwnas.exceptions import HwnasError, SearchSpaceError

if TYPE_CHECKING:  # heavy imports (torch) wait until a command needs them
    from hwnas.search_spaces import SearchSpace, SubnetConfig

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Hardware-aware neural architecture search for Transformers (HAT).")
spaces_app = typer.Typer(no_args_is_help=True, help="Shipped and user search spaces.")
supernet_app = typer.Typer(no_args_is_help=True, help="Train and evaluate weight-sharing SuperTransformers.")
app.add_typer(spaces_app, name="spaces")
app.add_typer(supernet_app, name="supernet")
console = Console()


def home() -> Path:
    """Where hwnas keeps its data: $HWNAS_HOME, else the user's data directory."""
    return Path(os.environ.get("HWNAS_HOME") or user_data_dir("hwnas"))


def default_supernet_dir(space: str, data: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in f"{Path(space).stem}-{data}")
    return home() / "supernets" / safe


def default_checkpoint(space: str = "quickstart") -> Path:
    """The checkpoint `hwnas supernet train --space SPACE` writes with its other defaults."""
    from hwnas.supernet import DataSpec

    return default_supernet_dir(space, str(DataSpec.parse("bible:de-en"))) / "checkpoint.pt"


def _load_subnet(spec: str, space: SearchSpace) -> SubnetConfig:
    """A subnet from a JSON file, or the space's 'largest' / 'smallest'; checked against the space."""
    from hwnas.search_spaces import SubnetConfig

    if spec in ("largest", "smallest"):
        return space.largest() if spec == "largest" else space.smallest()
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SearchSpaceError(f"subnet file '{path}' cannot be read: {getattr(e, 'strerror', None) or e}") from e
    try:
        return space.validate(SubnetConfig.from_json(text))
    except SearchSpaceError as e:
        raise SearchSpaceError(f"subnet file '{path}': {e}") from e


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

    from hwnas.search_spaces import get_space
    from hwnas.supernet import DataSpec, TrainConfig, train_supernet

    if threads:
        torch.set_num_threads(threads)
    space_obj = get_space(space)
    spec = DataSpec.parse(data)
    out = out or default_supernet_dir(space, str(spec))
    cfg = TrainConfig(steps=steps, max_tokens=max_tokens, lr=lr, warmup_steps=warmup, vocab_size=vocab_size,
                      sandwich=sandwich, seed=seed)
    result = train_supernet(space=space_obj, data=spec, out=out, config=cfg, resume=resume)
    console.print(f"checkpoint: {result.checkpoint}  step {result.step}  train loss {result.train_loss:.3f}  "
                  f"{result.tokens_per_s:.0f} tokens/s  {result.seconds_per_step:.3f} s/step")


@supernet_app.command("eval")
def supernet_eval(
    subnet: Annotated[str, typer.Option(help="Subnet JSON file, or 'largest' / 'smallest'")] = "largest",
    checkpoint: Annotated[Path | None, typer.Option(help="Supernet checkpoint")] = None,
    split: Annotated[str, typer.Option(help="valid or test")] = "valid",
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N sentences")] = None,
    beam: Annotated[int, typer.Option(min=1)] = 4,
    bleu: Annotated[bool, typer.Option(help="Also decode and score BLEU")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Valid loss and BLEU of a subnet with weights inherited from the supernet."""
    from hwnas.supernet import DataSpec, evaluate_subnet, load_supernet

    ckpt = checkpoint or default_checkpoint()
    loaded = load_supernet(ckpt)
    cfg = _load_subnet(subnet, loaded.model.space)
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
    checkpoint: Annotated[Path | None, typer.Option(help="Supernet checkpoint")] = None,
) -> None:
    """Write one subnet as a standalone SubTransformer: its own weights, config and tokenizer."""
    from hwnas.supernet import load_supernet, save_subtransformer

    loaded = load_supernet(checkpoint or default_checkpoint())
    model = loaded.model.extract_subnet(_load_subnet(subnet, loaded.model.space))
    save_subtransformer(out, model, loaded.tokenizer)
    params = sum(p.numel() for p in model.parameters())
    console.print(f"wrote {out}: {params / 1e6:.2f}M parameters (the supernet has "
                  f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.2f}M)")


def _register_subcommands() -> None:
    from hwnas._cli_latency import devices_app, kernels_app, latency_app
    from hwnas._cli_quickstart import quickstart_command
    from hwnas._cli_search import export_command, search_app
    from hwnas._cli_service import serve_command, tokens_app, users_app

    app.add_typer(devices_app, name="devices")
    app.add_typer(kernels_app, name="kernels")
    app.add_typer(latency_app, name="latency")
    app.add_typer(search_app, name="search")
    app.command("export")(export_command)
    app.command("quickstart")(quickstart_command)
    app.command("serve")(serve_command)
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")


_register_subcommands()


def main() -> None:
    try:
        app()
    except HwnasError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
