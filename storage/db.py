"""The catalog database: engine, SQLite settings for concurrent use, and the session scope.

One writer (the indexer) and many readers (the web app) share a SQLite file. WAL lets readers run
while the writer commits; `busy_timeout` makes a second writer wait instead of failing; writes open
with BEGIN IMMEDIATE so a write transaction never has to upgrade a read snapshot (which in WAL fails
at once with "database is locked", whatever the timeout). Any other SQLAlchemy URL is used as is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
_BEGIN_OPTION = "coca_sqlite_begin"


def to_url(target: str | Path | URL) -> URL:
    """A SQLAlchemy URL from a URL string, a URL, or a plain file path (SQLite)."""
    if isinstance(target, URL):
        return target
    text = str(target)
    if "://" in text:
        return make_url(text)
    return URL.create("sqlite+pysqlite", database=str(Path(text).expanduser()))


def _on_sqlite_connect(dbapi_connection, _record) -> None:
    # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite's own implicit BEGIN
    # comes too late: reads before the first write would run outside the transaction).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _on_sqlite_begin(connection) -> None:
    mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """A catalog database. Creating one opens no connection; `engine` is made on first use.

    `Database(path_or_url)` accepts a file path (SQLite) or any SQLAlchemy URL. Use
    `storage.open_database` to also apply migrations.
    """

    def __init__(self, target: str | Path | URL, *, echo: bool = False) -> None:
        self.url = to_url(target)
        self._echo = echo
        self._engine: Engine | None = None
        self._read_sessions: sessionmaker[Session] | None = None
        self._write_sessions: sessionmaker[Session] | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> Engine:
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(self.url, echo=self._echo)
        if self.is_sqlite:
            event.listen(engine, "connect", _on_sqlite_connect)
            event.listen(engine, "begin", _on_sqlite_begin)
        return engine

    def _sessionmaker(self, write: bool) -> sessionmaker[Session]:
        if write and self._write_sessions is None:
            bind = self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
            self._write_sessions = sessionmaker(bind=bind, expire_on_commit=False)
        if not write and self._read_sessions is None:
            self._read_sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        made = self._write_sessions if write else self._read_sessions
        assert made is not None
        return made

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any exception.

        Pass `write=True` for a transaction that writes: on SQLite it takes the write lock up front
        (waiting up to the busy timeout for another writer) so it cannot fail half-way.
        """
        session = self._sessionmaker(write)()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        """Close pooled connections (e.g. before a fork, or when done)."""
        if self._engine is not None:
            self._engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"
