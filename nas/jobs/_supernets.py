"""Trained supernets, registered in the `supernets` table: jobs find their checkpoint here, not by a path rule."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
from pathlib import Path

from sqlalchemy import select

from hwnas.db import Database, Supernet
from hwnas.exceptions import CheckpointError, NotFoundError
from hwnas.supernet import ModelConfig, read_checkpoint

__all__ = ["SupernetInfo", "get_supernet", "list_supernets", "register_supernet"]


@dataclasses.dataclass(frozen=True)
class SupernetInfo:
    """A registered checkpoint: what it was trained on and how far, where it is, and its file's sha256."""

    id: int
    space: str
    data: str
    path: str
    step: int
    sha256: str
    created_at: dt.datetime

    def model_config(self) -> ModelConfig:
        """The supernet's model config (vocabulary, widths): what its subnets are built, tuned and measured as."""
        return checkpoint_model_config(self.path)


def checkpoint_model_config(path: str | Path) -> ModelConfig:
    """A checkpoint's model config (what its subnets are built, tuned and measured as); read once per file version,
    as jobs ask for it at every predictor and measurement lookup."""
    p = Path(path)
    stat = p.stat() if p.is_file() else None  # a missing file: read_checkpoint says so
    return _model_config(str(p.resolve()), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)


@functools.lru_cache(maxsize=8)
def _model_config(path: str, mtime_ns: int, size: int) -> ModelConfig:
    return ModelConfig(**read_checkpoint(path)["model_config"])


def _info(row: Supernet) -> SupernetInfo:
    return SupernetInfo(row.id, row.space, row.data, row.path, row.step, row.sha256, row.created_at)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def register_supernet(db: Database, checkpoint: str | Path) -> SupernetInfo:
    """Register (or bring up to date) the checkpoint at `checkpoint`: one row per file, newest step kept.

    Raises:
        CheckpointError: the file is missing or is not a supernet checkpoint.
    """
    path = Path(checkpoint).resolve()
    state = read_checkpoint(path)
    space, data, step, sha = str(state["space"]["name"]), str(state["data"]), int(state["step"]), _sha256(path)
    with db.session() as s:
        row = s.scalar(select(Supernet).where(Supernet.path == str(path)).order_by(Supernet.id.desc()).limit(1))
        if row is None:
            row = Supernet(space=space, data=data, path=str(path), step=step, sha256=sha)
            s.add(row)
        else:  # trained further (or over) in place: the row follows its file
            row.space, row.data, row.step, row.sha256 = space, data, step, sha
        s.flush()
        return _info(row)


def list_supernets(db: Database, *, space: str | None = None) -> list[SupernetInfo]:
    """Registered supernets, newest first."""
    q = select(Supernet).order_by(Supernet.id.desc())
    if space is not None:
        q = q.where(Supernet.space == space)
    with db.session() as s:
        return [_info(r) for r in s.scalars(q)]


def get_supernet(db: Database, *, space: str | None = None, id: int | None = None) -> SupernetInfo:
    """Supernet `id`, or the newest registered for `space`; its file must still be there.

    Raises:
        NotFoundError: no such row, or no supernet registered for the space.
        CheckpointError: the registered file is gone (never replaced by an older one silently).
    """
    if id is not None:
        with db.session() as s:
            row = s.get(Supernet, id)
            found = _info(row) if row is not None else None
        if found is None:
            raise NotFoundError(f"no registered supernet {id} (see: hwnas supernet list)")
    else:
        newest = list_supernets(db, space=space)
        if not newest:
            raise NotFoundError(f"no supernet registered for space '{space}' (train one: hwnas supernet train "
                                f"--space {space}; or register a checkpoint: hwnas supernet register PATH)")
        found = newest[0]
    if not Path(found.path).exists():
        raise CheckpointError(f"registered supernet {found.id} ({found.space}) is missing its checkpoint "
                              f"'{found.path}'")
    return found
