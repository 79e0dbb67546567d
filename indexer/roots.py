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

from indexer.scan import FoundFile, MovedFile, ScanDiff
from storage import Catalog, VectorIndex
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


def orphan_rows(catalog: Catalog, scope: Scope) -> dict[str, KnownFile]:
    """Rows of other library roots whose folder no longer exists, keyed by absolute path: the
    candidates for a renamed or moved library folder (see `indexer.scan.diff_library`)."""
    orphans: dict[str, KnownFile] = {}
    for root in catalog.roots():
        if root != scope.key and not Path(root).exists():
            orphans.update(
                (f"{root}/{path}", row) for path, row in catalog.known_files(root).items()
            )
    return orphans


def keep_whole_folder_moves(diff: ScanDiff) -> None:
    """Moves from another root count only where the photo kept its place in the library (a
    renamed or moved library folder). The same photo elsewhere, e.g. a copy in this folder of a
    photo on an unplugged drive, is a new file: its row on the drive must not move over here."""
    elsewhere = [moved for moved in diff.moved if not _kept_its_place(moved)]
    if not elsewhere:
        return
    diff.moved[:] = [moved for moved in diff.moved if _kept_its_place(moved)]
    diff.new.extend(moved.new for moved in elsewhere)


def _kept_its_place(moved: MovedFile) -> bool:
    # Rows of this root have relative paths; other roots' rows are keyed by absolute path.
    if not moved.old_path.startswith("/"):
        return True
    return moved.old_path.endswith("/" + moved.new.relative_path)
