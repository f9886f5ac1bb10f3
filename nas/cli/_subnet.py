"""`hwnas subnet train`: retrain a found SubTransformer (from scratch, HAT) or fine-tune it from its inherited
weights, average the last checkpoints and score test BLEU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hwnas.cli._common import console, db, load_subnet
from hwnas.cli._supernet import Address, CpusPerWorker, Device, GpusPerWorker, Opt, Precision, Workers, _checkpoint

subnet_app = typer.Typer(no_args_is_help=True, help="Retrain the SubTransformers a search found.")


@subnet_app.command("train")
def subnet_train(
    out: Annotated[Path, Opt(help="Output directory: checkpoints, then model.pt (the standalone model)")],
    job: Annotated[int | None, Opt(help="Search job whose candidate to train (with --candidate)")] = None,
    candidate: Annotated[int | None, Opt(help="Candidate id (the first column of `search show`)")] = None,
    subnet: Annotated[str | None, Opt(help="Or: a subnet JSON file, 'largest' or 'smallest' of --checkpoint")] = None,
    checkpoint: Annotated[Path | None, Opt(help="Supernet checkpoint (default: the job's, else the newest "
                                                "registered for the quickstart space)")] = None,
    init: Annotated[str, Opt(help="scratch (HAT: retrain from random weights) or inherited (fine-tune the "
                                  "supernet's weights)")] = "scratch",
    recipe: Annotated[str | None, Opt(help="HAT's retraining hyper-parameters for the supernet's space")] = None,
    steps: Annotated[int | None, Opt(min=1, help="Updates (default 1200)")] = None,
    max_tokens: Annotated[int | None, Opt(min=64, help="Padded tokens per batch and worker (default 2048)")] = None,
    update_freq: Annotated[int | None, Opt(min=1, help="Batches per update and worker (default 1)")] = None,
    lr: Annotated[float | None, Opt(min=0.0, help="Peak learning rate (default 0.002)")] = None,
    warmup: Annotated[int | None, Opt(min=0, help="Warmup updates (default 200)")] = None,
    dropout: Annotated[float | None, Opt(min=0.0, max=0.99)] = None,
    checkpoint_every: Annotated[int | None, Opt(min=1, help="Updates between checkpoints (default 200)")] = None,
    average_last: Annotated[int | None, Opt(min=1, help="Average the last K checkpoints into the model "
                                                        "(default 1; the iwslt14.de-en recipe: 10)")] = None,
    precision: Precision = None,
    seed: int | None = None,
    device: Device = "auto",
    workers: Workers = 1,
    gpus_per_worker: GpusPerWorker = 0.0,
    cpus_per_worker: CpusPerWorker = None,
    address: Address = None,
    beam: Annotated[int, Opt(min=1, help="Beam size of the test translation")] = 4,
    test_limit: Annotated[int | None, Opt(min=0, help="Score only the first N test sentences (0: no test)")] = None,
    resume: Annotated[bool, Opt(help="Continue from the checkpoint in OUT")] = True,
) -> None:
    """Train one subnet as a standalone model, then average its last checkpoints and score test BLEU."""
    from hwnas.exceptions import TrainingError
    from hwnas.search_spaces import SearchSpace
    from hwnas.supernet import RECIPES, TrainConfig, get_recipe, read_checkpoint, train_subtransformer

    if (job is None) != (candidate is None) or (job is None) == (subnet is None):
        raise TrainingError("name the subnet to train: --job with --candidate, or --subnet")
    if job is not None and candidate is not None:
        from hwnas.jobs import candidate_subnet, get_job

        supernet = checkpoint or Path(get_job(db(), job).spec.supernet)
        cfg = candidate_subnet(db(), job, candidate)
    else:
        supernet = _checkpoint(checkpoint)
        cfg = load_subnet(subnet or "", SearchSpace.from_dict(read_checkpoint(supernet)["space"]))
    space = str(read_checkpoint(supernet)["space"]["name"])
    overrides = dict(steps=steps, max_tokens=max_tokens, update_freq=update_freq, lr=lr, warmup_steps=warmup,
                     dropout=dropout, checkpoint_every=checkpoint_every, precision=precision, seed=seed)
    if recipe:
        chosen = get_recipe(recipe, space)
        config = chosen.config(workers=workers, subnet=True, **overrides)
        average = average_last or chosen.average_last
    else:
        base = RECIPES["quickstart"].config(subnet=True) if space == "quickstart" else TrainConfig()
        config = TrainConfig(**{**base.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
        average = average_last or 1
    r = train_subtransformer(supernet=supernet, subnet=cfg, out=out, config=config, init=init, average_last=average,
                             device=device, workers=workers, gpus_per_worker=gpus_per_worker,
                             cpus_per_worker=cpus_per_worker, address=address, resume=resume, beam=beam,
                             test_limit=test_limit)
    bleu = f"test BLEU {r.test_bleu:.2f} ({r.test_sentences} sentences, beam {beam})" if r.test_bleu is not None \
        else "no test"
    console.print(f"wrote {r.model}: {r.weights}, {r.steps} updates, {r.averaged} checkpoint(s) averaged, "
                  f"{r.params / 1e6:.2f}M parameters, {bleu}")
    if job is not None:
        console.print(f"export it: hwnas export {job} --candidate {candidate} --weights {r.model}")
