"""The catalog database: engine, SQLite settings for concurrent use, and the session scope.

One writer (the indexer) and many readers (the web app) share a SQLite file. WAL lets readers run
while the writer commits; `busy_timeout` makes a second writer wait instead of failing; writes open
with BEGIN IMMEDIATE so a write transaction never has to upgrade a read snapshot (which in WAL fails
at once with "database is locked", whatever the timeout). Any other SQLAlchemy URL is used as is.

A catalog file in a folder this process cannot write (a read-only mount, a shared library) is opened
read-only, so that searching it still works; only an indexer needs to write.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
_BEGIN_OPTION = "coca_sqlite_begin"


class CatalogOpenError(RuntimeError):
    """The catalog cannot be opened: not a SQLite database, unreadable, or read-only and older
    than this code. The message names the file and says what to do."""


def to_url(target: str | Path | URL) -> URL:
    """A SQLAlchemy URL from a URL string, a URL, or a plain file path (SQLite)."""
    if isinstance(target, URL):
        return target
    text = str(target)
    if "://" in text:
        return make_url(text)
    return URL.create("sqlite+pysqlite", database=str(Path(text).expanduser()))


def needs_read_only(path: Path) -> bool:
    """Whether the existing SQLite file at `path` must be opened read-only: SQLite writes the file
    and, in WAL mode, creates `-wal`/`-shm` files beside it, so both must be writable."""
    if not path.is_file():
        return False  # nothing to read yet: opening it means creating it
    return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK))


def _read_only_url(path: Path) -> URL:
    """A SQLite URI that opens `path` read-only.

    `mode=ro` alone still needs the `-shm` file of a WAL database, which a read-only folder cannot
    hold once the last writer has removed it; then `immutable=1` reads the file without it (and
    without locks, fine where nothing can write). A `-shm` left behind means a `-wal` may hold
    committed pages that `immutable` would skip, so `mode=ro` is used, which reads both.
    """
    params = {"mode": "ro", "uri": "true"}
    shm = path.with_name(path.name + "-shm")
    if not os.access(path.parent, os.W_OK | os.X_OK) and not shm.exists():
        params["immutable"] = "1"
    return URL.create(
        "sqlite+pysqlite", database=f"file:{quote(str(path.resolve()))}", query=params
    )


def open_error(db: Database, error: DBAPIError) -> CatalogOpenError:
    """A one-line error, naming the catalog, for a driver error raised while opening `db`."""
    reason = str(error.orig or error).strip().splitlines()[0]
    where = db.location
    if "not a database" in reason:
        return CatalogOpenError(
            f"{where} is not a coca-search catalog ({reason}); move it aside to start a new one"
        )
    if "malformed" in reason:  # the photos are untouched: a new catalog indexes them again
        return CatalogOpenError(f"{where} is damaged ({reason}); move it aside to start a new one")
    if "readonly" in reason or "read-only" in reason:
        return CatalogOpenError(f"cannot write the catalog {where}: it or its folder is read-only")
    if "unable to open" in reason:  # SQLite's word for a missing or unreadable folder or file
        return CatalogOpenError(
            f"cannot open the catalog {where} ({reason}); check that its folder exists and that "
            "you may read it"
        )
    return CatalogOpenError(f"cannot open the catalog {where} ({reason})")


def _on_sqlite_connect(dbapi_connection, _record, *, read_only: bool = False) -> None:
    # Hand transaction control to SQLAlchemy's "begin" event below (pysqlite's own implicit BEGIN
    # comes too late: reads before the first write would run outside the transaction).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    if not read_only:  # switching the journal mode writes the file header
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
    `storage.open_catalog` to also apply migrations. `read_only=None` opens an existing SQLite
    file read-only when this process cannot write it or its folder (`needs_read_only`).
    """

    def __init__(
        self, target: str | Path | URL, *, echo: bool = False, read_only: bool | None = None
    ) -> None:
        self.url = to_url(target)
        self._echo = echo
        if read_only is None:
            read_only = self._is_sqlite_file and needs_read_only(Path(self.url.database))
        self.read_only = read_only
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

    @property
    def location(self) -> str:
        """Where the catalog is, for messages: its file path, else its URL without a password."""
        if self._is_sqlite_file:
            return str(self.url.database)
        return self.url.render_as_string(hide_password=True)

    @property
    def _is_sqlite_file(self) -> bool:
        # A plain file path: URI filenames ("file:...") and memory databases are used as given.
        database = self.url.database or ""
        plain = database not in ("", ":memory:") and not database.startswith("file:")
        return self.is_sqlite and plain and "uri" not in self.url.query

    def _create_engine(self) -> Engine:
        url = self.url
        if self.read_only and self._is_sqlite_file:
            url = _read_only_url(Path(self.url.database))
            logger.info(
                "catalog %s opened read-only: it or its folder is not writable", self.url.database
            )
        elif self._is_sqlite_file:
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=self._echo)
        if self.is_sqlite:
            on_connect = functools.partial(_on_sqlite_connect, read_only=self.read_only)
            event.listen(engine, "connect", on_connect)
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
