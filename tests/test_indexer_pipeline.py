"""The indexer keeps catalog and vector index in step with the folder, run after run."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import coca
import storage
from indexer import pipeline
from indexer.decode import DecodeConfig
from indexer.encode import EncodeConfig
from indexer.pipeline import (
    IndexConfig,
    IndexerBusyError,
    IndexSummary,
    exclusive_writer,
    register_model,
    run_index,
)
from tests.indexer_support import (
    fast_decoding,
    make_bad_corpus,
    save_tiny_bundle,
    write_library,
    write_photo,
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    torch.set_num_threads(1)
    return coca.load(save_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle")))


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    return coca.load(save_tiny_bundle(tmp_path_factory.mktemp("other_bundle"), seed=1))


class Library:
    """A photo folder, a data folder and helpers to index and check them."""

    def __init__(self, root: Path, model: torch.nn.Module) -> None:
        self.photos = root / "photos"
        self.data = root / "data"
        self.catalog = storage.open_catalog(self.data / "catalog.db")
        self.model = model

    def index_path(self, model: torch.nn.Module) -> Path:
        return self.data / f"vectors-{register_model(self.catalog, model)}.faiss"

    def index(self, model: torch.nn.Module | None = None, captions: bool = True) -> IndexSummary:
        model = model or self.model
        config = IndexConfig(
            photos_dir=self.photos,
            index_path=self.index_path(model),
            decode=DecodeConfig(workers=2),
            encode=EncodeConfig(batch_size=4, captions=captions, decoding=fast_decoding()),
        )
        return run_index(config, model, self.catalog)

    def paths(self) -> dict[str, int]:
        return {path: row.id for path, row in self.catalog.known_files(self.root_key).items()}

    @property
    def root_key(self) -> str:
        return self.photos.resolve().as_posix()

    def assert_consistent(self, model: torch.nn.Module | None = None) -> None:
        """Catalog embeddings == saved index ids, and one ok row per decodable file."""
        model = model or self.model
        model_id = register_model(self.catalog, model)
        ids, _ = self.catalog.load_embeddings(model_id)
        saved = storage.VectorIndex.load(self.index_path(model))
        assert sorted(saved.ids().tolist()) == sorted(ids.tolist())
        assert len(set(ids.tolist())) == len(ids)
        ok_rows = {
            r.id for r in self.catalog.known_files(self.root_key).values() if r.status == "ok"
        }
        assert ok_rows == set(ids.tolist())


@pytest.fixture()
def library(tmp_path: Path, tiny_model: torch.nn.Module) -> Library:
    return Library(tmp_path, tiny_model)


def test_pipeline_indexes_a_library_with_bad_files(library: Library) -> None:
    write_library(library.photos, 6)
    corpus = make_bad_corpus(library.photos / "bad")
    bad = sum(not item.decodes for item in corpus)
    summary = library.index()
    assert summary.indexed == 6 + len(corpus) - bad
    assert summary.errors == bad
    library.assert_consistent()
    known = library.catalog.known_files(library.root_key)
    assert known["bad/zero_bytes.jpg"].status == "error"
    assert known["album0/img_00000.jpg"].status == "ok"
    model_id = register_model(library.catalog, library.model)
    detail = library.catalog.get_image(known["album0/img_00000.jpg"].id, model_id)
    assert detail is not None and detail.caption is not None
    assert detail.caption.decoding["generation_type"] == "greedy"
    assert detail.image.width == 64 and detail.image.height == 48


def test_pipeline_stores_content_hashes_computed_beside_decoding(library: Library) -> None:
    write_library(library.photos, 6)
    make_bad_corpus(library.photos / "bad")
    library.index()  # no vanished rows: the scan hashes nothing, the decode workers do
    known = library.catalog.known_files(library.root_key)
    readable = 0
    for path, row in known.items():
        try:
            expected = storage.content_hash(library.photos / path)
        except OSError:
            continue  # unreadable files keep no hash
        assert row.content_hash == expected, path
        readable += 1
    assert readable >= 6 + 10  # the good photos and the readable bad files (errors keep hashes)
    edited = library.photos / "album0" / "img_00000.jpg"
    write_photo(edited, seed=77)  # changed in place: hashed after the scan, row updated
    library.index()
    row = library.catalog.known_files(library.root_key)["album0/img_00000.jpg"]
    assert row.content_hash == storage.content_hash(edited)


def test_pipeline_keeps_the_garbage_collector_off_older_objects_during_the_run(
    library: Library,
) -> None:
    write_library(library.photos, 6)
    frozen_during: list[int] = []
    config = IndexConfig(
        photos_dir=library.photos,
        index_path=library.index_path(library.model),
        decode=DecodeConfig(workers=1, backend="threads"),
        encode=EncodeConfig(batch_size=4, decoding=fast_decoding()),
    )
    run_index(
        config,
        library.model,
        library.catalog,
        lambda _: frozen_during.append(gc.get_freeze_count()),
    )
    assert frozen_during and min(frozen_during) > 0
    assert gc.get_freeze_count() == 0  # lifted at the end: older garbage is collectable again


def test_pipeline_leaves_a_callers_own_heap_freeze_in_place(library: Library) -> None:
    write_library(library.photos, 3)
    gc.freeze()
    try:
        frozen_before = gc.get_freeze_count()
        assert library.index().indexed == 3
        # Not thawed by the run (frozen objects that die still leave the count, hence not ==).
        assert gc.get_freeze_count() > frozen_before // 2
    finally:
        gc.unfreeze()


def test_pipeline_counts_a_name_that_is_not_utf8_as_an_error_and_indexes_the_rest(
    library: Library,
) -> None:
    photos = write_library(library.photos, 3)
    try:
        (library.photos / os.fsdecode(b"caf\xe9.jpg")).write_bytes(photos[0].read_bytes())
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    summary = library.index()
    assert (summary.indexed, summary.errors) == (3, 1)
    assert sorted(library.paths()) == sorted(
        p.relative_to(library.photos).as_posix() for p in photos
    )


def test_pipeline_second_run_skips_everything(library: Library) -> None:
    write_library(library.photos, 5)
    library.index()
    again = library.index()
    assert (again.indexed, again.unchanged, again.errors) == (0, 5, 0)


def test_pipeline_incremental_add_modify_rename_move_delete(library: Library) -> None:
    write_library(library.photos, 6, folders=2)
    library.index()
    before = library.paths()
    album0 = library.photos / "album0"
    (album0 / "img_00000.jpg").rename(album0 / "renamed.jpg")
    (library.photos / "moved").mkdir()
    (album0 / "img_00002.jpg").rename(library.photos / "moved" / "img_00002.jpg")
    (album0 / "img_00004.jpg").unlink()
    write_photo(library.photos / "album1" / "img_00001.jpg", seed=999)  # new content, same name
    write_photo(library.photos / "added.jpg", seed=1000)
    summary = library.index()
    assert (summary.indexed, summary.moved, summary.removed, summary.unchanged) == (2, 2, 1, 2)
    after = library.paths()
    assert after["album0/renamed.jpg"] == before["album0/img_00000.jpg"]  # keeps its row
    assert after["moved/img_00002.jpg"] == before["album0/img_00002.jpg"]
    assert "album0/img_00004.jpg" not in after
    assert after["album1/img_00001.jpg"] == before["album1/img_00001.jpg"]
    assert len(after) == 6
    library.assert_consistent()


def test_pipeline_modified_file_gets_a_new_embedding(library: Library) -> None:
    path = write_photo(library.photos / "a.jpg", seed=1)
    library.index()
    model_id = register_model(library.catalog, library.model)
    _, old = library.catalog.load_embeddings(model_id)
    write_photo(path, seed=2, size=(80, 60))
    assert library.index().indexed == 1
    _, new = library.catalog.load_embeddings(model_id)
    assert not np.allclose(old, new)
    library.assert_consistent()


def test_pipeline_model_change_reembeds_and_recaptions(
    library: Library, other_model: torch.nn.Module
) -> None:
    write_library(library.photos, 4)
    library.index()
    summary = library.index(model=other_model)
    assert summary.indexed == 4
    library.assert_consistent(other_model)
    library.assert_consistent()  # the first model's data stays usable
    assert register_model(library.catalog, other_model) != register_model(
        library.catalog, library.model
    )


def test_pipeline_rebuilds_a_deleted_or_corrupt_index(library: Library) -> None:
    write_library(library.photos, 5)
    library.index()
    index_path = library.index_path(library.model)
    index_path.unlink()
    assert library.index().indexed == 0
    library.assert_consistent()
    index_path.write_bytes(b"garbage" * 10)
    library.index()
    library.assert_consistent()


def test_pipeline_no_captions_stores_embeddings_only(library: Library) -> None:
    write_library(library.photos, 3)
    library.index(captions=False)
    model_id = register_model(library.catalog, library.model)
    known = library.catalog.known_files(library.root_key)
    detail = library.catalog.get_image(next(iter(known.values())).id, model_id)
    assert detail is not None and detail.caption is None
    library.assert_consistent()


def test_pipeline_captions_a_no_captions_run_on_the_next_run(library: Library) -> None:
    write_library(library.photos, 5)
    library.index(captions=False)
    model_id = register_model(library.catalog, library.model)
    ids = sorted(library.paths().values())
    assert [r.id for r in library.catalog.images_missing_caption(model_id)] == ids
    summary = library.index()
    assert (summary.indexed, summary.unchanged) == (5, 0)  # redone, so not also unchanged
    assert library.catalog.images_missing_caption(model_id) == []
    details = library.catalog.get_images(ids, model_id)
    assert all(d.caption is not None and d.caption.model_id == model_id for d in details)
    library.assert_consistent()
    assert library.index().indexed == 0  # nothing left to do
    assert library.index(captions=False).indexed == 0  # embeddings-only runs don't redo them


def test_pipeline_readers_see_no_lock_errors_while_indexing(library: Library) -> None:
    write_library(library.photos, 24)
    reader = storage.open_catalog(library.data / "catalog.db")
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_loop() -> None:
        while not stop.is_set():
            try:
                reader.stats()
                reader.list_images(storage.ImageFilter(), page_size=10)
                reader.search_captions("a photo", model_id=1)
            except BaseException as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)
                return

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        library.index()
    finally:
        stop.set()
        thread.join()
    assert errors == []


def test_pipeline_refuses_a_second_indexer_on_the_same_data(library: Library) -> None:
    write_library(library.photos, 1)
    with exclusive_writer(library.index_path(library.model)):
        with pytest.raises(IndexerBusyError):
            library.index()


def test_pipeline_rejects_a_missing_photo_folder(library: Library) -> None:
    with pytest.raises(NotADirectoryError):
        library.index()


def test_pipeline_model_failure_stops_the_run_and_the_next_run_finishes_in_order(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model runs on its own thread: its error still stops the run (batches before it stay
    committed), and rows get their own image's vector whatever the threads' timing."""
    write_library(library.photos, 14)
    model = library.model
    real = model.encode_image_with_tokens
    calls = {"n": 0}

    def failing_on_third_batch(pixels: torch.Tensor):  # noqa: ANN202 - the model's own type
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")
        return real(pixels)

    monkeypatch.setattr(model, "encode_image_with_tokens", failing_on_third_batch)
    with pytest.raises(RuntimeError, match="simulated"):
        library.index()  # batches of 4: two commit, the third fails
    model_id = register_model(library.catalog, model)
    ids, _ = library.catalog.load_embeddings(model_id)
    assert len(ids) == 8
    monkeypatch.setattr(model, "encode_image_with_tokens", real)
    summary = library.index()
    assert summary.indexed == 6 and summary.errors == 0
    library.assert_consistent()
    ids, vectors = library.catalog.load_embeddings(model_id)
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    paths = sorted(library.paths().items())
    with torch.inference_mode():
        expected = torch.cat(
            [
                model.encode_image(model.preprocess(_open_rgb(library.photos / p))[None])
                for p, _ in paths
            ]
        ).numpy()
    stored = np.stack([by_id[image_id] for _, image_id in paths])
    # JPEG draft decoding moves the indexer's vectors slightly off model.preprocess's; each row
    # must still be nearest to its own photo's vector.
    similarity = stored @ expected.T
    assert (similarity.argmax(axis=1) == np.arange(len(paths))).all()
    assert similarity.diagonal().min() > 0.99


def _open_rgb(path: Path):  # noqa: ANN202 - PIL.Image.Image
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def test_pipeline_stops_when_a_decode_result_comes_for_another_file(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are paired with decode results by position; a decoder that returned results out of
    order would give rows other photos' vectors, so the run stops before committing that batch."""
    import indexer.batch_loop

    write_library(library.photos, 6)
    real = indexer.batch_loop.decode_for_model

    def swapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - decode_for_model's own
        results = list(real(*args, **kwargs))
        results[2], results[3] = results[3], results[2]
        yield from results

    monkeypatch.setattr(indexer.batch_loop, "decode_for_model", swapped)
    with pytest.raises(RuntimeError, match="decoder returned"):
        library.index()
    model_id = register_model(library.catalog, library.model)
    ids, _ = library.catalog.load_embeddings(model_id)
    assert len(ids) == 0  # the first batch (4 photos) held the swapped pair: nothing committed
    monkeypatch.setattr(indexer.batch_loop, "decode_for_model", real)
    assert library.index().indexed == 6
    library.assert_consistent()


def test_pipeline_summary_counts_each_file_once(library: Library) -> None:
    """A file redone for a missing caption is indexed, not also unchanged; a file that failed
    before and has not changed is reported as still unreadable."""
    write_library(library.photos, 3)
    (library.photos / "broken.jpg").write_bytes(b"not a photo")
    first = library.index(captions=False)
    assert (first.indexed, first.errors) == (3, 1)
    second = library.index()  # captions now: the three are redone
    assert (second.indexed, second.unchanged, second.errors, second.still_unreadable) == (
        3,
        1,
        0,
        1,
    )


def test_pipeline_a_file_deleted_after_the_scan_is_not_an_error(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = write_library(library.photos, 4)
    library.index()
    write_photo(photos[1], seed=50)  # changed: planned again with its row
    extra = write_photo(library.photos / "extra.jpg", seed=51)  # new
    scan = pipeline.diff_library

    def scan_then_delete(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        diff = scan(*args, **kwargs)
        photos[1].unlink()  # both vanish between the scan and their decode
        extra.unlink()
        return diff

    monkeypatch.setattr(pipeline, "diff_library", scan_then_delete)
    summary = library.index()
    assert (summary.indexed, summary.errors) == (0, 0)
    assert photos[1].relative_to(library.photos).as_posix() not in library.paths()
    assert "extra.jpg" not in library.paths()
    library.assert_consistent()
