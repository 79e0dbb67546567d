"""The saved vector index follows the catalog, and search never trusts a file that fell behind.

Three ways a file used to drift: a run that only removed photos, a photo that turned unreadable,
and a run stopped (Ctrl-C, kill -9) between its commits and its save.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

import coca
import search_app.search as search_module
import storage
from indexer import pipeline
from indexer.decode import DecodeConfig
from indexer.encode import EncodeConfig
from indexer.pipeline import IndexConfig, IndexSummary, register_model, run_index
from indexer.records import IndexProgress
from search_app.search import DataLayout, EmptyCatalogError, open_engine
from storage.vector_files import sidecar_path, writer_active, writer_lock_path
from tests.indexer_support import fast_decoding, save_tiny_bundle, write_library


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    torch.set_num_threads(1)
    return coca.load(save_tiny_bundle(tmp_path_factory.mktemp("staleness_bundle")))


class Library:
    """A photo folder and its data folder, indexed with the tiny model."""

    def __init__(self, root: Path, model: torch.nn.Module) -> None:
        self.photos, self.data, self.model = root / "photos", root / "data", model
        self.photos.mkdir(parents=True, exist_ok=True)
        self.catalog = storage.open_catalog(DataLayout(self.data).catalog_path)
        self.model_id = register_model(self.catalog, model)
        self.index_path = DataLayout(self.data).index_path(self.model_id)

    def index(self, progress=None) -> IndexSummary:  # noqa: ANN001 - ProgressCallback | None
        config = IndexConfig(
            photos_dir=self.photos,
            index_path=self.index_path,
            decode=DecodeConfig(workers=1),
            encode=EncodeConfig(batch_size=2, decoding=fast_decoding()),
        )
        return run_index(config, self.model, self.catalog, progress)

    def embedded_ids(self) -> list[int]:
        return sorted(self.catalog.load_embeddings(self.model_id)[0].tolist())

    def assert_saved_index_matches_catalog(self) -> None:
        saved = storage.VectorIndex.load(self.index_path)
        assert sorted(saved.ids().tolist()) == self.embedded_ids()
        assert saved.fingerprint == self.catalog.embedding_fingerprint(self.model_id).token

    def keep_index_file(self, folder: Path) -> None:
        """Copy the saved index and its sidecar aside (to put an out-of-date file back later)."""
        folder.mkdir(parents=True, exist_ok=True)
        for path in (self.index_path, sidecar_path(self.index_path)):
            shutil.copy2(path, folder / path.name)

    def restore_index_file(self, folder: Path) -> None:
        for path in (self.index_path, sidecar_path(self.index_path)):
            shutil.copy2(folder / path.name, path)


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


# -- the indexer saves whatever changed the catalog's embeddings -------------------------------


def test_index_staleness_removal_only_run_saves_the_index(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    library = Library(tmp_path, tiny_model)
    paths = write_library(library.photos, 8, folders=2)
    library.index()
    for path in paths[:5]:
        path.unlink()
    assert library.index().removed == 5
    library.assert_saved_index_matches_catalog()
    results = open_engine(library.data, tiny_model).search_text("noise", k=8).results
    assert len(results) == 3


def test_index_staleness_unreadable_photo_leaves_the_saved_index(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    library = Library(tmp_path, tiny_model)
    paths = write_library(library.photos, 4, folders=1)
    library.index()
    broken_id = library.catalog.known_files(library.photos.resolve().as_posix())
    broken_id = broken_id[paths[0].relative_to(library.photos).as_posix()].id
    original = _open(paths[0])
    paths[0].write_bytes(b"no longer a photo")
    assert library.index().errors == 1
    assert broken_id not in library.embedded_ids()
    library.assert_saved_index_matches_catalog()
    # Its own pixels would put it first, had its vector stayed in the index.
    results = open_engine(library.data, tiny_model).search_image(original, k=3).results
    assert [r.id for r in results if r.id == broken_id] == []
    assert len(results) == 3 and all(r.caption for r in results)


# -- search checks the file against the catalog -----------------------------------------------


class _Interrupt:
    """A progress callback that stops the run like Ctrl-C once some batches are committed."""

    def __init__(self, after: int) -> None:
        self.after = after

    def __call__(self, progress: IndexProgress) -> None:
        if progress.done >= self.after:
            raise KeyboardInterrupt


def test_index_staleness_search_after_an_interrupted_first_run(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    library = Library(tmp_path, tiny_model)
    write_library(library.photos, 8, folders=2)
    with pytest.raises(KeyboardInterrupt):
        library.index(_Interrupt(after=4))
    committed = library.embedded_ids()
    assert len(committed) >= 4
    assert storage.VectorIndex.load(library.index_path).ntotal < len(committed)  # not saved
    results = open_engine(library.data, tiny_model).search_text("noise", k=8).results
    assert sorted(r.id for r in results) == committed


def test_index_staleness_open_engine_sees_rows_committed_after_an_empty_load(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    library = Library(tmp_path, tiny_model)
    library.index()  # an empty folder: the saved index is empty and matches the catalog
    engine = open_engine(library.data, tiny_model)
    with pytest.raises(EmptyCatalogError):
        engine.search_text("noise")
    write_library(library.photos, 6, folders=2)
    with pytest.raises(KeyboardInterrupt):
        library.index(_Interrupt(after=2))  # commits, then stops before saving
    results = engine.search_text("noise", k=6).results
    assert sorted(r.id for r in results) == library.embedded_ids()


def test_index_staleness_search_skips_an_old_file_holding_removed_photos(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    library = Library(tmp_path, tiny_model)
    paths = write_library(library.photos, 6, folders=1)
    library.index()
    library.keep_index_file(tmp_path / "old")
    removed = _open(paths[0])
    for path in paths[:5]:
        path.unlink()
    library.index()
    library.restore_index_file(tmp_path / "old")  # as if the removals had never been saved
    # The removed photo's own pixels: in the old file it is the nearest vector.
    results = open_engine(library.data, tiny_model).search_image(removed, k=1).results
    assert [r.id for r in results] == library.embedded_ids()


def test_index_staleness_search_sees_photos_missing_from_an_old_file(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    library = Library(tmp_path, tiny_model)
    write_library(library.photos, 3, folders=1)
    library.index()
    library.keep_index_file(tmp_path / "old")
    write_library(library.photos / "later", 3, seed=9, folders=1)
    library.index()
    library.restore_index_file(tmp_path / "old")  # the catalog's newest rows never saved
    results = open_engine(library.data, tiny_model).search_text("noise", k=10).results
    assert sorted(r.id for r in results) == library.embedded_ids()
    assert len(results) == 6


def test_index_staleness_while_an_indexer_runs_search_serves_its_latest_save(
    tmp_path: Path, tiny_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog moves ahead of every mid-run save; rebuilding from it at each save would cost
    minutes on a large library, so the save is served, with the photos committed since."""
    library = Library(tmp_path, tiny_model)
    write_library(library.photos, 3, folders=1)
    library.index()
    library.keep_index_file(tmp_path / "old")
    write_library(library.photos / "later", 3, seed=9, folders=1)
    library.index()
    library.restore_index_file(tmp_path / "old")  # what a mid-run save looks like
    rebuilds: list[int] = []
    real_rebuild = search_module.open_or_rebuild

    def counting_rebuild(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        rebuilds.append(1)
        return real_rebuild(*args, **kwargs)

    monkeypatch.setattr(search_module, "open_or_rebuild", counting_rebuild)
    with pipeline.exclusive_writer(library.index_path):  # an indexer holds the data folder
        assert writer_active(library.index_path)
        results = open_engine(library.data, tiny_model).search_text("noise", k=10).results
    assert len(results) == 6 and rebuilds == []  # the save, caught up from the catalog
    assert not writer_active(library.index_path)
    results = open_engine(library.data, tiny_model).search_text("noise", k=10).results
    assert len(results) == 6 and rebuilds == [1]  # no indexer: the stale file is rebuilt


def test_index_staleness_a_search_probing_the_lock_does_not_turn_an_indexer_away(
    tmp_path: Path,
) -> None:
    index_path = tmp_path / "vectors-model1.faiss"
    writer_lock_path(index_path).touch()
    handle = os.open(writer_lock_path(index_path), os.O_RDONLY)
    fcntl.flock(handle, fcntl.LOCK_SH)  # a probe caught mid-way, held far longer than it is
    release = threading.Timer(0.2, os.close, (handle,))
    release.start()
    with pipeline.exclusive_writer(index_path):
        assert writer_active(index_path)
    release.join()
    # A real second indexer still fails, after the wait.
    with pipeline.exclusive_writer(index_path), pytest.raises(pipeline.IndexerBusyError):
        with pipeline.exclusive_writer(index_path):
            pass


def test_index_staleness_search_catches_up_with_a_running_indexer(
    tmp_path: Path, tiny_model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Photos committed after the indexer's last save are searchable without waiting for its
    next one (Browse, which reads the catalog, shows them at once)."""
    library = Library(tmp_path, tiny_model)
    write_library(library.photos, 3, folders=1)
    library.index()
    library.keep_index_file(tmp_path / "old")
    engine = open_engine(library.data, tiny_model)
    with pipeline.exclusive_writer(library.index_path):  # an indexer holds the data folder
        assert len(engine.search_text("noise", k=10).results) == 3
        write_library(library.photos / "later", 3, seed=9, folders=1)
        # What a running indexer leaves: rows committed, the file as saved before them (a second
        # run commits them, then the old file goes back, its modification time too).
        monkeypatch.setattr(pipeline, "exclusive_writer", _no_lock)
        library.index()
        library.restore_index_file(tmp_path / "old")
        monkeypatch.setattr(search_module, "CATCH_UP_S", 0.0)
        results = engine.search_text("noise", k=10).results
    assert sorted(r.id for r in results) == library.embedded_ids()


@contextlib.contextmanager
def _no_lock(index_path: Path):  # noqa: ANN202 - stands for exclusive_writer in one test
    yield
