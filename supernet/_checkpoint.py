"""Supernet checkpoints: everything needed to resume exactly or to evaluate, written atomically."""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from hwnas.exceptions import CheckpointError
from hwnas.io import atomic_write
from hwnas.search_spaces import SearchSpace, SubnetConfig
from hwnas.supernet._data import load_tokenizer
from hwnas.supernet._model import ModelConfig, SubTransformer
from hwnas.supernet._super import SuperTransformer

FORMAT = "hwnas-supernet/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def _read_tagged(path: str | Path, fmt: str, what: str, kind: str) -> dict[str, Any]:
    """A torch file holding a dict tagged `format: fmt`; anything else is one `CheckpointError`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} '{p}' does not exist")
    try:
        # mmap: tensors are paged in when used, so reading a checkpoint's metadata (space, config) is cheap
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{what} '{p}' is corrupt or not a {what}: {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise CheckpointError(f"{what} '{p}' is not an hwnas {kind} ({fmt})")
    return state


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict; any unreadable or foreign file is one `CheckpointError`."""
    return _read_tagged(path, FORMAT, "checkpoint", "supernet checkpoint")


@dataclasses.dataclass
class LoadedSupernet:
    """A trained supernet with what it was trained on."""

    model: SuperTransformer
    tokenizer: Tokenizer
    data: str
    step: int
    path: Path


def load_supernet(path: str | Path) -> LoadedSupernet:
    state = read_checkpoint(path)
    if state.get("kind", "supernet") != "supernet":
        raise CheckpointError(f"checkpoint '{path}' is a {state['kind']} training run, not a supernet "
                              f"(its model is written as model.pt beside it)")
    try:
        space = SearchSpace.from_dict(state["space"])
        model = SuperTransformer(space, ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        tok = load_tokenizer(state["tokenizer"])
    except Exception as e:  # boundary: whatever is wrong inside, the user hears one line about the file
        raise CheckpointError(f"checkpoint '{path}' does not hold a usable supernet: {str(e).splitlines()[0]}") from e
    return LoadedSupernet(model.eval(), tok, state["data"], int(state["step"]), Path(path))


SUBNET_FORMAT = "hwnas-subtransformer/1"


def save_subtransformer(path: Path, model: SubTransformer, tokenizer: Tokenizer, *,
                        provenance: dict[str, Any] | None = None) -> None:
    """A standalone SubTransformer file: its own weights only, config and tokenizer (no supernet), and what
    its weights are (`provenance`: inherited, fine-tuned or retrained, steps, test BLEU), when known."""
    state = {"format": SUBNET_FORMAT, "subnet": model.cfg.to_dict(), "model_config": dataclasses.asdict(model.mc),
             "tokenizer": tokenizer.to_str(), "model": model.state_dict(), "provenance": provenance}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_subtransformer(path: str | Path) -> tuple[SubTransformer, Tokenizer]:
    state = _read_tagged(path, SUBNET_FORMAT, "model file", "SubTransformer")
    try:
        model = SubTransformer(SubnetConfig.from_dict(state["subnet"]), ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        return model.eval(), load_tokenizer(state["tokenizer"])
    except Exception as e:  # boundary: one line about the file
        raise CheckpointError(f"model file '{path}' does not hold a usable SubTransformer: "
                              f"{str(e).splitlines()[0]}") from e


def subtransformer_provenance(path: str | Path) -> dict[str, Any] | None:
    """What a model file's weights are (see `save_subtransformer`); None when it was not recorded."""
    prov = _read_tagged(path, SUBNET_FORMAT, "model file", "SubTransformer").get("provenance")
    return dict(prov) if isinstance(prov, dict) else None
