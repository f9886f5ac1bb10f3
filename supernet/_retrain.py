"""Retraining a found SubTransformer (HAT's step 5): from scratch, or fine-tuned from the weights it inherits
in the supernet; then the last K checkpoints averaged and test BLEU measured (beam search, sacreBLEU).

The result is a standalone model file (`model.pt`, `load_subtransformer` reads it) whose `provenance` says
what its weights are: "inherited" (from the supernet, untrained), "fine-tuned" or "retrained" (from scratch),
after how many updates, averaged over how many checkpoints, with which test BLEU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hwnas.exceptions import CheckpointError, TrainingError
from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet._checkpoint import load_supernet, read_checkpoint, save_subtransformer
from hwnas.supernet._data import DataSpec, load_tokenizer
from hwnas.supernet._evaluate import bleu, corpus_loss, translate
from hwnas.supernet._model import ModelConfig, SubTransformer
from hwnas.supernet._train import TrainConfig, TrainTask, run

INITS = ("scratch", "inherited")
MODEL_FILE = "model.pt"


@dataclasses.dataclass(frozen=True)
class RetrainResult:
    model: Path  # the standalone SubTransformer file
    weights: str  # "retrained" (from scratch) or "fine-tuned" (from inherited weights)
    steps: int
    averaged: int  # checkpoints averaged into the model
    test_bleu: float | None
    test_loss: float | None
    test_sentences: int
    params: int
    tokens_per_s: float

    def provenance(self) -> dict[str, Any]:
        return {"weights": self.weights, "steps": self.steps, "averaged_checkpoints": self.averaged,
                "test_bleu": self.test_bleu, "test_loss": self.test_loss, "test_sentences": self.test_sentences}


def average_weights(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of state dicts (fairseq's average_checkpoints), accumulated in fp64."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    for p in paths:
        state = torch.load(p, map_location="cpu", weights_only=True)
        for k, v in state.items():
            total[k] = total[k] + v.double() if k in total else v.double()
    return {k: (v / len(paths)).float() for k, v in total.items()}


def evaluate_model(model: SubTransformer, tokenizer: Any, corpus: Any, *, beam: int) -> tuple[float, float]:
    """(test loss, test BLEU) of a standalone model."""
    model.eval()
    loss = corpus_loss(model, tokenizer, corpus)
    hyps = translate(model, tokenizer, list(corpus.source), beam=beam)
    return loss, bleu(hyps, list(corpus.target))


def train_subtransformer(
    *,
    supernet: str | Path,
    subnet: SubnetConfig,
    out: Path,
    config: TrainConfig,
    init: str = "scratch",
    average_last: int = 1,
    data: DataSpec | None = None,
    device: str = "cpu",
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    address: str | None = None,
    resume: bool = True,
    progress: bool = True,
    beam: int = 4,
    test_limit: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> RetrainResult:
    """Train `subnet` of the supernet checkpoint `supernet` on its data (or `data`, with its tokenizer), average
    the last `average_last` checkpoints into `out/model.pt` and score it on the test split (the first
    `test_limit` sentences; 0 skips the test)."""
    if init not in INITS:
        raise TrainingError(f"unknown init '{init}' (known: {', '.join(INITS)})")
    if average_last < 1:
        raise TrainingError(f"average_last must be at least 1, got {average_last}")
    state = read_checkpoint(supernet)
    space = SearchSpace.from_dict(state["space"])
    space.validate(subnet)
    spec = data or DataSpec.parse(state["data"])
    config = dataclasses.replace(config, keep_checkpoints=max(config.keep_checkpoints, average_last),
                                 checkpoint_every=min(config.checkpoint_every, config.steps))
    if average_last > 1 and config.steps // config.checkpoint_every < average_last:
        raise TrainingError(f"averaging the last {average_last} checkpoints needs at least {average_last} of them: "
                            f"{config.steps} updates with a checkpoint every {config.checkpoint_every} give "
                            f"{config.steps // config.checkpoint_every} (lower --checkpoint-every)")
    task = TrainTask("subtransformer", space.to_dict(), str(spec), str(out), config, str(state["tokenizer"]),
                     subnet.to_dict(), str(Path(supernet).resolve()) if init == "inherited" else None, workers)
    trained = run(task, device=device, resume=resume, progress=progress, gpus_per_worker=gpus_per_worker,
                  cpus_per_worker=cpus_per_worker, address=address, on_step=on_step)

    final = read_checkpoint(trained.checkpoint)
    kept = sorted(out.glob("weights-*.pt"))[-average_last:]
    weights = average_weights(kept) if average_last > 1 else final["model"]
    model = SubTransformer(subnet, ModelConfig(**final["model_config"]))
    model.load_state_dict(weights)
    tok = load_tokenizer(final["tokenizer"])
    loss = score = None
    sentences = 0
    if test_limit != 0:
        corpus = spec.load("test")
        corpus = corpus.head(test_limit) if test_limit else corpus
        loss, score = evaluate_model(model, tok, corpus, beam=beam)
        sentences = len(corpus)
    result = RetrainResult(out / MODEL_FILE, "fine-tuned" if init == "inherited" else "retrained", trained.step,
                           len(kept) if average_last > 1 else 1, score, loss, sentences,
                           sum(p.numel() for p in model.parameters()), trained.tokens_per_s)
    save_subtransformer(result.model, model, tok, provenance=result.provenance())
    return result


def inherited_provenance(supernet: str | Path, subnet: SubnetConfig, *, beam: int = 4,
                         test_limit: int | None = None) -> tuple[SubTransformer, Any, dict[str, Any]]:
    """The subnet with its inherited weights, and their provenance (test BLEU at the supernet's step)."""
    loaded = load_supernet(supernet)
    model = loaded.model.extract_subnet(subnet).eval()
    corpus = DataSpec.parse(loaded.data).load("test")
    corpus = corpus.head(test_limit) if test_limit else corpus
    loss, score = evaluate_model(model, loaded.tokenizer, corpus, beam=beam)
    return model, loaded.tokenizer, {"weights": "inherited", "steps": loaded.step, "averaged_checkpoints": 1,
                                     "test_bleu": score, "test_loss": loss, "test_sentences": len(corpus)}
