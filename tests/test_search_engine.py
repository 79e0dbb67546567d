"""The search core: ranking, filters, cutoff, hybrid fusion and the errors users can fix."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import torch
from PIL import Image

import coca
import storage
from indexer.decode import DecodeConfig
from indexer.encode import EncodeConfig
from indexer.pipeline import IndexConfig, register_model, run_index
from search_app.search import (
    BadQueryError,
    DataLayout,
    EmptyCatalogError,
    ModelMismatchError,
    SearchEngine,
    SearchFilters,
    _reciprocal_rank_fusion,
    open_engine,
)
from search_app.uploads import open_upload
from tests.indexer_support import fast_decoding, save_tiny_bundle, write_library, write_photo


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    torch.set_num_threads(1)
    return coca.load(save_tiny_bundle(tmp_path_factory.mktemp("search_bundle")))


def index_folder(photos: Path, data: Path, model: torch.nn.Module) -> None:
    layout = DataLayout(data)
    catalog = storage.open_catalog(layout.catalog_path)
    config = IndexConfig(
        photos_dir=photos,
        index_path=layout.index_path(register_model(catalog, model)),
        decode=DecodeConfig(workers=1),
        encode=EncodeConfig(batch_size=8, decoding=fast_decoding()),
    )
    run_index(config, model, catalog)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_model: torch.nn.Module) -> Path:
    """A library of 12 photos with distinct modification dates, indexed; returns its root."""
    root = tmp_path_factory.mktemp("search_library")
    paths = write_library(root / "photos", 12, folders=3)
    for day, path in enumerate(paths):
        stamp = 1_600_000_000 + day * 86_400
        os.utime(path, (stamp, stamp))
    shutil.copy(paths[0], root / "photos" / "copy_of_first.jpg")
    index_folder(root / "photos", root / "data", tiny_model)
    return root


@pytest.fixture()
def engine(indexed: Path, tiny_model: torch.nn.Module) -> SearchEngine:
    return open_engine(indexed / "data", tiny_model)


def test_search_text_returns_ranked_absolute_paths_with_captions(engine: SearchEngine) -> None:
    response = engine.search_text("a photo of noise", k=5)
    assert len(response.results) == 5
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    for result in response.results:
        assert Path(result.path).is_absolute() and Path(result.path).is_file()
        assert result.caption is not None
    assert response.latency_ms > 0


def test_search_min_score_cuts_then_sort_by_date_orders(engine: SearchEngine) -> None:
    ranked = engine.search_text("noise", k=13).results
    cutoff = ranked[4].score
    kept = engine.search_text("noise", k=13, min_score=cutoff, sort_by_date=True)
    assert {r.id for r in kept.results} == {r.id for r in ranked if r.score >= cutoff}
    dates = [r.photo_date for r in kept.results]
    assert dates == sorted(dates, reverse=True)
    assert kept.cut_off == 13 - len(kept.results)


def test_search_folder_and_date_filters(engine: SearchEngine, indexed: Path) -> None:
    in_album = engine.search_text("noise", k=10, filters=SearchFilters(folder="album1"))
    assert in_album.results
    assert all("/photos/album1/" in r.path for r in in_album.results)
    absolute = str((indexed / "photos" / "album2").resolve())
    assert all(
        "/album2/" in r.path
        for r in engine.search_text("x", k=10, filters=SearchFilters(folder=absolute)).results
    )
    first = min(r.photo_date for r in engine.search_text("noise", k=13).results)
    only_first_day = SearchFilters(date_from=first.date(), date_to=first.date())
    dated = engine.search_text("noise", k=10, filters=only_first_day).results
    assert dated and all(r.photo_date.date() == first.date() for r in dated)
    none = engine.search_text("noise", filters=SearchFilters(date_to=date(1990, 1, 1)))
    assert none.results == []


def test_search_find_similar_puts_the_duplicate_first(engine: SearchEngine, indexed: Path) -> None:
    catalog = engine.catalog
    known = catalog.known_files((indexed / "photos").resolve().as_posix())
    first, copy = known["album0/img_00000.jpg"].id, known["copy_of_first.jpg"].id
    similar = engine.find_similar(first, k=3)
    assert first not in [r.id for r in similar.results]
    assert similar.results[0].id == copy
    assert similar.results[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(similar.results) == 3  # k results, the photo itself left out
    # The score cutoff applies here as in a text search, and says how many it dropped.
    close = engine.find_similar(first, k=3, min_score=0.999)
    assert [r.id for r in close.results] == [copy] and close.cut_off == 2


def test_search_image_finds_the_same_photo(engine: SearchEngine, indexed: Path) -> None:
    image = Image.open(indexed / "photos" / "album1" / "img_00001.jpg")
    top = engine.search_image(image, k=1).results[0]
    assert top.path.endswith("album1/img_00001.jpg")
    assert top.score > 0.99


def test_search_hybrid_fuses_caption_matches(engine: SearchEngine) -> None:
    caption = engine.search_text("noise", k=13).results[-1].caption
    assert caption
    word = max(caption.split(), key=len)
    hybrid = engine.search_text(word, k=13, hybrid=True)
    assert hybrid.hybrid
    assert any(r.caption_match for r in hybrid.results)
    assert all(r.fused_score is not None for r in hybrid.results)
    fused = [r.fused_score for r in hybrid.results]
    assert fused == sorted(fused, reverse=True)


def test_search_rrf_rewards_agreement() -> None:
    fused = _reciprocal_rank_fusion([[1, 2, 3], [3, 1]])
    assert max(fused, key=fused.get) == 1
    assert fused[3] > fused[2]


def test_search_bad_queries_raise_clear_errors(engine: SearchEngine) -> None:
    for query in ["", "   "]:
        with pytest.raises(BadQueryError, match="type a few words"):
            engine.search_text(query)
    with pytest.raises(BadQueryError, match="characters"):
        engine.search_text("word " * 200)
    with pytest.raises(BadQueryError, match="too long"):
        engine.search_text("cat " * 90)
    with pytest.raises(BadQueryError):
        engine.search_text("car", k=0)
    with pytest.raises(BadQueryError):
        engine.find_similar(999_999)
    with pytest.raises(BadQueryError) as not_image:
        open_upload(b"not an image")
    assert "object at 0x" not in str(not_image.value)  # no Python repr shown to the user
    with pytest.raises(BadQueryError):
        open_upload(b"")


def test_search_upload_too_large_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buffer, "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 90,000 pixels: over twice the limit
    with pytest.raises(BadQueryError, match="too large to open .90,000 pixels."):
        open_upload(buffer.getvalue())


def test_search_empty_catalog_and_missing_data_are_clear(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    with pytest.raises(EmptyCatalogError, match="index your photos"):
        open_engine(tmp_path / "nothing", tiny_model)
    storage.open_catalog(DataLayout(tmp_path).catalog_path)
    engine = open_engine(tmp_path, tiny_model)
    with pytest.raises(EmptyCatalogError):
        engine.search_text("a dog")


def test_search_model_mismatch_is_reported(indexed: Path, tmp_path: Path) -> None:
    other = coca.load(save_tiny_bundle(tmp_path / "other", seed=5))
    engine = open_engine(indexed / "data", other)
    with pytest.raises(ModelMismatchError, match="another model"):
        engine.search_text("a dog")


def test_search_sees_photos_indexed_after_it_opened(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    photos = tmp_path / "photos"
    write_library(photos, 3)
    index_folder(photos, tmp_path / "data", tiny_model)
    engine = open_engine(tmp_path / "data", tiny_model)
    assert len(engine.search_text("x", k=10).results) == 3
    write_photo(photos / "late.jpg", seed=77)
    index_folder(photos, tmp_path / "data", tiny_model)
    assert len(engine.search_text("x", k=10).results) == 4


def test_search_rebuilds_in_memory_from_a_corrupt_index_file(
    indexed: Path, tiny_model: torch.nn.Module, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(indexed / "data", data)
    index_files = list(data.glob("vectors-model*.faiss"))
    assert index_files
    index_files[0].write_bytes(b"not a faiss file")
    engine = open_engine(data, tiny_model)
    assert len(engine.search_text("noise", k=13).results) == 13
    assert index_files[0].read_bytes() == b"not a faiss file"  # readers never write the index


def test_search_engine_imports_no_indexer() -> None:
    # The package boundary (docs/ARCHITECTURE.md): search_app uses coca and storage only.
    code = (
        "import sys, search_app.search; "
        "bad = sorted(m for m in sys.modules if m == 'indexer' or m.startswith('indexer.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
