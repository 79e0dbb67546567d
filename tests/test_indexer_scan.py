"""Scanning finds image files once each and sorts them against the catalog."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from indexer.scan import FoundFile, diff_library, walk_images
from storage.hashing import content_hash
from storage.records import KnownFile
from tests.indexer_support import make_bad_corpus, write_library


def _known(root: Path, files: list[FoundFile]) -> dict[str, KnownFile]:
    return {
        f.relative_path: KnownFile(
            i + 1, f.size, f.mtime_ns, content_hash(root / f.relative_path), "ok"
        )
        for i, f in enumerate(files)
    }


def test_scan_skips_hidden_and_non_images_and_survives_symlink_loops(tmp_path: Path) -> None:
    corpus = make_bad_corpus(tmp_path)
    (tmp_path / "readme.txt").write_text("not an image")
    found = list(walk_images(tmp_path))
    paths = [f.relative_path for f in found]
    assert sorted(paths) == sorted(item.relative_path for item in corpus)
    assert len(paths) == len(set(paths))


def test_scan_follows_a_symlinked_folder_once(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_library(outside, 4, folders=1)
    library = tmp_path / "library"
    library.mkdir()
    os.symlink(outside, library / "linked")
    os.symlink(outside, library / "linked_again")
    found = [f.relative_path for f in walk_images(library)]
    assert len(found) == 4
    assert all(path.startswith("linked/") for path in found)


def test_scan_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        list(walk_images(tmp_path / "nope"))


def test_scan_diff_finds_new_changed_moved_deleted(tmp_path: Path) -> None:
    write_library(tmp_path, 6, folders=2)
    known = _known(tmp_path, list(walk_images(tmp_path)))
    (tmp_path / "album0" / "img_00000.jpg").rename(tmp_path / "album1" / "renamed.jpg")
    (tmp_path / "album0" / "img_00002.jpg").unlink()
    changed = tmp_path / "album1" / "img_00001.jpg"
    changed.write_bytes(changed.read_bytes() + b"\x00")
    write_library(tmp_path / "new", 1, seed=9, folders=1)
    diff = diff_library(tmp_path, walk_images(tmp_path), known)
    assert [m.old_path for m in diff.moved] == ["album0/img_00000.jpg"]
    assert [m.new.relative_path for m in diff.moved] == ["album1/renamed.jpg"]
    assert [f.relative_path for f in diff.new] == ["new/album0/img_00000.jpg"]
    assert [f.relative_path for f in diff.changed] == ["album1/img_00001.jpg"]
    assert list(diff.deleted) == ["album0/img_00002.jpg"]
    assert len(diff.unchanged) == 3
    # only arrivals (possible moves) are hashed by the scan; the pipeline hashes changed files
    assert set(diff.hashes) == {"album1/renamed.jpg", "new/album0/img_00000.jpg"}


def test_scan_duplicate_copies_move_only_once(tmp_path: Path) -> None:
    write_library(tmp_path, 1, folders=1)
    known = _known(tmp_path, list(walk_images(tmp_path)))
    original = tmp_path / "album0" / "img_00000.jpg"
    data = original.read_bytes()
    original.unlink()
    (tmp_path / "a.jpg").write_bytes(data)
    (tmp_path / "b.jpg").write_bytes(data)
    diff = diff_library(tmp_path, walk_images(tmp_path), known)
    assert len(diff.moved) == 1 and len(diff.new) == 1 and not diff.deleted


def test_scan_unchanged_files_are_not_read(tmp_path: Path) -> None:
    write_library(tmp_path, 10)
    known = _known(tmp_path, list(walk_images(tmp_path)))

    def refuse(path: Path) -> str:
        raise AssertionError(f"hashed an unchanged file: {path}")

    diff = diff_library(tmp_path, walk_images(tmp_path), known, hasher=refuse)
    assert len(diff.unchanged) == 10 and not diff.new and not diff.changed


def test_scan_rescan_of_many_unchanged_files_reads_none_of_them(tmp_path: Path) -> None:
    # 2,000 empty files; the 100,000-file re-scan's speed is benchmarks/bench_index.py --rescan.
    for folder in range(4):
        (tmp_path / f"f{folder}").mkdir()
        for index in range(500):
            (tmp_path / f"f{folder}" / f"{index}.jpg").touch()
    known = {
        f.relative_path: KnownFile(1, f.size, f.mtime_ns, None, "ok") for f in walk_images(tmp_path)
    }

    def refuse(path: Path) -> str:
        raise AssertionError(f"hashed an unchanged file: {path}")

    diff = diff_library(tmp_path, walk_images(tmp_path), known, hasher=refuse)
    assert len(diff.unchanged) == 2_000
    assert not (diff.new or diff.changed or diff.moved or diff.deleted)


def test_scan_hashes_arrivals_in_parallel_like_serially(tmp_path: Path) -> None:
    write_library(tmp_path, 30)
    files = list(walk_images(tmp_path))
    known = _known(tmp_path, files[:10])
    changed = tmp_path / files[0].relative_path
    changed.write_bytes(changed.read_bytes() + b"edited")
    (tmp_path / files[1].relative_path).unlink()  # a vanished row: arrivals may be moves
    unreadable = files[-1].relative_path

    def hasher(path: Path) -> str:
        if path.name == Path(unreadable).name:
            raise PermissionError(13, "Permission denied", str(path))
        return content_hash(path)

    serial = diff_library(tmp_path, walk_images(tmp_path), known, hasher=hasher, workers=1)
    parallel = diff_library(tmp_path, walk_images(tmp_path), known, hasher=hasher, workers=4)
    assert parallel.hashes == serial.hashes
    assert len(parallel.hashes) == 19  # 20 arrivals, one unreadable; the changed file waits
    assert unreadable not in parallel.hashes
    assert files[0].relative_path not in parallel.hashes
    assert [f.relative_path for f in parallel.new] == [f.relative_path for f in serial.new]


def test_scan_hashes_nothing_when_no_vanished_row_could_match(tmp_path: Path) -> None:
    write_library(tmp_path, 12)
    files = list(walk_images(tmp_path))
    known = _known(tmp_path, files[:4])
    calls: list[Path] = []

    def hasher(path: Path) -> str:
        calls.append(path)
        return content_hash(path)

    diff = diff_library(tmp_path, walk_images(tmp_path), known, hasher=hasher)
    assert len(diff.new) == 8 and not diff.moved and not diff.hashes and not calls


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_decode_workers_hash_files_as_the_scan_does(tmp_path: Path, backend: str) -> None:
    from indexer.decode import DecodeConfig, decode_all

    write_library(tmp_path, 5)
    corpus = make_bad_corpus(tmp_path / "bad")
    paths = [tmp_path / f.relative_path for f in walk_images(tmp_path)]
    assert len(paths) >= 5 + len(corpus) // 2
    config = DecodeConfig(image_size=32, workers=2, backend=backend, chunk_size=3, hash_files=True)
    results = list(decode_all(paths, config))
    errors = 0
    for path, result in zip(paths, results, strict=True):
        try:
            expected = content_hash(path)
        except OSError:
            expected = None  # unreadable: no hash, and decoding records why
        assert result.content_hash == expected, path
        errors += result.image is None
    assert errors >= 5  # failed files keep their hash too (the catalog stores it with the error)
    unasked = list(decode_all(paths[:3], DecodeConfig(image_size=32, workers=2)))
    assert [r.content_hash for r in unasked] == [None] * 3


def test_scan_does_not_climb_a_link_to_a_folder_above_the_library(tmp_path: Path) -> None:
    write_library(tmp_path / "beside", 3, folders=1)  # not part of the library
    library = tmp_path / "library"
    write_library(library, 2, folders=1)
    os.symlink("..", library / "album0" / "up_two")  # the library root
    os.symlink("../..", library / "album0" / "up_three")  # above it: would bring in "beside"
    found = sorted(f.relative_path for f in walk_images(library))
    assert found == ["album0/img_00000.jpg", "album0/img_00001.jpg"]


def test_scan_skips_names_that_are_not_utf8_and_reports_them(tmp_path: Path) -> None:
    write_library(tmp_path, 2, folders=1)
    source = tmp_path / "album0" / "img_00000.jpg"
    bad_file = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: a lone surrogate in Python
    bad_folder = os.fsdecode(b"\xe9t\xe9")
    try:
        (tmp_path / bad_file).write_bytes(source.read_bytes())
        (tmp_path / bad_folder).mkdir()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    (tmp_path / bad_folder / "x.jpg").write_bytes(source.read_bytes())
    unstorable: list[str] = []
    found = [f.relative_path for f in walk_images(tmp_path, unstorable)]
    assert sorted(found) == ["album0/img_00000.jpg", "album0/img_00001.jpg"]
    assert sorted(unstorable) == sorted([bad_file, bad_folder + "/"])
