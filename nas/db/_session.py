"""Engine, migrations and transactions. Every SQLAlchemy error leaves here as one StorageError."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.exc import DataError as SQLDataError
from sqlalchemy.orm import Session, sessionmaker

from hwnas.exceptions import InvalidValueError, StorageError
from hwnas.settings import Settings

__all__ = ["Database", "alembic_config", "create_engine_for", "masked", "resolve_url", "upgrade"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT_S = 5  # an unreachable server is reported in seconds, not after the OS's TCP timeout
SQLITE_BUSY_TIMEOUT_S = 30  # concurrent collectors on one SQLite file wait for the write lock this long
_MIGRATION_LOCK_ID = 0x68776E6173  # "hwnas": the PostgreSQL advisory lock held while migrating


def resolve_url(url: str | None = None) -> str:
    """Explicit argument > the settings' database URL ($HWNAS_DB_URL, else SQLite in $HWNAS_HOME)."""
    return url or Settings().database_url()


def masked(url: str | URL) -> str:
    """The URL with its password replaced by ***, fit for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Unparsable, yet it may still hold `user:password@`: mask that much by hand.
        return re.sub(r"(://[^:/@\s]*:).*@", r"\1***@", str(url))  # up to the last @: passwords may hold @


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as e:
        raise StorageError(f"bad database URL '{masked(url)}' (e.g. sqlite:///path/hwnas.db or "
                           f"postgresql://user@host/db)") from e


def create_engine_for(url: str) -> Engine:
    """An engine for `url`: SQLite with foreign keys on, PostgreSQL through psycopg 3 with a connect timeout.

    Nothing connects yet; a malformed URL or a missing driver is a StorageError here.
    """
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        connect_args: dict[str, Any] = {}
        if backend == "postgresql":
            if parsed.get_driver_name() in ("", "psycopg2"):
                parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we install
            if "connect_timeout" not in parsed.query:
                connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except NoSuchModuleError as e:
        raise StorageError(f"database URL '{masked(url)}': unsupported backend '{parsed.drivername}' "
                           f"(use sqlite:// or postgresql://)") from e
    except (ArgumentError, ImportError) as e:
        raise StorageError(f"database URL '{masked(url)}' cannot be used: {_first_line(e)}") from e


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")  # SQLite ignores FKs (and ON DELETE CASCADE) unless asked, per connection
    cur.close()


def alembic_config() -> Any:
    """Alembic's config for the migrations shipped inside the package (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade(url: str | Engine) -> None:
    """Alembic `upgrade head` on a database URL (or an engine); a no-op when it is up to date."""
    from alembic import command
    from alembic.util import CommandError

    engine = create_engine_for(url) if isinstance(url, str) else url
    shown = masked(url) if isinstance(url, str) else masked(engine.url)
    try:
        cfg = alembic_config()
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:  # batch migrations copy a table and drop the old one: with foreign keys on, the drop would
                # cascade to every row that refers to it (a no-op inside a transaction: set before it begins)
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
            try:
                with conn.begin():
                    if conn.dialect.name == "postgresql":  # workers starting together: one migrates, the rest wait
                        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                    if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
                        raise StorageError(f"database {shown}: a migration left rows that refer to missing ones")
            finally:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    conn.commit()
    except CommandError as e:  # e.g. a revision this hwnas does not know: a newer hwnas migrated it
        raise StorageError(f"database {shown} cannot be migrated: {_first_line(e)} "
                           f"(was it written by a newer hwnas?)") from e
    except SQLAlchemyError as e:
        raise StorageError(f"database {shown} cannot be migrated: {_first_line(e, url)}") from e
    finally:
        if isinstance(url, str):
            engine.dispose()


class Database:
    """One database: engine, migrations applied on open, and transactional sessions.

    Opening checks the connection, so an unreachable or misspelled database fails here, as
    one StorageError, not at the first query.
    """

    def __init__(self, url: str | None = None, *, migrate: bool = True):
        self.url = resolve_url(url)
        self.engine = create_engine_for(self.url)
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as e:
            self.engine.dispose()
            raise StorageError(f"database {masked(self.url)} is unusable: {_first_line(e, self.url)}") from e
        if migrate:
            try:
                upgrade(self.engine)
            except StorageError:
                self.engine.dispose()
                raise
        # expire_on_commit=False: values read in a session stay readable after it commits
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({masked(self.url)!r})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error (then re-raised, translated)."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLDataError as e:  # the value, not the database: a NUL byte in text, a number out of range
            _rollback(session)
            raise InvalidValueError(f"a value the database cannot store: {_first_line(e, self.url)}") from e
        except SQLAlchemyError as e:
            _rollback(session)
            raise StorageError(f"database {masked(self.url)}: {_first_line(e, self.url)}") from e
        except BaseException:
            _rollback(session)
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()


def _rollback(session: Session) -> None:
    # A lost connection can fail the rollback too; the error worth reporting is the first one.
    with contextlib.suppress(SQLAlchemyError):
        session.rollback()


def _first_line(e: BaseException, url: str | Engine | None = None) -> str:
    """The driver's own message, first line only; never the password, even if a driver echoes it."""
    msg = str(getattr(e, "orig", None) or e).strip()
    msg = msg.splitlines()[0] if msg else type(e).__name__
    if isinstance(url, str):
        with contextlib.suppress(ArgumentError):
            password = make_url(url).password
            if password:
                msg = msg.replace(str(password), "***")
    return msg
