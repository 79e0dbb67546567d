"""File bytes handed from decode worker processes to the indexing process in shared memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from indexer import shared_bytes
from indexer.shared_bytes import (
    discard_segment,
    open_segment,
    remove_stale_segments,
    write_segment,
)

pytestmark = pytest.mark.skipif(not shared_bytes.SHM_DIR.is_dir(), reason="no /dev/shm")


def _ours() -> list[Path]:
    """Segments named for this process (a worker's parent is the indexing process)."""
    return sorted(shared_bytes.SHM_DIR.glob(f"coca-search-{os.getppid()}-*"))


def test_segment_round_trip_gives_each_file_its_bytes_and_removes_the_name() -> None:
    datas = [b"\xff\xd8first", bytearray(b"second file"), b"", b"x" * 5000]
    segment = write_segment(datas)
    assert segment is not None and len(segment.spans) == 4
    assert (shared_bytes.SHM_DIR / segment.name).exists()
    views = open_segment(segment)
    assert [bytes(view) for view in views] == [bytes(data) for data in datas]
    assert not (shared_bytes.SHM_DIR / segment.name).exists()  # named only until opened
    views[1][0] = ord("S")  # writable, as torch.frombuffer wants
    assert bytes(views[1]) == b"Second file"


def test_segment_takes_the_files_that_fit_and_none_when_nothing_fits() -> None:
    segment = write_segment([b"a" * 10, b"b" * 10, b"c" * 10], limit=25)
    assert segment is not None and segment.spans == ((0, 10), (10, 10))
    assert [bytes(v) for v in open_segment(segment)] == [b"a" * 10, b"b" * 10]
    assert write_segment([b"a" * 30], limit=25) is None
    assert write_segment([]) is None


def test_discarded_segments_leave_nothing_behind() -> None:
    before = _ours()
    segment = write_segment([b"abc"])
    assert segment is not None
    discard_segment(segment)
    assert _ours() == before


def test_stale_segments_of_a_dead_indexer_are_removed_and_live_ones_kept() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(dead.stdout)  # exited: no process has this pid now (barring reuse)
    stale = shared_bytes.SHM_DIR / f"coca-search-{dead_pid}-1-0"
    live = shared_bytes.SHM_DIR / f"coca-search-{os.getpid()}-1-0"
    stale.write_bytes(b"left by a killed run")
    live.write_bytes(b"in use")
    try:
        assert remove_stale_segments() >= 1
        assert not stale.exists() and live.exists()
    finally:
        stale.unlink(missing_ok=True)
        live.unlink(missing_ok=True)


def test_write_segment_returns_none_without_shared_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_bytes, "SHM_DIR", tmp_path / "missing")
    assert write_segment([b"abc"]) is None
