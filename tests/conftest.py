"""Shared fixtures. Test stand-ins are named as such: the product never uses them."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hwnas.db import Database
from hwnas.search_spaces import SearchSpace
from hwnas.supernet import ModelConfig, load_bible

TINY_SPACE_DICT = {
    "name": "tiny-test-space",  # a test stand-in: small enough for a train step in milliseconds
    "description": "test stand-in",
    "qkv_dim": 16,
    "source_length_tokens": 12,
    "encoder_embed_dim": [16, 24],
    "encoder_layer_num": [2],
    "encoder_ffn_embed_dim": [32, 48],
    "encoder_self_attention_heads": [2, 4],
    "decoder_embed_dim": [16, 24],
    "decoder_layer_num": [1, 2],
    "decoder_ffn_embed_dim": [32, 48],
    "decoder_self_attention_heads": [2, 4],
    "decoder_ende_attention_heads": [2, 4],
    "decoder_arbitrary_ende_attn": [1, 2],
}


# The tiny space with one head count and one attention span (96 subnets): its covering models have 2 + 2 layers
# instead of 4 + 16, which halves TVM's task extraction for the tests that tune.
NARROW_SPACE_DICT = {**TINY_SPACE_DICT, "encoder_self_attention_heads": [2], "decoder_self_attention_heads": [2],
                     "decoder_ende_attention_heads": [2], "decoder_arbitrary_ende_attn": [1]}


@pytest.fixture(autouse=True)
def _all_cpus() -> Iterator[None]:
    """Every test starts on all the machine's CPUs: TVM pins a thread that configures its pool to one core, and
    the pytest process (and every subprocess or Ray worker it starts later) would otherwise stay there."""
    cpus = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, cpus)


@pytest.fixture(scope="session")
def tiny_space() -> SearchSpace:
    return SearchSpace.from_dict(TINY_SPACE_DICT)


@pytest.fixture(scope="session")
def tiny_mc() -> ModelConfig:
    return ModelConfig(vocab_size=97, qkv_dim=16, dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="session")
def bible_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `files:` data directory holding a small slice of the real Bible corpus (German -> English)."""
    d = tmp_path_factory.mktemp("bible-files")
    for split, n in (("train", 300), ("valid", 24), ("test", 24)):
        corpus = load_bible("de", "en", split).head(n)
        (d / f"{split}.de").write_text("\n".join(corpus.source) + "\n", encoding="utf-8")
        (d / f"{split}.en").write_text("\n".join(corpus.target) + "\n", encoding="utf-8")
    return d


PG_ADMIN_URL = os.environ.get("HWNAS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"hwnas_test_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as e:
        if os.environ.get("CI"):  # CI promises PostgreSQL (.ci/run starts it): its absence is a failure
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {e}")
        pytest.skip("PostgreSQL is not reachable")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


BACKENDS = ["sqlite", "postgresql"]


@contextlib.contextmanager
def open_db(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database on `backend`, emptied afterwards (PostgreSQL's is shared by the session)."""
    from sqlalchemy import text

    from hwnas.db import Base

    url = f"sqlite:///{tmp_path / 'hwnas.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    database = Database(url)
    try:
        yield database
    finally:
        if backend == "postgresql":
            with database.engine.begin() as conn:
                for table in reversed(Base.metadata.sorted_tables):
                    conn.execute(text(f'DELETE FROM "{table.name}"'))
        database.close()


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """Every storage test runs on both backends."""
    with open_db(request.param, request, tmp_path) as database:
        yield database


def store_stand_in_predictor(db: Database, device: str, space: SearchSpace, checkpoint: Path, predictor: Any,
                             metrics: dict[str, Any] | None = None, tuning_dir: str | None = None) -> int:
    """Stores `predictor` (fitted to stand-in timings: test data, named so) as the predictor of `device`'s current
    revision for `space` and `checkpoint`'s model, as `hwnas latency train` would; returns its version."""
    from hwnas.latency import DeviceRegistry, save_predictor
    from hwnas.supernet import read_checkpoint

    reg = DeviceRegistry(db)
    profile = reg.get(device)
    reg.revision(profile, create=True)  # what a measurement on it would have begun
    mc = ModelConfig(**read_checkpoint(checkpoint)["model_config"])
    return save_predictor(db, device=profile, provenance=reg.provenance(profile, space, mc, tuning_dir),
                          predictor=predictor, metrics=metrics or {}, data_key="stand-in")
