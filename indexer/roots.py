"""Where a photo folder sits among the library roots the catalog already knows.

The catalog keys each photo by (root, path relative to the root). Indexing a folder inside a
root it already knows, or one around roots it knows, must not give the same file a second row
(and a second vector that would show up twice in every search):

- a folder inside a known root is indexed as that part of the root: same root, paths under the
  folder's prefix, and only that part is compared with the disk;
- known roots inside the folder join it: their rows are re-keyed under the folder, keeping their
  captions and embeddings, before the scan finds their files unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from indexer.scan import HASH_WORKERS, FoundFile, MovedFile, ScanDiff, hash_found_files
from storage import Catalog, VectorIndex
from storage.hashing import content_hash, is_legacy_hash, trusted_legacy_hash
from storage.records import KnownFile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scope:
    """The part of a catalog root one index run compares with the disk."""

    root: Path  # the catalog root the run's rows belong to
    prefix: str = ""  # "" for the whole root, else the indexed folder's place in it: "2024/trip/"

    @property
    def key(self) -> str:
        return self.root.as_posix()

    def known_files(self, catalog: Catalog) -> dict[str, KnownFile]:
        """The catalog's rows inside the scope (others in the root are not this run's business)."""
        known = catalog.known_files(self.key)
        if not self.prefix:
            return known
        return {path: row for path, row in known.items() if path.startswith(self.prefix)}


def _is_inside(path: PurePosixPath, folder: PurePosixPath) -> bool:
    return folder in path.parents


def find_scope(known_roots: Iterable[str], folder: Path) -> Scope:
    """`folder` as part of the outermost known root holding it, else as a root of its own."""
    target = PurePosixPath(folder.as_posix())
    holding = [root for root in known_roots if _is_inside(target, PurePosixPath(root))]
    if not holding:
        return Scope(folder)
    root = min(holding, key=len)
    prefix = target.relative_to(PurePosixPath(root)).as_posix() + "/"
    return Scope(Path(root), prefix)


def adopt_nested_roots(catalog: Catalog, index: VectorIndex, scope: Scope) -> int:
    """Re-key the rows of known roots inside `scope`'s folder under its root; returns how many
    roots joined. A nested root's row for a file the root already has is dropped, catalog first
    (the truth), then the vector index."""
    folder = PurePosixPath(scope.key) / scope.prefix
    joined = 0
    for nested in catalog.roots():
        if not _is_inside(PurePosixPath(nested), folder):
            continue
        if not Path(nested).is_dir():
            # Absent (an unplugged drive mounted inside the folder?): joined, its rows would be
            # removed by this scan. It stays a root of its own until it is back or forgotten.
            logger.info("%s is absent; its photos stay catalogued under it", nested)
            continue
        prefix = PurePosixPath(nested).relative_to(PurePosixPath(scope.key)).as_posix() + "/"
        displaced = catalog.adopt_root(nested, scope.key, prefix)
        if displaced:
            index.remove(displaced)
        logger.info("%s, indexed before on its own, is now part of %s", nested, scope.key)
        joined += 1
    return joined


def prefixed(found: Iterable[FoundFile], prefix: str) -> Iterator[FoundFile]:
    """Files found under the indexed folder, their paths made relative to the scope's root."""
    if not prefix:
        yield from found
        return
    for file in found:
        yield dataclasses.replace(file, relative_path=prefix + file.relative_path)


@dataclass(frozen=True)
class _GoneRow:
    """A catalog row of a library root that no longer exists."""

    path: str  # absolute: the gone root, then the row's relative path
    row: KnownFile


def gone_roots_rows(catalog: Catalog, scope: Scope) -> dict[str, list[_GoneRow]]:
    """Rows (with a content hash) of other library roots whose folder no longer exists, by file
    name: the candidates for a renamed or moved library folder (see `claim_moved_library`)."""
    by_name: dict[str, list[_GoneRow]] = {}
    for root in catalog.roots():
        if root == scope.key or Path(root).exists():
            continue
        for path, row in catalog.known_files(root).items():
            if row.content_hash:
                name = path.rpartition("/")[2]
                by_name.setdefault(name, []).append(_GoneRow(f"{root}/{path}", row))
    return by_name


def claim_moved_library(
    diff: ScanDiff,
    gone: dict[str, list[_GoneRow]],
    root: Path,
    workers: int = HASH_WORKERS,
) -> None:
    """Turn the arrivals (`diff.new`) that are photos of a renamed or moved library folder into
    moves, keeping their captions and embeddings: a row of a root that is gone, at the same place
    in the library (its path ends with the arrival's relative path) and with the same content.
    Each such row is claimed once. Anything else stays new: a copy elsewhere of a photo on an
    unplugged drive must not take that drive's row, which is never deleted here.

    Only arrivals with a row in the same place are hashed (format 2 into `diff.hashes`, as
    `diff_library` does; the legacy format only for legacy rows)."""
    places = _rows_in_place(diff.new, gone)
    if not places:
        return
    legacy_hashes = _hash_for_matching(diff, places, root, workers)
    claimed: set[int] = set()
    moved: set[str] = set()
    for file in diff.new:
        for g in places.get(file.relative_path, []):
            stored = g.row.content_hash or ""
            digest = (legacy_hashes if is_legacy_hash(stored) else diff.hashes).get(
                file.relative_path
            )
            if g.row.id not in claimed and digest == stored:
                claimed.add(g.row.id)
                moved.add(file.relative_path)
                diff.moved.append(MovedFile(g.row.id, g.path, file))
                break
    diff.new[:] = [file for file in diff.new if file.relative_path not in moved]


def _rows_in_place(
    arrivals: list[FoundFile], gone: dict[str, list[_GoneRow]]
) -> dict[str, list[_GoneRow]]:
    """Arrival relative path -> the gone roots' rows at the same place in the library."""
    places: dict[str, list[_GoneRow]] = {}
    for file in arrivals:
        name = file.relative_path.rpartition("/")[2]
        rows = [g for g in gone.get(name, []) if g.path.endswith("/" + file.relative_path)]
        if rows:
            places[file.relative_path] = rows
    return places


def _hash_for_matching(
    diff: ScanDiff, places: dict[str, list[_GoneRow]], root: Path, workers: int
) -> dict[str, str]:
    """Hash the arrivals that have rows in place: format 2 into `diff.hashes` (kept for the
    catalog, as `diff_library` does) and, where a row holds the legacy format, that too
    (returned, only to match)."""
    files = [file for file in diff.new if file.relative_path in places]
    unhashed = [file for file in files if file.relative_path not in diff.hashes]
    hash_found_files(diff.hashes, root, unhashed, content_hash, workers)
    with_legacy = [
        file
        for file in files
        if any(is_legacy_hash(g.row.content_hash or "") for g in places[file.relative_path])
    ]
    legacy_hashes: dict[str, str] = {}
    hash_found_files(legacy_hashes, root, with_legacy, trusted_legacy_hash, workers)
    return legacy_hashes
