"""The sample photo library: files, folders, EXIF dates, manifest."""

from pathlib import Path

from PIL import Image

from coca.world import (
    MANIFEST_NAME,
    item_seed,
    parse_caption,
    read_manifest,
    scene_for_seed,
    write_library,
)

EXIF_IFD, DATETIME_ORIGINAL = 0x8769, 0x9003


def test_write_library_writes_images_and_manifest(tmp_path: Path) -> None:
    root = write_library(tmp_path / "photos", count=12, seed=5, width=96, height=72)
    entries = read_manifest(root)
    assert (root / MANIFEST_NAME).is_file() and len(entries) == 12
    suffixes = {Path(e.file).suffix for e in entries}
    assert suffixes == {".jpg", ".png"}
    assert any("/" in e.file for e in entries) and any("/" not in e.file for e in entries)
    for index, entry in enumerate(entries):
        assert entry.scene == scene_for_seed(item_seed(5, index))
        assert len(entry.captions) == 5 and all(parse_caption(c) for c in entry.captions)
        with Image.open(root / entry.file) as image:
            assert image.size == (96, 72)
            exif = image.getexif()
            stamp = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL)
            assert stamp == entry.taken_at.strftime("%Y:%m:%d %H:%M:%S"), entry.file
    assert len({e.taken_at.date() for e in entries}) > 6  # dates spread out for date filters


def test_write_library_is_deterministic(tmp_path: Path) -> None:
    a = write_library(tmp_path / "a", count=4, seed=9, width=64, height=48)
    b = write_library(tmp_path / "b", count=4, seed=9, width=64, height=48)
    for entry in read_manifest(a):
        assert (a / entry.file).read_bytes() == (b / entry.file).read_bytes()
    assert (a / MANIFEST_NAME).read_text() == (b / MANIFEST_NAME).read_text()
