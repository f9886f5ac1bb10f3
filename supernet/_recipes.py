"""HAT's training recipes for the shipped spaces (../shared/reference/hat.md §4.2 and §7), as `TrainConfig`s.

A recipe fixes what HAT fixed: batch size in tokens per update, schedule, warmup, regularisation and length;
the user may override any value. Precision is left to the user: HAT trained WMT in fp16 on V100s; bf16 is the
safe choice on newer GPUs, and on CPUs only with AVX512-BF16 or AMX (others emulate it, many times slower than
fp32: bench/training.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hwnas.exceptions import TrainingError
from hwnas.supernet._train import TrainConfig

# fairseq's update-freq rule in HAT's README: 128 batches of 4096 tokens per update, split over the workers
HAT_BATCHES_PER_UPDATE = 128

_WMT: dict[str, Any] = {
    "max_tokens": 4096, "steps": 40_000, "lr": 1e-3, "schedule": "cosine", "warmup_steps": 10_000,
    "warmup_init_lr": 1e-7, "min_lr": 1e-7, "clip_norm": 0.0, "label_smoothing": 0.1, "weight_decay": 0.0,
    "dropout": 0.3, "attention_dropout": 0.1, "vocab_size": 32_000, "max_len": 256, "checkpoint_every": 1000,
}
_IWSLT: dict[str, Any] = {
    "max_tokens": 4096, "steps": 50_000, "lr": 5e-4, "schedule": "inverse_sqrt", "warmup_steps": 10_000,
    "warmup_init_lr": 1e-7, "clip_norm": 0.0, "label_smoothing": 0.1, "weight_decay": 1e-4,
    "dropout": 0.375, "attention_dropout": 0.1, "vocab_size": 10_000, "max_len": 256, "checkpoint_every": 1000,
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One space's training hyper-parameters, for the supernet and for retraining a found subnet."""

    name: str
    space: str
    supernet: dict[str, Any]
    subnet: dict[str, Any]  # changes from `supernet` when a found SubTransformer is retrained
    batches_per_update: int | None = None  # over all workers (update_freq = this / workers); None: update_freq 1
    average_last: int = 1  # checkpoints averaged after retraining (HAT: the last 10 on IWSLT)

    def config(self, *, workers: int = 1, subnet: bool = False, **overrides: Any) -> TrainConfig:
        """The recipe's `TrainConfig` for `workers` data-parallel workers, with `overrides` (None = keep)."""
        values = {**self.supernet, **(self.subnet if subnet else {})}
        if self.batches_per_update:
            values["update_freq"] = max(1, self.batches_per_update // workers)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if subnet:
            values.setdefault("keep_checkpoints", self.average_last)
        return TrainConfig(**values)


RECIPES: dict[str, Recipe] = {
    "quickstart": Recipe("quickstart", "quickstart", {}, {"warmup_steps": 100}),
    **{name: Recipe(name, name, _WMT, {"warmup_steps": 4000}, HAT_BATCHES_PER_UPDATE)
       for name in ("wmt14.en-de", "wmt14.en-fr", "wmt19.en-de")},
    "iwslt14.de-en": Recipe("iwslt14.de-en", "iwslt14.de-en", _IWSLT, {"warmup_steps": 4000}, average_last=10),
}


def get_recipe(name: str, space: str) -> Recipe:
    """Recipe `name`, which must be for `space` (a WMT recipe on the quickstart space is a mistake, not a start)."""
    if name not in RECIPES:
        raise TrainingError(f"unknown recipe '{name}' (known: {', '.join(RECIPES)})")
    recipe = RECIPES[name]
    if recipe.space != space:
        raise TrainingError(f"recipe '{name}' is for space '{recipe.space}', not '{space}'")
    return recipe
