"""The supernet registry: training registers, jobs find their checkpoint through the table, never a near one."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from hwnas.db import Database
from hwnas.exceptions import CheckpointError, InfeasibleConstraintError, NotFoundError, SearchError
from hwnas.jobs import SearchSpec, create_job, get_job, get_supernet, list_supernets, register_supernet
from hwnas.supernet import read_checkpoint
from tests.jobs.test_jobs import budget_ms, checkpoint, space_file, spec  # noqa: F401 - the module's fixtures


def test_register_is_one_row_per_file_kept_current(db: Database, checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    first = register_supernet(db, checkpoint)
    state = read_checkpoint(checkpoint)
    assert (first.space, first.data, first.step) == (state["space"]["name"], state["data"], state["step"])
    assert first.model_config().vocab_size == state["model_config"]["vocab_size"]
    assert register_supernet(db, checkpoint) == first  # the same file again: the same row
    copy = tmp_path / "copy" / "checkpoint.pt"
    copy.parent.mkdir()
    shutil.copy(checkpoint, copy)
    second = register_supernet(db, copy)
    assert second.id != first.id and second.sha256 == first.sha256
    assert [n.id for n in list_supernets(db)] == [second.id, first.id]  # newest first
    assert get_supernet(db, space=first.space) == second and get_supernet(db, id=first.id) == first
    assert list_supernets(db, space="quickstart") == []


def test_missing_supernets_are_named_never_replaced(db: Database, checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(NotFoundError, match="no supernet registered for space 'quickstart'.*hwnas supernet train"):
        get_supernet(db, space="quickstart")
    with pytest.raises(NotFoundError, match="no registered supernet 99"):
        get_supernet(db, id=99)
    with pytest.raises(CheckpointError):
        register_supernet(db, tmp_path / "nothing.pt")
    older = register_supernet(db, checkpoint)
    gone = tmp_path / "gone.pt"
    shutil.copy(checkpoint, gone)
    newest = register_supernet(db, gone)
    gone.unlink()
    with pytest.raises(CheckpointError, match=f"registered supernet {newest.id} .* is missing its checkpoint"):
        get_supernet(db, space=older.space)  # the older one is there, but it is not the newest: no silent fallback


def test_a_job_without_a_path_uses_the_newest_registered_supernet(db: Database, checkpoint: Path,  # noqa: F811
                                                                 spec: Callable[..., SearchSpec]) -> None:  # noqa: F811
    with pytest.raises(NotFoundError, match="no supernet registered for space 'tiny-test-space'"):
        create_job(db, spec(supernet=""))
    with pytest.raises(InfeasibleConstraintError):
        create_job(db, spec(latency_ms=1e-4))  # named by path, but the spec is refused: nothing registered
    assert list_supernets(db) == []
    net = register_supernet(db, checkpoint)
    job = get_job(db, create_job(db, spec(supernet="")))
    assert (job.spec.supernet, job.spec.supernet_id) == (net.path, net.id)
    pinned = get_job(db, create_job(db, spec(supernet="", supernet_id=net.id)))
    assert pinned.spec.supernet_id == net.id
    with pytest.raises(SearchError, match="was trained on space 'tiny-test-space', not 'quickstart'"):
        create_job(db, spec(space="quickstart", supernet=net.path))
