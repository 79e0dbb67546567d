"""The catalog's fast content hash: recognises a moved or renamed file without reading all of it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

EDGE_BYTES = 64 * 1024


def content_hash(path: str | Path) -> str:
    """blake2b-128 (hex, 32 chars) over the file size, its first 64 KiB and its last 64 KiB.

    Two files with the same size and the same head and tail get the same hash: good enough to match
    a moved file to its old catalog row (the path diff decides which rows are candidates), and
    cheap whatever the file size. Raises OSError when the file cannot be read.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(EDGE_BYTES)
        tail = b""
        if size > EDGE_BYTES:
            handle.seek(_tail_start(size))
            tail = handle.read(EDGE_BYTES)
    return _digest(size, head, tail)


def content_hash_of_bytes(data: bytes | bytearray | memoryview) -> str:
    """content_hash of a file whose whole content is `data` (already read, so no second read)."""
    size = len(data)
    tail = data[_tail_start(size) : _tail_start(size) + EDGE_BYTES] if size > EDGE_BYTES else b""
    return _digest(size, data[:EDGE_BYTES], tail)


def _tail_start(size: int) -> int:
    return max(EDGE_BYTES, size - EDGE_BYTES)  # the tail never overlaps the head


def _digest(
    size: int, head: bytes | bytearray | memoryview, tail: bytes | bytearray | memoryview
) -> str:
    digest = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    digest.update(head)
    digest.update(tail)
    return digest.hexdigest()
