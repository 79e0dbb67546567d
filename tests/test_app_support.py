"""Builders shared by the app tests: an indexed sample library from the procedural world.

This module holds no tests; it is named like one so that it lives with the app's tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
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

# Debian's chromium with the flags this machine's closed network needs (never `playwright install`).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
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


@dataclass
class GridTile:
    """One tile of the app's photo grid (search_app.grid), as parsed back from its HTML."""

    id: int
    caption: str = ""
    meta: str = ""  # e.g. "score 0.312 · 2024-04-16 17:10"
    path: str = ""  # the full path (the tooltip)
    shown_path: str = ""
    links: dict[str, str] = field(default_factory=dict)  # link text -> href
    image: bool = False  # an <img> with inline data


class _GridParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tiles: list[GridTile] = []
        self._field: str | None = None
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        classes = (found.get("class") or "").split()
        if "coca-tile" in classes:
            self.tiles.append(GridTile(int(found["data-id"] or -1)))
        elif not self.tiles:
            return
        tile = self.tiles[-1]
        for name in ("caption", "meta", "path"):
            if f"coca-{name}" in classes:
                self._field = name
        if "coca-path" in classes:
            tile.path = found.get("title") or ""
        if tag == "a":
            self._href = found.get("href")
        if tag == "img" and (found.get("src") or "").startswith("data:image/"):
            tile.image = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            self._field = None
        if tag == "a":
            self._href = None

    def handle_data(self, data: str) -> None:
        if not self.tiles:
            return
        tile = self.tiles[-1]
        if self._href is not None and data.strip():
            tile.links[data.strip()] = self._href
        elif self._field == "path":
            tile.shown_path += data
        elif self._field is not None:
            setattr(tile, self._field, getattr(tile, self._field) + data)


def parse_grid(markup: str) -> list[GridTile]:
    parser = _GridParser()
    parser.feed(markup)
    return parser.tiles
