"""Search page: text query, more-like-this and search by an uploaded photo, with filters."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from search_app import resources, ui
from search_app.grid import LIKE_PARAM
from search_app.search import (
    BadQueryError,
    SearchError,
    SearchFilters,
    SearchOptions,
    SearchResponse,
    SearchResult,
    open_upload,
)
from storage import Catalog

RESULT_COUNTS = (8, 12, 20, 40, 100)
KEEP_ALL_SCORE = -0.2  # the minimum-score slider's left end: no cutoff


def _clear_similar() -> None:
    st.query_params.pop(LIKE_PARAM, None)


def _like_id() -> int | None:
    raw = st.query_params.get(LIKE_PARAM, "")
    return int(raw) if raw.isdigit() and len(raw) <= 12 else None


def _options(filters: SearchFilters) -> SearchOptions:
    st.sidebar.header("Results")
    k = st.sidebar.select_slider(
        "Number of results", RESULT_COUNTS, value=20, key="k", bind="query-params"
    )
    hybrid = st.sidebar.toggle(
        "Hybrid: also match captions",
        key="hybrid",
        bind="query-params",
        help="Fuse image similarity with full-text matches on the generated captions (RRF).",
    )
    min_score = st.sidebar.slider(
        "Minimum score",
        KEEP_ALL_SCORE,
        1.0,
        value=KEEP_ALL_SCORE,
        step=0.01,
        key="min_score",
        bind="query-params",
        help="Drop results whose similarity to the query is lower (the left end keeps all).",
    )
    sort_by_date = st.sidebar.toggle(
        "Newest first",
        key="sort_by_date",
        bind="query-params",
        help="Sort what passes the minimum score by date.",
    )
    cutoff = None if min_score <= KEEP_ALL_SCORE else min_score
    return SearchOptions(k, filters, hybrid, cutoff, sort_by_date)


def _tiles(results: list[SearchResult]) -> list[ui.Tile]:
    return [
        ui.Tile(r.id, Path(r.path), r.caption, r.score, ui.format_date(r.photo_date))
        for r in results
    ]


def _show(response: SearchResponse, what: str) -> None:
    count = len(response.results)
    dropped = f", {response.cut_off} below the minimum score" if response.cut_off else ""
    st.caption(f"{count} {what} in {response.latency_ms:.0f} ms{dropped}")
    if not response.results:
        st.info(
            "No photos match. Try other words, another folder or date range, or a lower "
            "minimum score.",
            icon=":material/search_off:",
        )
        return
    ui.photo_grid(_tiles(response.results), keep_query=True)


def _reference(catalog: Catalog, image_id: int) -> None:
    """The photo a more-like-this search started from, small, with a way back."""
    detail = catalog.get_image(image_id)
    thumb, text = st.columns([1, 4], vertical_alignment="center")
    if detail is not None:
        with thumb:
            ui.show_image(image_id, detail.image.abs_path, link=ui.detail_href(image_id))
    caption = detail.caption.text if detail and detail.caption else ""
    text.subheader("More like this photo")
    if caption:
        text.markdown(ui.escape(caption))
    text.button("Back to the text search", on_click=_clear_similar)


st.title("Search your photos")
config = resources.settings()
catalog = ui.catalog_or_stop(config)
try:
    engine = resources.ready_engine(config)
except SearchError as error:  # empty catalog, model mismatch
    st.warning(str(error), icon=":material/warning:")
    st.page_link(
        "pages/browse.py", label="Browse the catalog instead", icon=":material/photo_library:"
    )
    st.stop()
except resources.ModelLoadError as error:
    st.error(str(error))
    st.stop()

options = _options(ui.filter_widgets(catalog, key="search"))
query = st.text_input(
    "Describe what you are looking for",
    key="q",
    placeholder="e.g. two red cars on the beach",
    on_change=_clear_similar,
    bind="query-params",
)
with st.expander("…or search with a photo of your own"):
    upload = st.file_uploader(
        "Photo", type=None, key="upload", on_change=_clear_similar, label_visibility="collapsed"
    )

like = _like_id()
try:
    if like is not None:
        _reference(catalog, like)
        _show(engine.find_similar(like, options.k, options.filters), "similar photos")
    elif upload is not None:
        image = open_upload(upload.getvalue())
        _show(engine.search_image(image, options.k, options.filters), "photos like your upload")
    elif query.strip():
        response = engine.search_text(
            query,
            options.k,
            options.filters,
            options.hybrid,
            options.min_score,
            options.sort_by_date,
        )
        _show(response, "photos")
    else:
        st.caption("Type a description and press Enter. Filters are in the sidebar.")
except BadQueryError as error:
    st.error(str(error))
except SearchError as error:
    st.warning(str(error), icon=":material/warning:")
