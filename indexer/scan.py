"""Scan a photo folder and compare it with what the catalog already knows.

The walk uses `os.scandir`, so a re-scan of an unchanged library costs one `stat` per file and no
reads. Content is hashed (the catalog's content hash, `storage.hashing`, in parallel
threads) only for files the catalog has not seen at that path, and only when a vanished row could
match them: that is all rename detection needs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from storage.hashing import content_hash, is_legacy_hash, trusted_legacy_hash
from storage.records import KnownFile

logger = logging.getLogger(__name__)

# Threads hashing new files: enough to keep a fast disk busy, few enough for a small machine.
HASH_WORKERS = min(16, os.cpu_count() or 1)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
    }
)


@dataclass(frozen=True)
class FoundFile:
    """An image file seen on disk during a scan."""

    relative_path: str  # POSIX path relative to the library root: the catalog's key
    size: int  # bytes
    mtime_ns: int  # modification time in integer nanoseconds, compared exactly


@dataclass(frozen=True)
class MovedFile:
    """A catalog row whose file vanished and reappeared, same content, at a new path."""

    image_id: int
    old_path: str
    new: FoundFile


@dataclass(frozen=True)
class ScanDiff:
    """How the folder differs from the catalog. Every found file lands in exactly one list."""

    new: list[FoundFile] = field(default_factory=list)
    changed: list[FoundFile] = field(default_factory=list)  # same path, other size or mtime
    unchanged: list[FoundFile] = field(default_factory=list)
    moved: list[MovedFile] = field(default_factory=list)
    deleted: dict[str, KnownFile] = field(default_factory=dict)  # relative path -> catalog row
    # relative path -> format-2 content hash, for the arrivals the scan hashed to find moves
    hashes: dict[str, str] = field(default_factory=dict)


def is_image_name(name: str) -> bool:
    """True for file names with an image extension we can decode (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def storable_path(path: str) -> bool:
    """Whether the catalog can store `path`: it keeps paths as UTF-8 text, and on Linux a file
    name is any bytes, which Python hands over with the invalid ones as lone surrogates."""
    if path.isascii():
        return True
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: str) -> str:
    """`path` for a message, its undecodable bytes written as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def walk_images(root: Path, unstorable: list[str] | None = None) -> Iterator[FoundFile]:
    """Yield every image file under `root`, skipping hidden entries and never looping on symlinks.

    Symlinked folders are followed once: each directory is identified by its (device, inode) pair
    and one already visited is skipped, and a link to the root or a folder above it is not
    followed (it would bring in everything beside the library).
    Image files (and folders) whose names are not valid UTF-8 cannot be catalogued: each is
    logged, appended to `unstorable` when given, and skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; pass the folder that holds your photos")
    visited: set[tuple[int, int]] = set()
    real_root = os.path.realpath(root)
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            info = os.stat(folder)
        except OSError as error:
            logger.warning("cannot read folder %s: %s", folder, error)
            continue
        key = (info.st_dev, info.st_ino)
        if key in visited:
            logger.debug("skipping %s: already visited (symlink loop or second link)", folder)
            continue
        visited.add(key)
        subfolders, files = _list_folder(folder, prefix, real_root)
        for found in files:
            if storable_path(found.relative_path):
                yield found
            else:
                _skip_unstorable(found.relative_path, unstorable)
        for subfolder in [entry for entry in subfolders if not storable_path(entry[1])]:
            subfolders.remove(subfolder)
            _skip_unstorable(subfolder[1], unstorable)
        # Reverse so that the stack pops folders in name order: a deterministic walk.
        stack.extend(reversed(subfolders))


def _skip_unstorable(relative: str, unstorable: list[str] | None) -> None:
    logger.warning(
        "skipping %s: its name is not valid UTF-8, which the catalog cannot store; rename it "
        "to index it",
        printable_path(relative),
    )
    if unstorable is not None:
        unstorable.append(relative)


def _links_above(entry: os.DirEntry[str], real_root: str) -> bool:
    """A symlinked folder that points at the library root or above it: following it would pull
    in the root's parent folders (everything beside the library), not photos of the library."""
    if not entry.is_symlink():
        return False
    target = os.path.realpath(entry.path)
    return real_root == target or real_root.startswith(target.rstrip("/") + "/")


def _list_folder(
    folder: str, prefix: str, real_root: str
) -> tuple[list[tuple[str, str]], list[FoundFile]]:
    """One folder's image files (sorted) and its subfolders to visit."""
    subfolders: list[tuple[str, str]] = []
    files: list[FoundFile] = []
    try:
        with os.scandir(folder) as entries:
            ordered = sorted(entries, key=lambda entry: entry.name)
    except OSError as error:
        logger.warning("cannot list folder %s: %s", folder, error)
        return subfolders, files
    for entry in ordered:
        if entry.name.startswith("."):
            continue
        relative = f"{prefix}{entry.name}"
        try:
            if entry.is_dir():  # follows symlinks; loops are cut by the visited set
                if _links_above(entry, real_root):
                    logger.warning(
                        "skipping %s: it links to a folder above the library", entry.path
                    )
                else:
                    subfolders.append((entry.path, relative + "/"))
            elif is_image_name(entry.name) and entry.is_file():
                stat = entry.stat()
                files.append(FoundFile(relative, stat.st_size, stat.st_mtime_ns))
        except OSError as error:  # dangling symlink, entry removed while scanning, ...
            logger.debug("skipping %s: %s", entry.path, error)
    return subfolders, files


def diff_library(
    root: Path,
    found: Iterable[FoundFile],
    known: Mapping[str, KnownFile],
    hasher: Callable[[Path], str] = content_hash,
    workers: int = HASH_WORKERS,
    legacy_hasher: Callable[[Path], str | None] = trusted_legacy_hash,
) -> ScanDiff:
    """Sort found files into new, changed, unchanged and moved; catalog rows left over are deleted.

    `known` maps relative paths to catalog rows (`Catalog.known_files`). A file found at a path
    the catalog does not know is a move when its content hash equals that of a catalog row whose
    own file has vanished; otherwise it is new. Each vanished row matches once. Rows hashed by an
    older coca-search hold the legacy format: arrivals left unmatched are compared with those
    by `legacy_hasher` (None: too weak to trust for that file, which is then new).

    Only files that could be moves are hashed here (by `workers` threads; file reads and blake2b
    release the GIL): the arrivals, and only when some vanished row has a hash to match. Every
    other new or changed file is hashed by the decode worker that reads it
    (`DecodeConfig.hash_files`), so a first index of a large library does not wait for a hashing
    pass before the first photo is decoded (39 % of the wall clock of a 20,480-photo GPU run).
    """
    diff = ScanDiff()
    unseen = dict(known)
    arrivals = _sort_known_paths(diff, found, known, unseen)
    current, legacy = _vanished_by_hash(unseen)
    if current:
        hash_found_files(diff.hashes, root, arrivals, hasher, workers)
        arrivals = _match_moves(diff, arrivals, diff.hashes, current, unseen)
    if legacy:
        # Only to match: the catalog stores format-2 hashes, which the decode workers compute
        # for the files left new.
        legacy_hashes: dict[str, str] = {}
        hash_found_files(legacy_hashes, root, arrivals, legacy_hasher, workers)
        arrivals = _match_moves(diff, arrivals, legacy_hashes, legacy, unseen)
    diff.new.extend(arrivals)
    diff.deleted.update(unseen)
    return diff


def _sort_known_paths(
    diff: ScanDiff,
    found: Iterable[FoundFile],
    known: Mapping[str, KnownFile],
    unseen: dict[str, KnownFile],
) -> list[FoundFile]:
    """Files at catalogued paths go to unchanged or changed (and leave `unseen`); the others,
    the arrivals, are returned in walk order."""
    arrivals: list[FoundFile] = []
    for file in found:
        row = known.get(file.relative_path)
        if row is None:
            arrivals.append(file)
            continue
        del unseen[file.relative_path]
        if row.size == file.size and row.mtime_ns == file.mtime_ns:
            diff.unchanged.append(file)
        else:
            diff.changed.append(file)
    return arrivals


def _vanished_by_hash(
    unseen: Mapping[str, KnownFile],
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Vanished rows' paths by content hash: (format-2 hashes, legacy hashes), paths sorted."""
    current: dict[str, list[str]] = {}
    legacy: dict[str, list[str]] = {}
    for path, row in sorted(unseen.items()):
        if row.content_hash:
            by_hash = legacy if is_legacy_hash(row.content_hash) else current
            by_hash.setdefault(row.content_hash, []).append(path)
    return current, legacy


def _match_moves(
    diff: ScanDiff,
    arrivals: list[FoundFile],
    hashes: Mapping[str, str],
    vanished: dict[str, list[str]],
    unseen: dict[str, KnownFile],
) -> list[FoundFile]:
    """Record arrivals whose hash matches a vanished row as moves (each row matches once);
    returns the arrivals left unmatched."""
    unmatched: list[FoundFile] = []
    for file in arrivals:
        candidates = vanished.get(hashes.get(file.relative_path) or "")
        if candidates:
            old_path = candidates.pop(0)
            row = unseen.pop(old_path)
            diff.moved.append(MovedFile(row.id, old_path, file))
        else:
            unmatched.append(file)
    return unmatched


def hash_found_files(
    into: dict[str, str],
    root: Path,
    files: list[FoundFile],
    hasher: Callable[[Path], str | None],
    workers: int,
) -> None:
    """Hash files into `into` by relative path; an unreadable file gets no hash (decode will
    record why), nor one whose hasher returns None."""

    def digest(file: FoundFile) -> str | None:
        try:
            return hasher(Path(root) / file.relative_path)
        except OSError as error:
            logger.debug("cannot hash %s: %s", file.relative_path, error)
            return None

    if workers > 1 and len(files) > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="hash") as pool:
            digests = list(pool.map(digest, files, chunksize=64))
    else:
        digests = [digest(file) for file in files]
    for file, value in zip(files, digests, strict=True):
        if value is not None:
            into[file.relative_path] = value
