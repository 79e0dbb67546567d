"""Indexing a folder inside, or around, a library root the catalog knows: one row per file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import coca
import storage
from indexer.decode import DecodeConfig
from indexer.encode import EncodeConfig
from indexer.pipeline import IndexConfig, IndexSummary, register_model, run_index
from indexer.roots import Scope, find_scope
from tests.indexer_support import fast_decoding, save_tiny_bundle, write_library


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    torch.set_num_threads(1)
    return coca.load(save_tiny_bundle(tmp_path_factory.mktemp("roots_bundle")))


class DataFolder:
    """One catalog and index that several photo folders are indexed into."""

    def __init__(self, data: Path, model: torch.nn.Module) -> None:
        self.catalog = storage.open_catalog(data / "catalog.db")
        self.model = model
        self.model_id = register_model(self.catalog, model)
        self.index_path = data / f"vectors-{self.model_id}.faiss"

    def index(self, folder: Path) -> IndexSummary:
        config = IndexConfig(
            photos_dir=folder,
            index_path=self.index_path,
            decode=DecodeConfig(workers=1),
            encode=EncodeConfig(batch_size=4, decoding=fast_decoding()),
        )
        return run_index(config, self.model, self.catalog)

    def rows(self) -> dict[tuple[str, str], int]:
        """(root, path) -> image id, over every root."""
        return {
            (root, path): row.id
            for root in self.catalog.roots()
            for path, row in self.catalog.known_files(root).items()
        }

    def assert_one_vector_per_row(self) -> None:
        ids, _ = self.catalog.load_embeddings(self.model_id)
        saved = storage.VectorIndex.load(self.index_path)
        assert sorted(saved.ids().tolist()) == sorted(ids.tolist()) == sorted(self.rows().values())


def test_roots_find_scope_picks_the_outermost_known_root() -> None:
    known = ["/p/lib", "/p/lib/a", "/p/library"]
    assert find_scope(known, Path("/p/lib/a/b")) == Scope(Path("/p/lib"), "a/b/")
    assert find_scope(known, Path("/p/lib")) == Scope(Path("/p/lib"))  # a root is itself
    assert find_scope(known, Path("/p/library2")) == Scope(Path("/p/library2"))  # not a prefix


def test_roots_a_folder_inside_a_known_root_is_that_part_of_it(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    lib = tmp_path / "lib"
    write_library(lib, 6, folders=2)
    data = DataFolder(tmp_path / "data", tiny_model)
    data.index(lib)
    before = data.rows()
    (lib / "album0" / "img_00000.jpg").unlink()  # inside the folder indexed next
    (lib / "album1" / "img_00001.jpg").unlink()  # outside it: not this run's business
    write_library(lib / "album0" / "new", 1, seed=5, folders=1)
    summary = data.index(lib / "album0")
    assert (summary.indexed, summary.removed, summary.unchanged) == (1, 1, 2)
    after = data.rows()
    assert {root for root, _ in after} == {lib.resolve().as_posix()}  # no second root
    root = lib.resolve().as_posix()
    assert (root, "album0/new/album0/img_00000.jpg") in after
    assert (root, "album1/img_00001.jpg") in after  # left for a run over the whole library
    assert after[(root, "album0/img_00002.jpg")] == before[(root, "album0/img_00002.jpg")]
    data.assert_one_vector_per_row()


def test_roots_known_roots_inside_a_folder_join_it_keeping_their_rows(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    lib = tmp_path / "lib"
    write_library(lib / "trips", 4, folders=2)
    write_library(lib / "family", 2, seed=3, folders=1)
    write_library(lib, 2, seed=7, folders=1)  # lib/album0: only in the outer library
    data = DataFolder(tmp_path / "data", tiny_model)
    data.index(lib / "trips")
    data.index(lib / "family")
    trips = data.rows()
    summary = data.index(lib)
    assert (summary.indexed, summary.unchanged) == (2, 6)  # nothing indexed twice
    root = lib.resolve().as_posix()
    after = data.rows()
    assert {r for r, _ in after} == {root}
    old_trips = (lib / "trips").resolve().as_posix()
    assert after[(root, "trips/album1/img_00001.jpg")] == trips[(old_trips, "album1/img_00001.jpg")]
    assert data.catalog.filter_image_ids(storage.ImageFilter(folder="trips"), data.model_id).size
    data.assert_one_vector_per_row()
    assert data.index(lib).indexed == 0


def test_roots_a_renamed_library_folder_keeps_its_rows(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    lib = tmp_path / "lib"
    write_library(lib, 5, folders=2)
    data = DataFolder(tmp_path / "data", tiny_model)
    data.index(lib)
    ids = sorted(data.rows().values())
    lib.rename(tmp_path / "lib-2024")
    summary = data.index(tmp_path / "lib-2024")
    assert (summary.moved, summary.indexed, summary.removed) == (5, 0, 0)
    after = data.rows()
    assert {root for root, _ in after} == {(tmp_path / "lib-2024").resolve().as_posix()}
    assert sorted(after.values()) == ids  # same rows: captions and embeddings kept
    data.assert_one_vector_per_row()


def test_roots_an_absent_library_folder_keeps_rows_no_new_file_matches(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    """A folder that is only absent (an unplugged drive) loses nothing to another folder's run."""
    drive, other = tmp_path / "drive", tmp_path / "other"
    write_library(drive, 3, folders=1)
    write_library(other, 2, seed=4, folders=1)
    data = DataFolder(tmp_path / "data", tiny_model)
    data.index(drive)
    drive.rename(tmp_path / "unplugged")
    summary = data.index(other)
    assert (summary.moved, summary.indexed, summary.removed) == (0, 2, 0)
    roots = {root for root, _ in data.rows()}
    assert roots == {drive.resolve().as_posix(), other.resolve().as_posix()}


def test_roots_an_absent_folder_inside_the_indexed_one_keeps_its_rows(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    """An unplugged drive mounted inside the library folder is not taken in and emptied."""
    lib = tmp_path / "lib"
    write_library(lib / "usb", 3, folders=1)
    write_library(lib / "other", 2, seed=4, folders=1)
    data = DataFolder(tmp_path / "data", tiny_model)
    data.index(lib / "usb")
    usb_rows = data.rows()
    (lib / "usb").rename(tmp_path / "unplugged")
    summary = data.index(lib)
    assert (summary.indexed, summary.removed) == (2, 0)
    assert set(usb_rows.items()) <= set(data.rows().items())  # untouched, under their own root
    data.assert_one_vector_per_row()


def test_roots_a_copy_of_an_absent_folders_photo_is_not_a_move(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    """Only a photo that kept its place in the library moves over from a root that is gone."""
    away, here = tmp_path / "away", tmp_path / "here"
    paths = write_library(away, 2, folders=1)
    write_library(here, 1, seed=4, folders=1)
    data = DataFolder(tmp_path / "data", tiny_model)
    data.index(away)
    before = data.rows()
    away.rename(tmp_path / "away.unplugged")
    copy = here / "copy_of_a_photo.jpg"
    copy.write_bytes((tmp_path / "away.unplugged" / paths[0].relative_to(away)).read_bytes())
    summary = data.index(here)
    assert (summary.moved, summary.indexed) == (0, 2)
    assert set(before.items()) <= set(data.rows().items())


def test_roots_a_renamed_folder_moves_even_beside_a_copy_found_first(
    tmp_path: Path, tiny_model: torch.nn.Module
) -> None:
    """The row goes to the photo at its place, whichever of it and a copy the scan meets first."""
    lib = tmp_path / "lib"
    photo = write_library(lib, 1, folders=1)[0]  # lib/album0/img_00000.jpg
    data = DataFolder(tmp_path / "data", tiny_model)
    data.index(lib)
    (old_id,) = data.rows().values()
    lib.rename(tmp_path / "lib-2024")
    renamed = tmp_path / "lib-2024" / photo.relative_to(lib)
    (renamed.parent / "a_copy.jpg").write_bytes(renamed.read_bytes())  # walked before it
    summary = data.index(tmp_path / "lib-2024")
    assert (summary.moved, summary.indexed) == (1, 1)
    root = (tmp_path / "lib-2024").resolve().as_posix()
    assert data.rows()[(root, "album0/img_00000.jpg")] == old_id
