"""Schema, migrations and database settings of the catalog."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, inspect, select, text

from storage import (
    LATEST_VERSION,
    Catalog,
    Database,
    ImageMeta,
    IndexedFile,
    NewCaption,
    SchemaVersionError,
    apply_migrations,
    open_catalog,
)
from storage.migrations import stored_version
from storage.schema import Caption, Embedding, Image, SchemaVersion


def _file(i: int, dim: int = 4) -> IndexedFile:
    meta = ImageMeta("/lib", f"f/img{i}.jpg", 10 + i, 1_700_000_000_000_000_000 + i, f"h{i}")
    vector = np.full(dim, 0.5, np.float32)
    return IndexedFile(meta, vector, NewCaption(f"a photo of a lighthouse {i}", {"seq_len": 20}))


def test_storage_migrations_create_every_table_on_an_empty_database(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path / "catalog.db")
    tables = set(inspect(catalog.db.engine).get_table_names())
    assert {
        "images",
        "models",
        "captions",
        "embeddings",
        "schema_version",
        "captions_fts",
    } <= tables
    with catalog.db.engine.connect() as conn:
        assert stored_version(conn) == LATEST_VERSION
        versions = conn.execute(select(SchemaVersion.version).order_by(SchemaVersion.version))
        assert list(versions.scalars()) == list(range(1, LATEST_VERSION + 1))


def test_storage_migrations_upgrade_an_older_catalog_and_backfill_fts(tmp_path: Path) -> None:
    db = Database(tmp_path / "catalog.db")
    assert apply_migrations(db, target=1) == 1
    assert "captions_fts" not in inspect(db.engine).get_table_names()
    old = Catalog(db)
    model_id = old.get_or_create_model("default", "cfg", 4)
    old.store_indexed(model_id, [_file(0), _file(1)])
    db.dispose()

    upgraded = open_catalog(tmp_path / "catalog.db")
    with upgraded.db.engine.connect() as conn:
        assert stored_version(conn) == LATEST_VERSION
    # Captions written before the FTS table existed are searchable (backfilled), new ones too.
    assert {hit.image_id for hit in upgraded.search_captions("lighthouse", model_id)} == {1, 2}
    upgraded.store_indexed(model_id, [_file(2)])
    assert len(upgraded.search_captions("lighthouse", model_id)) == 3


def test_storage_migrations_are_idempotent_when_reopened(tmp_path: Path) -> None:
    open_catalog(tmp_path / "c.db").db.dispose()
    catalog = open_catalog(tmp_path / "c.db")
    with catalog.db.session() as session:
        count = session.execute(select(func.count()).select_from(SchemaVersion)).scalar_one()
    assert count == LATEST_VERSION


def test_storage_migrations_refuse_a_catalog_from_a_newer_version(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path / "c.db")
    with catalog.db.session(write=True) as session:
        session.execute(
            SchemaVersion.__table__.insert().values(
                version=LATEST_VERSION + 1, description="future", applied_at=func.now()
            )
        )
    with pytest.raises(SchemaVersionError, match="upgrade coca-search"):
        apply_migrations(Database(tmp_path / "c.db"))


def test_storage_database_sets_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    db = Database(tmp_path / "c.db")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_storage_database_accepts_urls_and_creates_no_engine_up_front(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    assert db._engine is None and db.is_sqlite
    assert not (tmp_path / "x.db").exists()
    apply_migrations(db)
    assert (tmp_path / "x.db").exists()


def test_storage_session_rolls_back_on_error(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path / "c.db")
    with pytest.raises(RuntimeError), catalog.db.session(write=True) as session:
        session.execute(
            text(
                "INSERT INTO models (source, config_hash, embed_dim, created_at) "
                "VALUES ('m', 'h', 4, '2024-01-01')"
            )
        )
        raise RuntimeError("boom")
    assert catalog.list_models() == []


def test_storage_deleting_an_image_cascades_to_captions_embeddings_and_fts(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path / "c.db")
    model_id = catalog.get_or_create_model("default", "cfg", 4)
    ids = catalog.store_indexed(model_id, [_file(0), _file(1)])
    assert catalog.delete_images([ids[0]]) == 1
    with catalog.db.session() as session:
        assert session.execute(select(func.count()).select_from(Embedding)).scalar_one() == 1
        assert session.execute(select(func.count()).select_from(Caption)).scalar_one() == 1
        fts_rows = session.execute(text("SELECT count(*) FROM captions_fts")).scalar_one()
        assert fts_rows == 1
    assert [hit.image_id for hit in catalog.search_captions("lighthouse", model_id)] == [ids[1]]
    # Also through raw SQL: the cascade is the database's (foreign keys on), not only the ORM's.
    with catalog.db.session(write=True) as session:
        session.execute(Image.__table__.delete())
    with catalog.db.session() as session:
        assert session.execute(select(func.count()).select_from(Embedding)).scalar_one() == 0
        assert session.execute(select(func.count()).select_from(Caption)).scalar_one() == 0


def test_storage_open_catalog_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    writer = open_catalog(tmp_path / "c.db")
    with writer.db.session(write=True) as session:  # holds SQLite's write lock
        session.execute(
            text(
                "INSERT INTO models (source, config_hash, embed_dim, created_at) "
                "VALUES ('m', 'h', 4, '2024-01-01')"
            )
        )
        start = time.perf_counter()
        reader = open_catalog(tmp_path / "c.db")
        assert reader.list_models() == []  # sees the last committed state, no waiting
        assert time.perf_counter() - start < 5  # the busy timeout is 30 s
    assert [m.source for m in reader.list_models()] == ["m"]
