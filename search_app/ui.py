"""Streamlit building blocks shared by the pages: filter widgets, the photo grid, images, states.

Pages stay thin: they read widgets, call the engine or the catalog, and hand the results here.
Images are always looked up by catalog id: the path comes from the catalog row, never a request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Sequence
from datetime import date, datetime
from pathlib import Path

import streamlit as st

from search_app import resources
from search_app.grid import BackLink, Tile, detail_href, grid_html
from search_app.library import CatalogMissingError
from search_app.search import SearchFilters
from search_app.settings import AppSettings
from search_app.thumbnails import FULL_SIDE, THUMBNAIL_SIDE, RenderedImage
from storage import Catalog, ImageFilter

logger = logging.getLogger(__name__)

__all__ = ["BackLink", "Tile", "detail_href", "photo_grid", "show_image"]


# -- images -------------------------------------------------------------------------------------


def catalog_or_stop(config: AppSettings) -> Catalog:
    """The shared catalog, or the empty-catalog message and the end of this page's run."""
    try:
        return resources.get_catalog(str(config.catalog_path))
    except CatalogMissingError as error:
        st.info(f"Nothing to show yet: {error}.", icon=":material/inbox:")
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

# The URL keeps each filter in a plain form of its own (not a widget's label) so that a saved or
# shared link keeps selecting the same photos: `{key}-folder=snow`, `{key}-from=2022-09-07`,
# `{key}-to=2022-09-07` (the range's last day, included; absent: from that day on).
DATE_MIN, DATE_MAX = date(1900, 1, 1), date(2100, 12, 31)
# What the Folder box showed and older links stored: "snow (27)", "All folders (150)".
_COUNTED_LABEL = re.compile(r"(?P<folder>.*) \([0-9]+\)")


@st.cache_data(ttl=30, show_spinner=False)
def _folder_choices(catalog_url: str, _catalog: Catalog) -> list[tuple[str, int]]:
    # Folder names relative to their library root, merged across roots, with photo counts.
    counts: dict[str, int] = {}
    for row in _catalog.folders():
        counts[row.folder] = counts.get(row.folder, 0) + row.images
    return sorted(counts.items())


@st.cache_data(ttl=30, show_spinner=False)
def _date_span(catalog_url: str, _catalog: Catalog) -> tuple[date, date] | None:
    """The oldest and newest photo dates Browse can show (two indexed one-row queries)."""
    ends = [
        _catalog.list_images(ImageFilter(), page_size=1, order=order).items
        for order in ("date_asc", "date_desc")
    ]
    dates = [page[0].image.photo_date for page in ends if page and page[0].image.photo_date]
    return (dates[0].date(), dates[-1].date()) if dates else None


def _set_param(name: str, value: str | None) -> None:
    """Put `value` in the URL as `name` (None: take it out), sending nothing when unchanged."""
    if value is None:
        if name in st.query_params:
            del st.query_params[name]
    elif st.query_params.get(name) != value:
        st.query_params[name] = value


def _url_folder(param: str, folders: Collection[str]) -> str:
    """The folder a link asks for: as stored, or the counted label that older links stored."""
    wanted = st.query_params.get(param, "")
    if wanted in folders:
        return wanted
    label = _COUNTED_LABEL.fullmatch(wanted)
    if label and label["folder"] in folders:
        return label["folder"]
    if label and label["folder"] == "All folders":
        return ""
    return wanted


def _folder_widget(catalog: Catalog, key: str) -> str:
    param = f"{key}-folder"
    counts = dict(_folder_choices(str(catalog.db.url), catalog))
    wanted = _url_folder(param, counts)
    if wanted and wanted not in counts:
        _folder_choices.clear()  # it may have been indexed since the list was cached
        counts = dict(_folder_choices(str(catalog.db.url), catalog))
    options = sorted(counts) or [""]
    folder = st.sidebar.selectbox(
        "Folder",
        options=options,
        index=options.index(wanted) if wanted in options else 0,
        format_func=lambda f: f"{f or 'All folders'} ({counts[f]})" if f in counts else f,
        key=param,
        help="Only photos in this folder and the folders below it.",
    )
    if wanted and wanted not in counts:
        # Showing every folder in place of the one asked for would pass for a filtered result.
        st.warning(
            f"The folder “{escape(wanted)}” of this link is not in the catalog (any more); "
            "showing all folders.",
            icon=":material/folder_off:",
        )
    _set_param(param, folder or None)
    return folder


def _parse_day(text: str) -> date | None:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return day if DATE_MIN <= day <= DATE_MAX else None


def _url_dates(key: str) -> tuple[date, ...]:
    """The range a link asks for: (first, last) day, (first,) for "from then on", or ()."""
    first = _parse_day(st.query_params.get(f"{key}-from", ""))
    last = _parse_day(st.query_params.get(f"{key}-to", ""))
    # Older links held the date widget's own value: one or two repeated `{key}-dates`.
    old = [d for d in map(_parse_day, st.query_params.get_all(f"{key}-dates")) if d]
    if first is None and old:
        first, last = old[0], old[-1]
    if first is None:
        return (DATE_MIN, last) if last else ()
    return (first,) if last is None else tuple(sorted((first, last)))


def _date_widget(catalog: Catalog, key: str) -> tuple[date | None, date | None]:
    """The (from, to) days picked; a start alone means from that day on."""
    span = _date_span(str(catalog.db.url), catalog)
    # From the oldest photo, so that turning the filter on drops nothing by itself.
    first, last = span or (date.today(), date.today())
    default = (max(first, DATE_MIN), min(max(last, date.today()), DATE_MAX))
    picked = st.sidebar.date_input(
        "Taken between",
        value=_url_dates(key) or default,
        min_value=DATE_MIN,
        max_value=DATE_MAX,
        key=f"{key}-dates",
        help="Click a day twice for that day alone; a first day alone means from then on.",
    )
    days = tuple(picked) if isinstance(picked, Sequence) else (picked,) if picked else ()
    date_from = days[0] if days else None
    date_to = days[1] if len(days) > 1 else None
    if date_from and not date_to:
        st.sidebar.caption(f"From {date_from:%Y-%m-%d} on.")  # the box shows an empty end
    return date_from, date_to


def filter_widgets(catalog: Catalog, key: str) -> SearchFilters:
    """Folder and date-range filters in the sidebar; `key` keeps each page's choices apart.

    Their state lives in the URL, so reloading, going back or sharing a link keeps them.
    """
    folder = _folder_widget(catalog, key)
    use_dates = st.sidebar.toggle("Filter by date", key=f"{key}-use-dates", bind="query-params")
    date_from, date_to = _date_widget(catalog, key) if use_dates else (None, None)
    _set_param(f"{key}-dates", None)  # older links' form, now held as from/to
    _set_param(f"{key}-from", date_from.isoformat() if date_from else None)
    _set_param(f"{key}-to", date_to.isoformat() if date_to else None)
    return SearchFilters(folder=folder or None, date_from=date_from, date_to=date_to)


# -- grid ---------------------------------------------------------------------------------------


def back_here(page: str) -> BackLink:
    """The way back to this page (`page`: "search" or "browse") as the URL now shows it."""
    return BackLink.of_page(
        page, [(k, v) for k in st.query_params for v in st.query_params.get_all(k)]
    )


def incoming_back() -> BackLink | None:
    """On the detail page: where its "Back" leads, if the link that opened it said so."""
    return BackLink.from_params(st.query_params.to_dict())


def photo_grid(
    tiles: Sequence[Tile], *, keep_query: bool = False, back: BackLink | None = None
) -> None:
    """Thumbnails with caption, score and path, rendered in parallel and laid out as one block.

    Each tile's "More like this" opens the search page by that photo; with `keep_query` it keeps
    this page's query parameters (the search page binds its query and options to the URL).
    With `back` (see `back_here`), each detail link carries the way back to these results.
    """
    images = resources.get_thumbnails().get_many([(t.id, t.path) for t in tiles], THUMBNAIL_SIDE)
    params = st.query_params.to_dict() if keep_query else {}
    st.html(grid_html(tiles, images, params, back))


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
