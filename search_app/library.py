"""The served catalog, opened for reading: browsing needs no model, and the app never creates a
catalog or takes a write lock to open one while an indexer is writing.

No streamlit here; `search_app.resources` caches the catalog for all sessions.
"""

from __future__ import annotations

import logging
from pathlib import Path

from storage import LATEST_VERSION, Catalog, Database, apply_migrations
from storage.migrations import stored_version

logger = logging.getLogger(__name__)


class CatalogMissingError(FileNotFoundError):
    """The data folder has no catalog yet."""


def open_catalog_for_reading(path: Path) -> Catalog:
    """The catalog at `path`, without creating one; migrated only when it is older than us.

    Opening an up-to-date catalog takes no write lock, so the app starts while an indexer writes.
    """
    if not path.is_file():
        raise CatalogMissingError(
            f"no catalog at {path}; index a photo folder first: "
            f"coca-search index PHOTOS --data {path.parent}"
        )
    db = Database(path)
    with db.engine.connect() as conn:
        version = stored_version(conn)
    if version != LATEST_VERSION:
        apply_migrations(db)  # raises SchemaVersionError for a newer catalog
    return Catalog(db)
