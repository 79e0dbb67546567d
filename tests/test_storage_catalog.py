"""Catalog queries the indexer and the app rely on."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import numpy as np
import pytest

from storage import (
    Catalog,
    ImageFilter,
    ImageMeta,
    ImageResult,
    IndexedFile,
    NewCaption,
    content_hash,
    open_catalog,
)
from storage.hashing import content_hash_of_bytes, legacy_content_hash

DIM = 4
ROOT = "/photos"


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return open_catalog(tmp_path / "catalog.db")


def _meta(
    path: str,
    *,
    size: int = 100,
    mtime_ns: int = 1,
    digest: str | None = None,
    taken_at: datetime | None = None,
    root: str = ROOT,
) -> ImageMeta:
    return ImageMeta(
        root, path, size, mtime_ns, digest or f"hash-{path}", 640, 480, "JPEG", taken_at, "Camera X"
    )


def _vector(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _indexed(path: str, text: str = "a cat", seed: int = 0, **meta) -> IndexedFile:
    return IndexedFile(_meta(path, **meta), _vector(seed), NewCaption(text, {"num_beams": 3}, -1.5))


def test_storage_catalog_get_or_create_model_is_stable_and_checks_dim(catalog: Catalog) -> None:
    first = catalog.get_or_create_model("default", "abc", DIM)
    assert catalog.get_or_create_model("default", "abc", DIM) == first
    assert catalog.get_or_create_model("default", "other", DIM) != first
    with pytest.raises(ValueError, match="embedding size"):
        catalog.get_or_create_model("default", "abc", DIM * 2)
    assert catalog.get_model(first).source == "default"


def test_storage_catalog_known_files_and_upsert(catalog: Catalog) -> None:
    ids = catalog.upsert_images([_meta("a/1.jpg"), _meta("b/2.jpg")])
    catalog.upsert_images([_meta("x.jpg", root="/other")])
    known = catalog.known_files(ROOT)
    assert set(known) == {"a/1.jpg", "b/2.jpg"}
    assert known["a/1.jpg"].id == ids[0] and known["a/1.jpg"].status == "ok"
    assert catalog.upsert_image(_meta("a/1.jpg", size=200, mtime_ns=5)) == ids[0]
    assert catalog.known_files(ROOT)["a/1.jpg"].size == 200


def test_storage_catalog_upsert_with_new_content_drops_model_output(catalog: Catalog) -> None:
    model_id = catalog.get_or_create_model("m", "c", DIM)
    (image_id,) = catalog.store_indexed(model_id, [_indexed("a.jpg")])
    catalog.upsert_image(_meta("a.jpg", mtime_ns=2))  # same hash: output kept
    assert catalog.images_needing_work(model_id) == []
    catalog.upsert_image(_meta("a.jpg", mtime_ns=3, digest="changed"))
    assert [r.id for r in catalog.images_needing_work(model_id)] == [image_id]
    assert catalog.get_image(image_id).caption is None


def test_storage_catalog_store_replaces_older_output_of_the_same_model(catalog: Catalog) -> None:
    model_a = catalog.get_or_create_model("a", "c", DIM)
    model_b = catalog.get_or_create_model("b", "c", DIM)
    (image_id,) = catalog.store_indexed(model_a, [_indexed("x.jpg", "old words", seed=1)])
    catalog.store_results(model_b, [ImageResult(image_id, _vector(2), NewCaption("model b"))])
    catalog.store_results(model_a, [ImageResult(image_id, _vector(3), NewCaption("new words"))])
    ids, vectors = catalog.load_embeddings(model_a)
    assert ids.tolist() == [image_id] and np.allclose(vectors[0], _vector(3))
    assert catalog.get_image(image_id, model_a).caption.text == "new words"
    assert catalog.get_image(image_id, model_b).caption.text == "model b"
    assert catalog.search_captions("old", model_a) == []
    assert [h.image_id for h in catalog.search_captions("new", model_a)] == [image_id]
    assert catalog.stats().models[0].embeddings == 1


def test_storage_catalog_store_rejects_a_wrong_embedding_size(catalog: Catalog) -> None:
    model_id = catalog.get_or_create_model("m", "c", DIM)
    bad = IndexedFile(_meta("a.jpg"), np.zeros(DIM + 1, np.float32))
    with pytest.raises(ValueError, match="stores 4"):
        catalog.store_indexed(model_id, [bad])
    assert catalog.known_files(ROOT) == {}  # the whole batch rolled back


def test_storage_catalog_provenance_of_a_caption(catalog: Catalog) -> None:
    model_id = catalog.get_or_create_model("hf-hub:me/coca", "c", DIM)
    (image_id,) = catalog.store_indexed(model_id, [_indexed("p.jpg", "a red boat")])
    detail = catalog.get_image(image_id)
    assert detail.image.abs_path == Path(ROOT) / "p.jpg"
    assert detail.caption.model_source == "hf-hub:me/coca"
    assert detail.caption.decoding == {"num_beams": 3} and detail.caption.score == -1.5
    assert catalog.get_images([999, image_id]) == [detail]


def test_storage_catalog_record_error_then_recover(catalog: Catalog) -> None:
    model_id = catalog.get_or_create_model("m", "c", DIM)
    (image_id,) = catalog.store_indexed(model_id, [_indexed("bad.jpg")])
    assert catalog.record_error(ROOT, "bad.jpg", 0, 9, "truncated file") == image_id
    detail = catalog.get_image(image_id)
    assert detail.image.status == "error" and detail.image.error == "truncated file"
    assert catalog.load_embeddings(model_id)[0].size == 0
    assert catalog.images_needing_work(model_id) == []  # errors need no work until they change
    stats = catalog.stats()
    assert (stats.images, stats.ok, stats.errors) == (1, 0, 1)
    catalog.upsert_image(_meta("bad.jpg", mtime_ns=10))
    assert catalog.get_image(image_id).image.status == "ok"
    assert catalog.get_image(image_id).image.error is None


def test_storage_catalog_find_by_hash_and_move_keep_data(catalog: Catalog) -> None:
    model_id = catalog.get_or_create_model("m", "c", DIM)
    ids = catalog.store_indexed(
        model_id, [_indexed("old/a.jpg", digest="same"), _indexed("new/a.jpg", digest="other")]
    )
    found = catalog.find_by_hash(["same", "missing"])
    assert [r.id for r in found["same"]] == [ids[0]] and "missing" not in found
    # Moving onto the path of a stale row replaces that row (its id is returned).
    assert catalog.move_image(ids[0], ROOT, "new/a.jpg", mtime_ns=42) == [ids[1]]
    moved = catalog.get_image(ids[0], model_id)
    assert (moved.image.path, moved.image.folder, moved.image.mtime_ns) == ("new/a.jpg", "new", 42)
    assert moved.caption is not None and catalog.load_embeddings(model_id)[0].tolist() == [ids[0]]
    with pytest.raises(KeyError):
        catalog.move_image(12345, ROOT, "z.jpg")


def test_storage_catalog_images_needing_work_per_model(catalog: Catalog) -> None:
    model_a = catalog.get_or_create_model("a", "c", DIM)
    model_b = catalog.get_or_create_model("b", "c", DIM)
    ids = catalog.store_indexed(model_a, [_indexed("1.jpg"), _indexed("2.jpg")])
    pending = catalog.upsert_image(_meta("3.jpg"))
    catalog.record_error(ROOT, "4.jpg", 1, 1, "nope")
    assert [r.id for r in catalog.images_needing_work(model_a)] == [pending]
    assert [r.id for r in catalog.images_needing_work(model_b)] == [*ids, pending]
    assert len(catalog.images_needing_work(model_b, limit=1)) == 1
    assert catalog.images_needing_work(model_b, root="/else") == []


def test_storage_catalog_fingerprint_changes_with_every_write(catalog: Catalog) -> None:
    model_id = catalog.get_or_create_model("m", "c", DIM)
    seen = {catalog.embedding_fingerprint(model_id).token}
    ids = catalog.store_indexed(model_id, [_indexed("1.jpg"), _indexed("2.jpg")])
    seen.add(catalog.embedding_fingerprint(model_id).token)
    catalog.store_results(model_id, [ImageResult(ids[0], _vector(5))])  # replace one vector
    seen.add(catalog.embedding_fingerprint(model_id).token)
    catalog.delete_images([ids[1]])
    seen.add(catalog.embedding_fingerprint(model_id).token)
    assert len(seen) == 4
    snapshot = catalog.embedding_snapshot(model_id)
    assert snapshot.fingerprint == catalog.embedding_fingerprint(model_id)
    assert snapshot.ids.tolist() == [ids[0]] and snapshot.vectors.dtype == np.float32


def test_storage_catalog_load_embeddings_round_trips_bytes(catalog: Catalog) -> None:
    model_id = catalog.get_or_create_model("m", "c", DIM)
    files = [_indexed(f"{i}.jpg", seed=i) for i in range(30)]
    ids = catalog.store_indexed(model_id, files)
    loaded_ids, vectors = catalog.load_embeddings(model_id)
    assert loaded_ids.dtype == np.int64 and vectors.shape == (30, DIM)
    assert np.array_equal(vectors, np.stack([f.embedding for f in files]))
    some_ids, some = catalog.get_embeddings(model_id, [ids[5], ids[2], 10_000])
    assert some_ids.tolist() == [ids[2], ids[5]] and np.array_equal(some[1], files[5].embedding)


def test_storage_catalog_browse_filters_and_pages(catalog: Catalog) -> None:
    model_id = catalog.get_or_create_model("m", "c", DIM)
    files = [_indexed(f"2023/trip/{i}.jpg", taken_at=datetime(2023, 7, 1 + i)) for i in range(5)]
    files += [_indexed(f"2023/tripod/{i}.jpg", taken_at=datetime(2023, 8, 1)) for i in range(2)]
    files += [_indexed(f"2024/{i}.jpg", taken_at=datetime(2024, 1, 1 + i)) for i in range(3)]
    catalog.store_indexed(model_id, files)
    catalog.record_error(ROOT, "2023/trip/broken.jpg", 1, 1, "bad")

    page = catalog.list_images(ImageFilter(folder="2023/trip"), page=0, page_size=2)
    assert page.total == 5 and page.pages == 3  # "tripod" is not under "trip"; errors hidden
    assert [d.image.path for d in page.items] == ["2023/trip/4.jpg", "2023/trip/3.jpg"]
    last = catalog.list_images(ImageFilter(folder="2023/trip"), page=2, page_size=2)
    assert [d.image.path for d in last.items] == ["2023/trip/0.jpg"]
    assert catalog.list_images(ImageFilter(folder="/photos/2023")).total == 7
    assert catalog.list_images(ImageFilter(folder="/elsewhere")).total == 0
    # The library root itself, with or without a trailing slash, and a folder above it.
    for whole_library in ("/photos", "/photos/", "/"):
        assert catalog.list_images(ImageFilter(folder=whole_library)).total == 10
    in_july = ImageFilter(date_from=date(2023, 7, 2), date_to=date(2023, 7, 3))
    assert {d.image.path for d in catalog.list_images(in_july).items} == {
        "2023/trip/1.jpg",
        "2023/trip/2.jpg",
    }
    assert catalog.list_images(ImageFilter(status=None)).total == 11
    assert catalog.list_images(order="path", page_size=1).items[0].image.path == "2023/trip/0.jpg"
    assert catalog.filter_image_ids(ImageFilter(folder="2024"), model_id).size == 3
    with pytest.raises(ValueError):
        catalog.list_images(page=-1)


def test_storage_catalog_folders_count_images_below(catalog: Catalog) -> None:
    catalog.upsert_images(
        [_meta("a/b/1.jpg"), _meta("a/b/2.jpg"), _meta("a/3.jpg"), _meta("top.jpg")]
    )
    catalog.record_error(ROOT, "a/b/broken.jpg", 1, 1, "bad")  # not a photo to show
    counts = {(f.root, f.folder): f.images for f in catalog.folders()}
    assert counts == {(ROOT, ""): 4, (ROOT, "a"): 3, (ROOT, "a/b"): 2}


def test_storage_catalog_photo_date_falls_back_to_mtime(catalog: Catalog) -> None:
    mtime_ns = int(datetime(2020, 5, 6, 12).timestamp() * 1e9)
    image_id = catalog.upsert_image(_meta("n.jpg", mtime_ns=mtime_ns))
    assert catalog.get_image(image_id).image.photo_date == datetime(2020, 5, 6, 12)


def test_storage_legacy_content_hash_reads_size_head_and_tail(tmp_path: Path) -> None:
    # The first format, still stored in older catalogs (tests/test_content_hash.py: the current).
    big = bytes(range(256)) * 1024  # 256 KiB
    (tmp_path / "a").write_bytes(big)
    (tmp_path / "b").write_bytes(big[:100_000] + b"x" + big[100_001:])  # middle differs: same
    (tmp_path / "c").write_bytes(big[:-1] + b"y")  # tail differs
    (tmp_path / "d").write_bytes(b"")
    hashes = [legacy_content_hash(tmp_path / name) for name in "abcd"]
    assert hashes[0] == hashes[1] and hashes[0] != hashes[2] and len(hashes[0]) == 32
    assert hashes[3] != hashes[0]


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 65_537, 100_000, 131_072, 131_073, 300_000])
def test_storage_content_hash_of_bytes_equals_the_file_hash(tmp_path: Path, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    assert content_hash_of_bytes(data) == content_hash(tmp_path / "f")
    assert content_hash_of_bytes(bytearray(data)) == content_hash(tmp_path / "f")


def test_storage_catalog_known_files_loads_100k_rows(catalog: Catalog) -> None:
    # Correctness at re-scan scale only: its speed is a benchmark's business
    # (benchmarks/bench_index.py --rescan, BENCHMARKS.md section 4), not a timed test's.
    rows = [
        (ROOT, f"d{i // 1000}/{i}.jpg", f"d{i // 1000}", i, i, f"{i:032x}", "ok")
        for i in range(100_000)
    ]
    with catalog.db.session(write=True) as session:
        session.connection().exec_driver_sql(
            "INSERT INTO images (root, path, folder, size, mtime_ns, content_hash, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    known = catalog.known_files(ROOT)
    assert len(known) == 100_000
    row = known["d5/5000.jpg"]
    assert (row.size, row.mtime_ns, row.content_hash, row.status) == (
        5000,
        5000,
        f"{5000:032x}",
        "ok",
    )
    assert catalog.known_files("/elsewhere") == {}


def test_storage_catalog_images_missing_caption_per_model(catalog: Catalog) -> None:
    model_a = catalog.get_or_create_model("a", "c", DIM)
    model_b = catalog.get_or_create_model("b", "c", DIM)
    no_caption = IndexedFile(_meta("bare.jpg"), _vector(1))
    bare, _ = catalog.store_indexed(model_a, [no_caption, _indexed("full.jpg")])
    catalog.upsert_image(_meta("pending.jpg"))  # no embedding: images_needing_work covers it
    catalog.store_indexed(model_b, [IndexedFile(_meta("other.jpg", root="/else"), _vector(2))])
    assert [r.id for r in catalog.images_missing_caption(model_a)] == [bare]
    assert catalog.images_missing_caption(model_a, root="/else") == []
    assert [r.path for r in catalog.images_missing_caption(model_b)] == ["other.jpg"]
    catalog.store_results(model_a, [ImageResult(bare, _vector(3), NewCaption("now captioned"))])
    assert catalog.images_missing_caption(model_a) == []
