"""Many-row INSERT and UPDATE statements, fast on SQLite.

SQLAlchemy's executemany builds and type-processes a parameter dict per row; for an indexer batch
of 512 images with embeddings and captions that bookkeeping costs more than SQLite's own work. On
SQLite the rows therefore go to the DB-API's `executemany` as tuples, each value passed through
the column type's bind processor (datetime -> text, dict -> JSON, enum -> value): what SQLAlchemy
would store, without its per-row overhead. Other backends use SQLAlchemy Core's executemany.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, update
from sqlalchemy.engine import Dialect

Processor = Callable[[Any], Any] | None


def _driver_rows(
    dialect: Dialect, table: Table, names: Sequence[str], rows: Sequence[dict]
) -> list[tuple]:
    """Rows as tuples of DB-API values, in the order of `names`."""
    columns = [_driver_column(dialect, table, name, rows) for name in names]
    return list(zip(*columns, strict=True))


def _driver_column(dialect: Dialect, table: Table, name: str, rows: Sequence[dict]) -> list:
    """One column's values through its type's bind processor.

    Memoised by object identity: a batch shares one timestamp, one status and one decoding dict
    across its rows, and processing them (datetime formatting, JSON) is the costly part.
    """
    values = [row[name] for row in rows]
    process: Processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return values
    done: dict[int, Any] = {}
    processed = []
    for value in values:
        key = id(value)  # every value stays referenced by `values`: ids are not reused here
        if key not in done:
            done[key] = process(value)
        processed.append(done[key])
    return processed


def _fast_path(connection: Connection) -> bool:
    return connection.dialect.name == "sqlite" and connection.dialect.paramstyle == "qmark"


def insert_rows(connection: Connection, table: Table, rows: Sequence[dict]) -> None:
    """INSERT `rows` (dicts with the same keys) into `table` in one executemany."""
    if not rows:
        return
    if not _fast_path(connection):
        connection.execute(insert(table), list(rows))
        return
    names = list(rows[0])
    columns = ", ".join(f'"{name}"' for name in names)
    sql = f'INSERT INTO "{table.name}" ({columns}) VALUES ({", ".join("?" * len(names))})'
    connection.exec_driver_sql(sql, _driver_rows(connection.dialect, table, names, rows))


def update_rows(connection: Connection, table: Table, rows: Sequence[dict], key: str) -> None:
    """UPDATE `table` rows matched by column `key`; each dict holds `key` and the new values."""
    if not rows:
        return
    names = [name for name in rows[0] if name != key]
    if not _fast_path(connection):
        stmt = update(table).where(table.c[key] == bindparam("match_key_"))
        params = [{**{n: row[n] for n in names}, "match_key_": row[key]} for row in rows]
        connection.execute(stmt, params)
        return
    assignments = ", ".join(f'"{name}" = ?' for name in names)
    sql = f'UPDATE "{table.name}" SET {assignments} WHERE "{key}" = ?'
    connection.exec_driver_sql(sql, _driver_rows(connection.dialect, table, [*names, key], rows))
