"""Streamlit building blocks shared by the pages: filter widgets, the photo grid, images, states.

Pages stay thin: they read widgets, call the engine or the catalog, and hand the results here.
Images are always looked up by catalog id: the path comes from the catalog row, never a request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path

import streamlit as st

from search_app import resources
from search_app.grid import Tile, detail_href, grid_html
from search_app.library import CatalogMissingError
from search_app.search import SearchFilters
from search_app.settings import AppSettings
from search_app.thumbnails import FULL_SIDE, THUMBNAIL_SIDE, RenderedImage
from storage import Catalog

logger = logging.getLogger(__name__)

__all__ = ["Tile", "detail_href", "photo_grid", "show_image"]


# -- images -------------------------------------------------------------------------------------


def catalog_or_stop(config: AppSettings) -> Catalog:
    """The shared catalog, or the empty-catalog message and the end of this page's run."""
    try:
        return resources.get_catalog(str(config.catalog_path))
    except CatalogMissingError as error:
        st.info(f"The catalog is empty. {error}", icon=":material/inbox:")
        st.stop()
        raise  # st.stop() raises; this keeps type checkers and readers sure of it


def show_image(image_id: int, path: Path, *, full: bool = False, link: str | None = None) -> None:
    rendered = resources.get_thumbnails().get(image_id, path, FULL_SIDE if full else THUMBNAIL_SIDE)
    _show_rendered(rendered, link)


def _show_rendered(rendered: RenderedImage | None, link: str | None) -> None:
    if rendered is None:
        st.warning(
            "The file is missing or unreadable; re-run the indexer.", icon=":material/broken_image:"
        )
        return
    st.image(rendered.data, width="stretch", link=link)


# -- filters ------------------------------------------------------------------------------------


@st.cache_data(ttl=30, show_spinner=False)
def _folder_choices(catalog_url: str, _catalog: Catalog) -> list[tuple[str, int]]:
    # Folder names relative to their library root, merged across roots, with photo counts.
    counts: dict[str, int] = {}
    for row in _catalog.folders():
        counts[row.folder] = counts.get(row.folder, 0) + row.images
    return sorted(counts.items())


def filter_widgets(catalog: Catalog, key: str) -> SearchFilters:
    """Folder and date-range filters in the sidebar; `key` keeps each page's choices apart."""
    choices = _folder_choices(str(catalog.db.url), catalog)
    labels = {folder: f"{folder or 'All folders'} ({count})" for folder, count in choices}
    folder = st.sidebar.selectbox(
        "Folder",
        options=[folder for folder, _ in choices] or [""],
        format_func=lambda f: labels.get(f, f or "All folders"),
        key=f"{key}-folder",
        help="Only photos in this folder and the folders below it.",
        bind="query-params",
    )
    use_dates = st.sidebar.toggle("Filter by date", key=f"{key}-use-dates", bind="query-params")
    date_from = date_to = None
    if use_dates:
        picked = st.sidebar.date_input(
            "Taken between",
            value=(date(2000, 1, 1), date.today()),
            min_value=date(1900, 1, 1),
            max_value=date(2100, 12, 31),
            key=f"{key}-dates",
            bind="query-params",
        )
        if isinstance(picked, Sequence) and len(picked) == 2:
            date_from, date_to = picked
    return SearchFilters(folder=folder or None, date_from=date_from, date_to=date_to)


# -- grid ---------------------------------------------------------------------------------------


def photo_grid(tiles: Sequence[Tile], *, keep_query: bool = False) -> None:
    """Thumbnails with caption, score and path, rendered in parallel and laid out as one block.

    Each tile's "More like this" opens the search page by that photo; with `keep_query` it keeps
    this page's query parameters (the search page binds its query and options to the URL).
    """
    images = resources.get_thumbnails().get_many([(t.id, t.path) for t in tiles], THUMBNAIL_SIDE)
    params = st.query_params.to_dict() if keep_query else {}
    st.html(grid_html(tiles, images, params))


def escape(text: str) -> str:
    """Captions and paths are data, not markdown."""
    for char in "\\`*_{}[]()#+-.!|<>~$":
        text = text.replace(char, "\\" + char)
    return text


# Decoding settings worth showing per generation type; the rest are defaults that did not apply.
_DECODING_FIELDS = {
    "greedy": ("seq_len", "min_seq_len", "repetition_penalty"),
    "beam_search": ("seq_len", "min_seq_len", "num_beams", "num_beam_groups", "length_penalty"),
    "top_k": ("seq_len", "min_seq_len", "top_k", "temperature"),
    "top_p": ("seq_len", "min_seq_len", "top_p", "temperature"),
}


def decoding_summary(decoding: dict) -> str:
    """'greedy, seq_len=20, min_seq_len=5' from a caption's stored decoding settings."""
    kind = str(decoding.get("generation_type", ""))
    fields = _DECODING_FIELDS.get(
        kind, tuple(sorted(k for k in decoding if k != "generation_type"))
    )
    shown = [f"{name}={decoding[name]}" for name in fields if name in decoding]
    return ", ".join([kind, *shown] if kind else shown) or "not recorded"


def format_date(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%d %H:%M") if value else None


def format_size(size: int) -> str:
    amount = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1024 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{size} B"
