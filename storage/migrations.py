"""Schema versions and the ordered steps between them, applied when a catalog is opened.

A fresh database gets the current ORM tables (`create_all`) plus every step that the ORM does not
describe (the FTS table and its triggers), then is stamped with the latest version. An existing
database runs, in order and in one transaction, each step above its stored version.

Adding a step: append a `Migration` with the next version. If it changes an ORM table, change the
class in schema.py too and set `in_orm=True` (fresh databases then get it from `create_all`).

A catalog opened read-only is never migrated: it opens when it is already at the version this code
needs, and fails with a `CatalogOpenError` that says so otherwise. A file that is not a SQLite
database, or a database with other tables and no version, is refused rather than written to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Connection, func, inspect, select
from sqlalchemy.exc import DBAPIError

from storage.db import CatalogOpenError, Database, open_error
from storage.schema import Base, SchemaVersion

logger = logging.getLogger(__name__)


class SchemaVersionError(CatalogOpenError):
    """The catalog was written by a newer coca-search than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    upgrade: Callable[[Connection], None]
    in_orm: bool  # True: create_all already produces this step's result on a fresh database


def _create_base_tables(conn: Connection) -> None:
    Base.metadata.create_all(conn)


# External-content FTS5 table over captions.text; rowid = captions.id. Triggers keep it in step,
# including deletes cascaded from images (SQLite fires triggers for cascaded deletes).
_FTS_DDL = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS captions_fts USING fts5(text, content='captions', "
    "content_rowid='id', tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER IF NOT EXISTS captions_fts_insert AFTER INSERT ON captions BEGIN "
    "INSERT INTO captions_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS captions_fts_delete AFTER DELETE ON captions BEGIN "
    "INSERT INTO captions_fts(captions_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER IF NOT EXISTS captions_fts_update AFTER UPDATE OF text ON captions BEGIN "
    "INSERT INTO captions_fts(captions_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO captions_fts(rowid, text) VALUES (new.id, new.text); END",
    "INSERT INTO captions_fts(captions_fts) VALUES ('rebuild')",
)


def _create_caption_fts(conn: Connection) -> None:
    if conn.dialect.name != "sqlite":
        logger.info(
            "caption full-text index skipped on %s: search falls back to LIKE", conn.dialect
        )
        return
    for statement in _FTS_DDL:
        conn.exec_driver_sql(statement)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "images, models, captions, embeddings", _create_base_tables, in_orm=True),
    Migration(2, "caption full-text index (SQLite FTS5) with triggers", _create_caption_fts, False),
)
LATEST_VERSION = MIGRATIONS[-1].version


def stored_version(conn: Connection) -> int:
    """The catalog's schema version; 0 for an empty database."""
    if not inspect(conn).has_table(SchemaVersion.__tablename__):
        return 0
    return conn.execute(select(func.max(SchemaVersion.version))).scalar() or 0


def _stamp(conn: Connection, migration: Migration) -> None:
    conn.execute(
        SchemaVersion.__table__.insert().values(
            version=migration.version,
            description=migration.description,
            applied_at=datetime.now(timezone.utc).replace(tzinfo=None),
        )
    )


def _check_not_newer(version: int) -> None:
    if version > LATEST_VERSION:
        raise SchemaVersionError(
            f"catalog schema version {version} is newer than this coca-search supports "
            f"({LATEST_VERSION}); upgrade coca-search to open it"
        )


def _check_foreign_tables(conn: Connection, version: int, db: Database) -> None:
    # Version 0 with tables in it is someone else's database: creating ours there would write
    # into a file the user may care about.
    tables = inspect(conn).get_table_names() if version == 0 else []
    if tables:
        shown = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
        raise CatalogOpenError(
            f"{db.location} is not a coca-search catalog (it holds other tables: {shown}); "
            "move it aside to start a new one"
        )


def _check_writable(db: Database, version: int, target: int) -> None:
    if not db.read_only:
        return
    found = "an empty catalog" if version == 0 else f"catalog schema version {version}"
    raise CatalogOpenError(
        f"{db.location} is read-only (it or its folder is not writable) and holds {found}, older "
        f"than this coca-search needs ({target}); run `coca-search index` once where it is "
        "writable to upgrade it"
    )


def apply_migrations(db: Database, target: int = LATEST_VERSION) -> int:
    """Bring `db` to schema version `target` (tests use a lower target); returns the version.

    An up-to-date catalog is only read (no write lock), so opening it never waits for an indexer.
    Raises `CatalogOpenError` (one line, naming the file) when the catalog cannot be opened.
    """
    try:
        return _migrate(db, target)
    except DBAPIError as error:
        raise open_error(db, error) from error


def _migrate(db: Database, target: int) -> int:
    with db.engine.connect() as conn:
        current = stored_version(conn)
        _check_foreign_tables(conn, current, db)
        conn.rollback()
    _check_not_newer(current)
    if current >= target:
        return current
    _check_writable(db, current, target)
    with db.engine.connect() as conn:
        if db.is_sqlite:
            # Take the write lock before reading the version: two processes opening the same new
            # catalog must not both run the steps.
            conn = conn.execution_options(coca_sqlite_begin="IMMEDIATE")
        with conn.begin():
            current = stored_version(conn)  # again: another process may have migrated meanwhile
            _check_not_newer(current)
            for migration in MIGRATIONS:
                if migration.version > target or migration.version <= current:
                    continue
                if current == 0 and migration.in_orm and migration.version > 1:
                    _stamp(conn, migration)  # create_all of step 1 already made it
                    continue
                logger.info("catalog migration %d: %s", migration.version, migration.description)
                migration.upgrade(conn)
                _stamp(conn, migration)
            return max(current, min(target, LATEST_VERSION))
