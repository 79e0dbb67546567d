"""Forget a folder: its photos leave the catalog and every model's vector index.

For a library folder that is gone for good (renamed, deleted, an old drive): a run of `index`
only compares the folder it is given with the disk, so rows of a root that no longer exists stay
until they are forgotten. Nothing on disk is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from indexer.pipeline import exclusive_writer
from storage import Catalog, ImageFilter, open_or_rebuild


def forget_folder(catalog: Catalog, index_path: Callable[[int], Path], folder: str) -> int:
    """Delete the catalog's photos under the absolute `folder` (a library root or a folder in
    one), then bring each model's saved index in step; returns how many photos went.

    Every model's index lock is held throughout, so no indexer writes meanwhile.
    """
    models = [model.id for model in catalog.list_models()]
    with ExitStack() as locks:
        for model_id in models:
            locks.enter_context(exclusive_writer(index_path(model_id)))
        ids = catalog.filter_image_ids(ImageFilter(folder=folder))
        if ids.size == 0:
            return 0
        # Opened while they still match the catalog, so no index is rebuilt from scratch.
        indexes = {
            model_id: open_or_rebuild(catalog, model_id, index_path(model_id))
            for model_id in models
            if index_path(model_id).exists()
        }
        catalog.delete_images(ids.tolist())  # the catalog first: it is the truth
        for model_id, index in indexes.items():
            index.remove(ids.tolist())
            index.save(index_path(model_id), catalog.embedding_fingerprint(model_id).token)
    return int(ids.size)
