"""The content hash tells apart same-size scans whose middles differ, and old catalogs still match
their moved files by the legacy hash."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import coca
import storage
from indexer.decode import DecodeConfig
from indexer.encode import EncodeConfig
from indexer.pipeline import IndexConfig, IndexSummary, register_model, run_index
from indexer.scan import FoundFile, diff_library, walk_images
from storage.hashing import (
    HASH_PREFIX,
    WHOLE_FILE_BYTES,
    content_hash,
    content_hash_of_bytes,
    is_legacy_hash,
    legacy_content_hash,
    trusted_legacy_hash,
)
from storage.records import KnownFile
from tests.indexer_support import fast_decoding, save_tiny_bundle, write_photo


def _scan(path: Path, shape: str, image_format: str = "BMP", side: int = 400) -> Path:
    """A white page with one coloured shape in the middle: its margins fill the head and tail."""
    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    box = (side * 3 // 8, side * 3 // 8, side * 5 // 8, side * 5 // 8)
    if shape == "circle":
        draw.ellipse(box, fill="red")
    else:
        draw.rectangle(box, fill="blue")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, image_format)
    return path


def _known(root: Path, hasher=content_hash) -> dict[str, KnownFile]:  # noqa: ANN001
    return {
        f.relative_path: KnownFile(i + 1, f.size, f.mtime_ns, hasher(root / f.relative_path), "ok")
        for i, f in enumerate(walk_images(root))
    }


def _paths(files: list[FoundFile]) -> list[str]:
    return [f.relative_path for f in files]


@pytest.mark.parametrize("image_format", ["BMP", "TIFF"])
def test_content_hash_tells_same_size_scans_apart(tmp_path: Path, image_format: str) -> None:
    red = _scan(tmp_path / "red", "circle", image_format)
    blue = _scan(tmp_path / "blue", "square", image_format)
    assert red.stat().st_size == blue.stat().st_size > 2 * 64 * 1024
    assert legacy_content_hash(red) == legacy_content_hash(blue)  # the bug this format fixes
    assert content_hash(red) != content_hash(blue)


def test_content_hash_is_marked_and_fits_the_catalog_column(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "a.jpg", seed=1)
    new, old = content_hash(photo), legacy_content_hash(photo)
    assert new.startswith(HASH_PREFIX) and len(new) == 32 and not is_legacy_hash(new)
    assert len(old) == 32 and is_legacy_hash(old) and new != old


def test_content_hash_samples_the_middle_of_compressed_files(tmp_path: Path) -> None:
    data = bytearray(np.random.default_rng(0).integers(0, 256, 1_000_000, dtype=np.uint8))
    first = content_hash_of_bytes(data)
    # A block is sampled from each eighth of the middle: a change that spans one is seen.
    data[400_000:530_000] = bytes(130_000)
    assert content_hash_of_bytes(data) != first


def _sizes() -> list[int]:
    edge = WHOLE_FILE_BYTES
    return [0, 1, 4, 16_384, edge - 1, edge, edge + 1, edge + 7, 131_073, 300_000, 2_500_001]


@pytest.mark.parametrize("magic", [b"", b"BM", b"II*\x00", b"MM\x00*"])
@pytest.mark.parametrize("size", _sizes())
def test_content_hash_of_bytes_equals_the_file_hash(
    tmp_path: Path, size: int, magic: bytes
) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    data = (magic + data)[:size]
    (tmp_path / "f").write_bytes(data)
    expected = content_hash(tmp_path / "f")
    assert content_hash_of_bytes(data) == expected
    assert content_hash_of_bytes(bytearray(data)) == expected
    assert content_hash_of_bytes(memoryview(data)) == expected


def test_scan_takes_a_same_size_scan_for_new_not_moved(tmp_path: Path) -> None:
    _scan(tmp_path / "scan.bmp", "circle")
    known = _known(tmp_path)
    (tmp_path / "scan.bmp").unlink()
    _scan(tmp_path / "other.bmp", "square")
    diff = diff_library(tmp_path, walk_images(tmp_path), known)
    assert not diff.moved and _paths(diff.new) == ["other.bmp"]
    assert list(diff.deleted) == ["scan.bmp"]
    assert diff.hashes == {"other.bmp": content_hash(tmp_path / "other.bmp")}


def test_scan_matches_a_legacy_row_to_its_moved_file(tmp_path: Path) -> None:
    write_photo(tmp_path / "a" / "photo.jpg", seed=3)
    write_photo(tmp_path / "a" / "gone.jpg", seed=4)
    known = _known(tmp_path, legacy_content_hash)
    (tmp_path / "a" / "photo.jpg").rename(tmp_path / "moved.jpg")
    (tmp_path / "a" / "gone.jpg").unlink()
    write_photo(tmp_path / "fresh.jpg", seed=5)
    diff = diff_library(tmp_path, walk_images(tmp_path), known)
    assert [(m.old_path, m.new.relative_path) for m in diff.moved] == [("a/photo.jpg", "moved.jpg")]
    assert _paths(diff.new) == ["fresh.jpg"] and list(diff.deleted) == ["a/gone.jpg"]
    # Legacy hashes only match: the new file's row gets a format-2 hash from its decode worker.
    assert diff.hashes == {}


def test_scan_matches_legacy_and_new_rows_in_one_run(tmp_path: Path) -> None:
    write_photo(tmp_path / "old.jpg", seed=1)
    write_photo(tmp_path / "new.jpg", seed=2)
    known = _known(tmp_path)
    known["old.jpg"].content_hash = legacy_content_hash(tmp_path / "old.jpg")
    (tmp_path / "old.jpg").rename(tmp_path / "old_moved.jpg")
    (tmp_path / "new.jpg").rename(tmp_path / "new_moved.jpg")
    legacy_calls: list[Path] = []

    def legacy(path: Path) -> str | None:
        legacy_calls.append(path)
        return trusted_legacy_hash(path)

    diff = diff_library(tmp_path, walk_images(tmp_path), known, legacy_hasher=legacy)
    assert sorted((m.old_path, m.new.relative_path) for m in diff.moved) == [
        ("new.jpg", "new_moved.jpg"),
        ("old.jpg", "old_moved.jpg"),
    ]
    assert not diff.new and not diff.deleted
    assert legacy_calls == [tmp_path / "old_moved.jpg"]  # matched files are not hashed again


def test_scan_does_not_trust_a_legacy_hash_of_a_large_scan(tmp_path: Path) -> None:
    _scan(tmp_path / "big.bmp", "circle")
    _scan(tmp_path / "small.bmp", "circle", side=100)  # 30 KB: the legacy hash read all of it
    known = _known(tmp_path, legacy_content_hash)
    (tmp_path / "big.bmp").unlink()
    _scan(tmp_path / "other.bmp", "square")  # same size as big.bmp, same head and tail
    (tmp_path / "small.bmp").rename(tmp_path / "small_moved.bmp")
    assert trusted_legacy_hash(tmp_path / "other.bmp") is None
    diff = diff_library(tmp_path, walk_images(tmp_path), known)
    assert [(m.old_path, m.new.relative_path) for m in diff.moved] == [
        ("small.bmp", "small_moved.bmp")
    ]
    assert _paths(diff.new) == ["other.bmp"] and list(diff.deleted) == ["big.bmp"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    torch.set_num_threads(1)
    return coca.load(save_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle")))


def _index(photos: Path, catalog: storage.Catalog, model: torch.nn.Module) -> IndexSummary:
    config = IndexConfig(
        photos_dir=photos,
        index_path=photos.parent / "vectors.faiss",
        decode=DecodeConfig(workers=2),
        encode=EncodeConfig(batch_size=4, decoding=fast_decoding()),
    )
    return run_index(config, model, catalog)


def _rows(photos: Path, catalog: storage.Catalog) -> dict[str, KnownFile]:
    return catalog.known_files(photos.resolve().as_posix())


def test_pipeline_indexes_a_same_size_scan_as_new(tmp_path: Path, tiny_model) -> None:  # noqa: ANN001
    photos, catalog = tmp_path / "photos", storage.open_catalog(tmp_path / "catalog.db")
    first = _scan(photos / "scan.bmp", "circle")
    _index(photos, catalog, tiny_model)
    old_id = _rows(photos, catalog)["scan.bmp"].id
    first.unlink()
    second = shutil.copy(_scan(tmp_path / "elsewhere.bmp", "square"), photos / "copy.bmp")
    summary = _index(photos, catalog, tiny_model)
    assert (summary.moved, summary.indexed, summary.removed) == (0, 1, 1)
    row = _rows(photos, catalog)["copy.bmp"]
    assert row.id != old_id and row.content_hash == content_hash(second)
    ids, _ = catalog.load_embeddings(register_model(catalog, tiny_model))
    assert ids.tolist() == [row.id]


def test_pipeline_moves_a_file_of_a_legacy_catalog(tmp_path: Path, tiny_model) -> None:  # noqa: ANN001
    photos, catalog = tmp_path / "photos", storage.open_catalog(tmp_path / "catalog.db")
    photo = write_photo(photos / "a" / "photo.jpg", seed=8)
    _index(photos, catalog, tiny_model)
    row = _rows(photos, catalog)["a/photo.jpg"]
    with catalog.db.session(write=True) as session:  # as an older coca-search stored it
        session.connection().exec_driver_sql(
            "UPDATE images SET content_hash = ? WHERE id = ?", (legacy_content_hash(photo), row.id)
        )
    model_id = register_model(catalog, tiny_model)
    caption = catalog.get_image(row.id, model_id).caption
    photo.rename(photos / "renamed.jpg")
    summary = _index(photos, catalog, tiny_model)
    assert (summary.moved, summary.indexed, summary.removed) == (1, 0, 0)
    assert _rows(photos, catalog)["renamed.jpg"].id == row.id
    assert catalog.get_image(row.id, model_id).caption == caption
