"""The catalog's bulk write path: big batches, the SQLite fast path against SQLAlchemy Core."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from storage import Catalog, ImageMeta, IndexedFile, NewCaption, bulk, open_catalog

DIM = 8
ROOT = "/photos"
ROWS = 620  # more than one IN-list chunk (500)


def _files(count: int, version: int, start: int = 0) -> list[IndexedFile]:
    rng = np.random.default_rng(version)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    files = []
    for number in range(start, start + count):
        meta = ImageMeta(
            root=ROOT,
            path=f"album{number % 7}/img {number:04d}.jpg",
            size=1000 + number,
            mtime_ns=1_600_000_000_123_456_789 + number + version,
            content_hash=f"h{number}-{version}",
            width=640,
            height=480,
            format="JPEG",
            taken_at=datetime(2021, 1 + number % 12, 1, 8, 30, 15, 250) if number % 3 else None,
            camera=None if number % 5 else "Cam",
        )
        caption = NewCaption(f"photo {number} of a {'cat' if number % 2 else 'dog'} v{version}")
        files.append(IndexedFile(meta, vectors[number - start], caption))
    return files


def _fill(catalog: Catalog) -> tuple[int, list[int], list[int]]:
    model_id = catalog.get_or_create_model("m", "c", DIM)
    first = catalog.store_indexed(model_id, _files(ROWS, 0))
    # Half the paths again (new content) plus new paths, in one batch.
    second = catalog.store_indexed(model_id, _files(ROWS, 1, start=ROWS // 2))
    return model_id, first, second


def _raw(catalog: Catalog, sql: str) -> list[tuple]:
    with catalog.db.session() as session:
        return [tuple(row) for row in session.execute(text(sql))]


@pytest.fixture
def fast(tmp_path: Path) -> Catalog:
    return open_catalog(tmp_path / "fast.db")


def test_storage_bulk_store_indexed_returns_ids_in_input_order(fast: Catalog) -> None:
    model_id, first, second = _fill(fast)
    assert len(set(first)) == ROWS and first == sorted(first)
    assert second[: ROWS // 2] == first[ROWS // 2 :]  # kept rows keep their ids
    assert min(second[ROWS // 2 :]) > max(first)  # new rows get new, never reused ids
    details = fast.get_images(second, model_id)
    assert [d.image.path for d in details] == [f.meta.path for f in _files(ROWS, 1, ROWS // 2)]
    assert all(d.caption.text.endswith("v1") for d in details)
    ids, vectors = fast.get_embeddings(model_id, second)
    assert np.allclose(
        vectors, np.stack([f.embedding for f in _files(ROWS, 1, ROWS // 2)])[np.argsort(second)]
    )
    assert fast.stats().models[0].captions == ROWS + ROWS // 2 == fast.stats().images


def test_storage_bulk_fulltext_follows_bulk_replacement(fast: Catalog) -> None:
    model_id, first, second = _fill(fast)
    v0 = {hit.image_id for hit in fast.search_captions("v0", model_id, limit=5000)}
    v1 = {hit.image_id for hit in fast.search_captions("v1", model_id, limit=5000)}
    assert v0 == set(first[: ROWS // 2]) and v1 == set(second)
    fast.delete_images(second[:10])
    v1_after = {hit.image_id for hit in fast.search_captions("v1", model_id, limit=5000)}
    assert v1_after == set(second[10:])


def test_storage_bulk_fast_path_stores_what_sqlalchemy_stores(
    fast: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(fast)
    monkeypatch.setattr(bulk, "_fast_path", lambda connection: False)
    core = open_catalog(tmp_path / "core.db")
    _fill(core)
    columns = (
        "id, root, path, folder, size, mtime_ns, content_hash, width, height, format, taken_at, "
        "camera, photo_date, status, error, length(indexed_at)"
    )
    images = f"SELECT {columns} FROM images ORDER BY id"
    assert _raw(fast, images) == _raw(core, images)
    captions = "SELECT id, image_id, model_id, text, decoding, score FROM captions ORDER BY id"
    assert _raw(fast, captions) == _raw(core, captions)
    embeddings = "SELECT id, image_id, model_id, vector FROM embeddings ORDER BY id"
    assert _raw(fast, embeddings) == _raw(core, embeddings)


def test_storage_bulk_same_path_twice_in_a_batch_is_one_row(fast: Catalog) -> None:
    first, again = _files(1, 0)[0].meta, _files(1, 1)[0].meta
    ids = fast.upsert_images([first, again])
    assert ids[0] == ids[1]
    (row,) = fast.get_images([ids[0]])
    assert row.image.content_hash == again.content_hash


def test_storage_bulk_update_changes_metadata_and_clears_error(fast: Catalog) -> None:
    (image_id,) = fast.upsert_images([_files(1, 0)[0].meta])
    fast.record_error(ROOT, _files(1, 0)[0].meta.path, 1, 2, "broken")
    changed = _files(1, 3)[0].meta
    assert fast.upsert_images([changed]) == [image_id]
    record = fast.get_image(image_id).image
    assert (record.status, record.error, record.mtime_ns) == ("ok", None, changed.mtime_ns)
    assert record.taken_at is None and record.photo_date is not None
