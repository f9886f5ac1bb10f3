"""Supernet checkpoints: everything needed to resume exactly or to evaluate, written atomically."""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from hwnas.exceptions import CheckpointError
from hwnas.search_spaces import SearchSpace
from hwnas.supernet._data import load_tokenizer
from hwnas.supernet._model import ModelConfig
from hwnas.supernet._super import SuperTransformer
from tokenizers import Tokenizer

FORMAT = "hwnas-supernet/1"


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(tmp_path)`, then rename over `path`: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict; any unreadable or foreign file is one `CheckpointError`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{p}' is corrupt or not a checkpoint: {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint '{p}' is not an hwnas supernet checkpoint ({FORMAT})")
    return state


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
    try:
        space = SearchSpace.from_dict(state["space"])
        model = SuperTransformer(space, ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        tok = load_tokenizer(state["tokenizer"])
    except Exception as e:  # boundary: whatever is wrong inside, the user hears one line about the file
        raise CheckpointError(f"checkpoint '{path}' does not hold a usable supernet: {str(e).splitlines()[0]}") from e
    return LoadedSupernet(model.eval(), tok, state["data"], int(state["step"]), Path(path))
