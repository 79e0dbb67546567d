"""The catalog's content hash: recognises a moved or renamed file without re-indexing it.

Format 2 (`content_hash`, "2:" + 30 hex digits, so it fits the 32-character column beside the
old ones): blake2b-120 over the file size and
- the whole file for BMP and TIFF, and for any file of at most 64 KiB;
- otherwise a 16 KiB head, a 16 KiB tail and 8 blocks of 4 KiB spread evenly between them.

Why the split: uncompressed pixels (BMP, TIFF strips) map rows to bytes one to one, so two scans
of the same size with white margins share any head, tail or sample we could pick while their
middles differ; the first format (head and tail only) took such a new photo for a moved one and
gave it the old photo's caption and embedding. Hashing every photo whole costs too much on the
decode workers' path: blake2b runs at ~690 us/MB here, ~210 us for a 300 KB JPEG against ~2.4 ms
to decode it, and a scan would read every arriving file in full. Compressed formats (JPEG, PNG,
WebP, GIF, HEIF) code the image as a bit stream in which a change shifts every later byte, so
their head, tail and samples differ; 64 KiB hashed costs ~50 us whatever the file size (the
first format hashed 128 KiB, ~100 us). A BMP or TIFF pays for its full hash (~3.5 ms for 5 MB,
against ~15 ms to decode and resize it).

The first format (`legacy_content_hash`: 32 hex digits over size, first and last 64 KiB) stays
in catalogs written before; `indexer.scan` still matches moved files against it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

Buffer = bytes | bytearray | memoryview

HASH_PREFIX = "2:"  # format 2; a legacy hash is 32 bare hex digits
DIGEST_BYTES = 15  # 30 hex digits + the prefix = 32 characters, images.content_hash's width
HEAD_BYTES = 16 * 1024
TAIL_BYTES = 16 * 1024
SAMPLE_BYTES = 4 * 1024
SAMPLES = 8
# Up to this size a file is hashed whole: its samples would cover about as much.
WHOLE_FILE_BYTES = HEAD_BYTES + TAIL_BYTES + SAMPLES * SAMPLE_BYTES
_READ_CHUNK = 1024 * 1024  # streaming a whole file: bounded memory, few system calls
# Formats storing pixels uncompressed or in independently coded strips: always hashed whole.
_WHOLE_FILE_MAGIC = (b"BM", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # BMP, (Big)TIFF

LEGACY_EDGE_BYTES = 64 * 1024


def content_hash(path: str | Path) -> str:
    """The format-2 hash of the file at `path` (see the module docstring); reads only what it
    hashes. Raises OSError when the file cannot be read."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(HEAD_BYTES)
        digest = _new_digest(size)
        digest.update(head)
        if _hashed_whole(head, size):
            for chunk in _chunks(handle):
                digest.update(chunk)
        else:
            for start, length in _sample_spans(size):
                handle.seek(start)
                digest.update(handle.read(length))
    return HASH_PREFIX + digest.hexdigest()


def content_hash_of_bytes(data: Buffer) -> str:
    """content_hash of a file whose whole content is `data` (already read, so no second read)."""
    view = memoryview(data)
    size = len(view)
    digest = _new_digest(size)
    if _hashed_whole(view[:HEAD_BYTES], size):
        digest.update(view)
    else:
        digest.update(view[:HEAD_BYTES])
        for start, length in _sample_spans(size):
            digest.update(view[start : start + length])
    return HASH_PREFIX + digest.hexdigest()


def is_legacy_hash(value: str) -> bool:
    """Whether a stored hash is of the first format (compare files with legacy_content_hash)."""
    return not value.startswith(HASH_PREFIX)


def _new_digest(size: int) -> hashlib.blake2b:
    return hashlib.blake2b(size.to_bytes(8, "little"), digest_size=DIGEST_BYTES)


def _hashed_whole(head: Buffer, size: int) -> bool:
    return size <= WHOLE_FILE_BYTES or bytes(head[:4]).startswith(_WHOLE_FILE_MAGIC)


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(_READ_CHUNK):
        yield chunk


def _sample_spans(size: int) -> list[tuple[int, int]]:
    """(start, length) of what follows the head in a sampled hash: one block centred in each of
    SAMPLES equal slices between head and tail, then the tail. Never overlapping, since a
    sampled file is larger than WHOLE_FILE_BYTES."""
    tail_start = size - TAIL_BYTES
    stride = (tail_start - HEAD_BYTES) // SAMPLES  # >= SAMPLE_BYTES
    offset = HEAD_BYTES + (stride - SAMPLE_BYTES) // 2
    spans = [(offset + index * stride, SAMPLE_BYTES) for index in range(SAMPLES)]
    return [*spans, (tail_start, TAIL_BYTES)]


def legacy_content_hash(path: str | Path) -> str:
    """The first format, still stored in older catalogs: blake2b-128 (32 hex digits) over the
    file size, its first 64 KiB and its last 64 KiB. Files of one size whose middles differ get
    the same hash. Raises OSError when the file cannot be read."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(LEGACY_EDGE_BYTES)
        tail = b""
        if size > LEGACY_EDGE_BYTES:
            handle.seek(max(LEGACY_EDGE_BYTES, size - LEGACY_EDGE_BYTES))  # never over the head
            tail = handle.read(LEGACY_EDGE_BYTES)
    digest = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    digest.update(head)
    digest.update(tail)
    return digest.hexdigest()


def trusted_legacy_hash(path: str | Path) -> str | None:
    """legacy_content_hash of `path` for matching it to a legacy catalog row, or None when that
    hash cannot tell this file from another: a BMP or TIFF larger than the legacy head and tail
    (the scans that format confused). Such a file is indexed anew rather than risk keeping
    another photo's caption and embedding. Raises OSError when the file cannot be read."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        magic = handle.read(4)
    if size > 2 * LEGACY_EDGE_BYTES and magic.startswith(_WHOLE_FILE_MAGIC):
        return None
    return legacy_content_hash(path)
