"""Engine, migrations and transactions. Every SQLAlchemy error leaves here as one StorageError."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from hwnas.exceptions import StorageError


def resolve_url(url: str | None = None) -> str:
    """Explicit argument > $HWNAS_DB_URL > a SQLite file under $HWNAS_HOME (or the user data dir)."""
    if url:
        return url
    if os.environ.get("HWNAS_DB_URL"):
        return os.environ["HWNAS_DB_URL"]
    from platformdirs import user_data_dir

    home = Path(os.environ.get("HWNAS_HOME") or user_data_dir("hwnas"))
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'hwnas.db'}"


def masked(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StorageError(f"bad database URL '{url}' (e.g. sqlite:///path.db or postgresql://user@host/db)") from e
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # type: ignore[no-untyped-def]
            cur = conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")  # SQLite ignores FKs unless asked, every connection
            cur.close()

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is what we install
    return create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 5})


def upgrade(engine: Engine) -> None:
    """Alembic `upgrade head`, from the migrations shipped inside the package."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    """One database: engine, migrations applied on open, and transactional sessions."""

    def __init__(self, url: str | None = None, *, migrate: bool = True):
        self.url = resolve_url(url)
        self.engine = _engine(self.url)
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            if migrate:
                upgrade(self.engine)
        except SQLAlchemyError as e:
            self.engine.dispose()
            raise StorageError(f"database {masked(self.url)} is unusable: {_first_line(e)}") from e
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error (then re-raised, translated)."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as e:
            session.rollback()
            raise StorageError(f"database {masked(self.url)}: {_first_line(e)}") from e
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()


def _first_line(e: BaseException) -> str:
    msg = str(getattr(e, "orig", None) or e).strip()
    return msg.splitlines()[0] if msg else type(e).__name__
