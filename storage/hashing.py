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
        digest = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
        digest.update(handle.read(EDGE_BYTES))
        if size > EDGE_BYTES:
            handle.seek(max(EDGE_BYTES, size - EDGE_BYTES))
            digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()
