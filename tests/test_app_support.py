"""Builders shared by the app tests: an indexed sample library from the procedural world.

This module holds no tests; it is named like one so that it lives with the app's tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import coca
import storage
from coca.world import LibraryEntry, read_manifest, write_library
from indexer.decode import DecodeConfig
from indexer.encode import EncodeConfig
from indexer.pipeline import IndexConfig, register_model, run_index
from search_app.search import DataLayout
from search_app.settings import ENV_DATA, ENV_DEVICE, ENV_MODEL
from tests.indexer_support import fast_decoding, save_tiny_bundle

LIBRARY_SEED = 424_242
DEFAULT_MODEL_DIR = Path(coca.__file__).parent / "default_model"


def default_model_installed() -> bool:
    return (DEFAULT_MODEL_DIR / "config.json").is_file()


@dataclass(frozen=True)
class AppLibrary:
    """A sample photo folder indexed into a data folder, and the model that indexed it."""

    photos: Path
    data: Path
    model: str  # a source for coca.load: a tiny bundle folder, or "default"

    @property
    def entries(self) -> list[LibraryEntry]:
        return read_manifest(self.photos)

    def env(self, model: str | None = None) -> dict[str, str]:
        return {ENV_DATA: str(self.data), ENV_MODEL: model or self.model, ENV_DEVICE: "cpu"}

    def catalog(self) -> storage.Catalog:
        return storage.open_catalog(DataLayout(self.data).catalog_path)


def tiny_model_folder(folder: Path, seed: int = 0) -> str:
    if not (folder / "config.json").is_file():
        save_tiny_bundle(folder, seed=seed)
    return str(folder)


def build_library(
    root: Path, count: int, model: str, size: tuple[int, int] = (160, 120)
) -> AppLibrary:
    """Write `count` generated scenes under root/photos and index them into root/data."""
    photos = write_library(root / "photos", count, seed=LIBRARY_SEED, width=size[0], height=size[1])
    data = root / "data"
    loaded = coca.load(model)
    catalog = storage.open_catalog(DataLayout(data).catalog_path)
    model_id = register_model(catalog, loaded)
    decoding = None if model == "default" else fast_decoding()
    encode = EncodeConfig(batch_size=16, **({"decoding": decoding} if decoding else {}))
    config = IndexConfig(
        photos_dir=photos,
        index_path=DataLayout(data).index_path(model_id),
        decode=DecodeConfig(workers=2),
        encode=encode,
    )
    run_index(config, loaded, catalog)
    catalog.db.dispose()
    return AppLibrary(photos.resolve(), data.resolve(), model)
