"""Saving and loading a FAISS index file with its JSON sidecar, atomically and verified.

`index.faiss` is written to a temporary file, fsynced and renamed over the old one; then the sidecar
`index.faiss.json` the same way. The sidecar holds the index file's size and CRC32, so a crash
between the two renames, a truncated file or flipped bits all read as "corrupt" and the caller
rebuilds instead of using a wrong index.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import zlib
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import faiss

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_READ_BLOCK = 16 << 20


class IndexFileError(RuntimeError):
    """The index file or its sidecar is unreadable, corrupt or from another format."""


@dataclass(frozen=True)
class IndexMeta:
    model_id: int
    dim: int
    kind: str  # "flat" | "ivf_sq8"
    ntotal: int
    trained_rows: int
    fingerprint: str  # the catalog's EmbeddingFingerprint.token the index reflects
    file_size: int = 0
    crc32: int = 0
    saved_at: str = ""
    format_version: int = FORMAT_VERSION


def writer_lock_path(path: Path) -> Path:
    """The file an indexer holds an exclusive flock on while it writes the index at `path`."""
    return path.with_name(path.name + ".lock")


def writer_active(path: Path) -> bool:
    """Whether an indexer holds the index at `path` now: a shared flock is tried and released at
    once (the indexer retries its own lock briefly, so this probe never turns it away)."""
    try:
        handle = os.open(writer_lock_path(path), os.O_RDONLY)
    except OSError:
        return False  # never locked here, or unreadable: no indexer we could see
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(handle)  # closing drops the probe's shared lock too
    return False


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories can't be opened; rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def write_index(index: faiss.Index, meta: IndexMeta, path: Path) -> IndexMeta:
    """Write `index` and its sidecar atomically; returns the meta as written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(path)
    try:
        faiss.write_index(index, str(temp))
        _fsync_file(temp)
        written = replace(
            meta,
            file_size=temp.stat().st_size,
            crc32=file_crc32(temp),
            saved_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        os.replace(temp, path)
        side_temp = _temp_path(sidecar_path(path))
        side_temp.write_text(json.dumps(asdict(written), indent=1), encoding="utf-8")
        _fsync_file(side_temp)
        os.replace(side_temp, sidecar_path(path))
        _fsync_dir(path.parent)
    finally:
        for leftover in (temp, _temp_path(sidecar_path(path))):
            leftover.unlink(missing_ok=True)
    logger.info("saved vector index %s (%d vectors, %s)", path, written.ntotal, written.kind)
    return written


def read_meta(path: Path) -> IndexMeta:
    """The sidecar of `path`; FileNotFoundError when the index or sidecar is missing."""
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        fields = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        meta = IndexMeta(**fields)
    except FileNotFoundError:
        raise IndexFileError(f"sidecar {sidecar_path(path)} is missing") from None
    except (ValueError, TypeError) as error:
        raise IndexFileError(f"sidecar {sidecar_path(path)} is unreadable: {error}") from error
    if meta.format_version != FORMAT_VERSION:
        raise IndexFileError(f"index format {meta.format_version}, expected {FORMAT_VERSION}")
    return meta


def read_index(path: Path) -> tuple[faiss.Index, IndexMeta]:
    """Load and verify (size, CRC32, row count, dimension) an index written by `write_index`."""
    meta = read_meta(path)
    size = path.stat().st_size
    if size != meta.file_size:
        raise IndexFileError(f"index file is {size} bytes, its sidecar says {meta.file_size}")
    if file_crc32(path) != meta.crc32:
        raise IndexFileError("index file checksum does not match its sidecar (corrupt)")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as error:
        raise IndexFileError(f"faiss cannot read the index file: {error}") from error
    if index.ntotal != meta.ntotal or index.d != meta.dim:
        raise IndexFileError(
            f"index holds {index.ntotal} x {index.d}, its sidecar says {meta.ntotal} x {meta.dim}"
        )
    return index, meta
