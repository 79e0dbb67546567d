"""File bytes from decode worker processes to the indexing process, through shared memory.

On the GPU path each worker reads a JPEG whole (to hash it and check it), and the GPU decoder in
the indexing process needs those same bytes. Piping ~200 KB a photo through the pool costs the
indexing process a pickle read under the GIL; reading the file again there cost ~0.5 ms a photo
on a 16-core H100 host (about 5,300 files/s from 8 threads), which capped the GPU path's decode
stage near 2,600 photos/s. So a worker writes the bytes of a chunk's JPEGs into one segment under
/dev/shm and sends only its name and the offsets; the indexing process maps it (populated in one
call rather than page by page), removes its name at once and hands out views of the mapping, which
is freed when the last view goes.

Written by hand over `os` and `mmap` rather than `multiprocessing.shared_memory`: that class
registers every segment with a resource tracker process, which warns about (and unlinks again)
segments another process created and already removed. A segment whose name outlives a killed run
is removed by the next run (`remove_stale_segments`): names carry the indexing process's pid.
Where /dev/shm is missing or full, `write_segment` returns None and the bytes are read again.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
_PREFIX = "coca-search-"
# Bytes one chunk may put in shared memory; later files of the chunk are read again instead.
# Bounds /dev/shm use at about this times the chunks in flight (~30), whatever the photo sizes.
MAX_SEGMENT_BYTES = 32 * 1024 * 1024
_counter = itertools.count()


@dataclass(frozen=True)
class Segment:
    """Where a worker left file bytes: the segment's name and each file's (offset, length)."""

    name: str
    size: int
    spans: tuple[tuple[int, int], ...]


def write_segment(
    datas: Sequence[bytes | bytearray], limit: int = MAX_SEGMENT_BYTES
) -> Segment | None:
    """Worker side: the longest prefix of `datas` within `limit` bytes, in one new segment;
    None when nothing fits or shared memory cannot be written (the caller then sends none)."""
    spans: list[tuple[int, int]] = []
    size = 0
    for data in datas:
        if size + len(data) > limit:
            break
        spans.append((size, len(data)))
        size += len(data)
    if not spans or not SHM_DIR.is_dir():
        return None
    name = f"{_PREFIX}{os.getppid()}-{os.getpid()}-{next(_counter)}"
    path = SHM_DIR / name
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        logger.debug("no shared memory segment (%s): the bytes will be read again", error)
        return None
    try:
        os.ftruncate(handle, size)
        for data, (offset, length) in zip(datas, spans, strict=False):
            if os.pwrite(handle, data, offset) != length:  # tmpfs writes whole or fails
                raise OSError(f"short write to {path}")
    except OSError as error:  # /dev/shm full: pwrite fails cleanly (a mapping would SIGBUS)
        logger.debug("cannot fill %s (%s): the bytes will be read again", path, error)
        os.close(handle)
        path.unlink(missing_ok=True)
        return None
    os.close(handle)
    return Segment(name, size, tuple(spans))


def open_segment(segment: Segment) -> list[memoryview]:
    """Indexing-process side: a writable view of each file's bytes, and the name removed.

    Views keep the mapping alive; it is unmapped when the last one is dropped.
    """
    path = SHM_DIR / segment.name
    handle = os.open(path, os.O_RDWR)
    try:
        populate = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map every page in one call
        mapping = mmap.mmap(handle, segment.size, flags=mmap.MAP_SHARED | populate)
    finally:
        os.close(handle)
        path.unlink(missing_ok=True)
    whole = memoryview(mapping)
    return [whole[offset : offset + length] for offset, length in segment.spans]


def discard_segment(segment: Segment) -> None:
    """Remove a segment that will not be opened (its chunk was dropped)."""
    (SHM_DIR / segment.name).unlink(missing_ok=True)


def remove_stale_segments() -> int:
    """Remove segments left by indexing processes that no longer run; how many were removed."""
    if not SHM_DIR.is_dir():
        return 0
    removed = 0
    for path in SHM_DIR.glob(f"{_PREFIX}*"):
        owner = path.name[len(_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
