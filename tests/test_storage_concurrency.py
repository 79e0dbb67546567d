"""The app reads the catalog while the indexer writes it: no "database is locked", ever."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from storage import ImageFilter, open_catalog

REPO = Path(__file__).resolve().parents[1]
BATCHES = 15

# The writer runs in its own process, as the indexer does: batches of 50 images with embeddings
# and captions, each batch one transaction, plus moves, errors and deletes.
WRITER = """
import sys
import numpy as np
from storage import ImageMeta, IndexedFile, NewCaption, open_catalog

catalog = open_catalog(sys.argv[1])
model_id = catalog.get_or_create_model("m", "c", 8)
rng = np.random.default_rng(0)
for batch in range(int(sys.argv[2])):
    files = [
        IndexedFile(
            ImageMeta("/lib", f"b{batch}/{i}.jpg", 100, batch, f"{batch}-{i}"),
            rng.standard_normal(8).astype(np.float32),
            NewCaption(f"a photo of a dog number {i}", {"seq_len": 20}, -1.0),
        )
        for i in range(50)
    ]
    ids = catalog.store_indexed(model_id, files)
    catalog.record_error("/lib", f"b{batch}/bad.jpg", 0, 0, "truncated")
    catalog.move_image(ids[0], "/lib", f"moved/{batch}.jpg")
    catalog.delete_images(ids[-2:])
print("done")
"""


def _read_until(catalog, stop: threading.Event, errors: list[BaseException], counts: list[int]):
    try:
        while not stop.is_set():
            model_ids = [m.id for m in catalog.list_models()]
            page = catalog.list_images(ImageFilter(folder="b1"), page=0, page_size=20)
            counts.append(page.total)
            catalog.known_files("/lib")
            catalog.folders()
            catalog.stats()
            for model_id in model_ids:
                catalog.search_captions("dog", model_id, limit=20)
                catalog.embedding_snapshot(model_id)
                catalog.get_images(
                    [hit.image_id for hit in catalog.search_captions("photo", model_id)]
                )
    except BaseException as error:
        errors.append(error)


def test_storage_concurrency_readers_never_see_database_locked(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    open_catalog(path).db.dispose()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(BATCHES)],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader_catalog = open_catalog(path)
    stop = threading.Event()
    errors: list[BaseException] = []
    counts: list[int] = []
    readers = [
        threading.Thread(target=_read_until, args=(reader_catalog, stop, errors, counts))
        for _ in range(2)
    ]
    for reader in readers:
        reader.start()
    try:
        out, err = writer.communicate(timeout=240)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=60)
    assert writer.returncode == 0, err
    assert out.strip() == "done"
    assert errors == [], errors
    assert len(counts) > 2  # the readers really ran alongside the writer
    stats = reader_catalog.stats()
    assert stats.ok == BATCHES * 48 and stats.errors == BATCHES
    assert stats.models[0].embeddings == BATCHES * 48


def test_storage_concurrency_two_writers_wait_for_each_other(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    catalogs = [open_catalog(path), open_catalog(path)]
    errors: list[BaseException] = []

    def write(catalog, tag: str) -> None:
        try:
            for i in range(30):
                catalog.record_error("/lib", f"{tag}/{i}.jpg", 1, 1, "x")
                time.sleep(0)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=write, args=(c, t)) for c, t in zip(catalogs, "ab", strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert catalogs[0].stats().errors == 60
