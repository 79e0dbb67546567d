"""Keep a served index up with an indexer that is still running.

The indexer saves its index every couple of minutes (`save_index_every_s`), but commits to the
catalog every batch, so Browse (which reads the catalog) showed photos that search could not find
yet. While an indexer holds the data folder, the engine adds the photos committed since its copy
was saved, read from the catalog, at most every CATCH_UP_S seconds. Photos removed meanwhile are
already skipped when results are read; the run's final save replaces the copy.
"""

from __future__ import annotations

import logging

from storage import Catalog, VectorIndex

logger = logging.getLogger(__name__)

# Seconds between two catch-ups while an indexer runs: one indexed SQL range query each, and the
# new vectors; often enough that a photo is searchable about as soon as Browse shows it.
CATCH_UP_S = 5.0


def add_committed_since_save(catalog: Catalog, index: VectorIndex, model_id: int) -> int:
    """Add to `index` the model's embeddings of images newer than its newest; returns how many.

    New photos get new, larger ids; a changed photo keeps its id and its older vector until the
    indexer's next save, which is the lag this accepts.
    """
    ids = index.ids()
    newest = int(ids.max()) if ids.size else 0
    missing = catalog.embedded_ids_after(model_id, newest)
    if missing.size == 0:
        return 0
    found, vectors = catalog.get_embeddings(model_id, missing.tolist())
    index.add(found, vectors)
    logger.debug("added %d photos committed since the index was saved", len(found))
    return len(found)
