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
)
from search_app.thumbnails import THUMBNAIL_SIDE
from search_app.uploads import open_upload
from storage import Catalog

RESULT_COUNTS = (8, 12, 20, 40, 100)
KEEP_ALL_SCORE = -0.2  # the minimum-score slider's left end: no cutoff
UPLOAD_KEY = "upload"
_UPLOAD_GENERATION = "upload-generation"  # bumped to empty the uploader


def _clear_similar() -> None:
    st.query_params.pop(LIKE_PARAM, None)


def _upload_key() -> str:
    # A file uploader's value can't be set from Python: a new key is a new, empty uploader. The
    # first keeps the plain key that tests (and anyone reading the session state) know it by.
    generation = st.session_state.get(_UPLOAD_GENERATION, 0)
    return UPLOAD_KEY if generation == 0 else f"{UPLOAD_KEY}-{generation}"


def _new_text_query() -> None:
    """A query typed and entered replaces whatever was shown: more like this, or the upload."""
    _clear_similar()
    if st.session_state.get(_upload_key()) is not None:
        st.session_state[_UPLOAD_GENERATION] = st.session_state.get(_UPLOAD_GENERATION, 0) + 1


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


def _way_back() -> ui.BackLink | None:
    """What a detail link must carry to come back to these results; None when the URL holds
    nothing to restore (the detail page's plain "Back to search" does the same)."""
    back = ui.back_here("search")
    return back if back.query else None


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
    ui.photo_grid(_tiles(response.results), keep_query=True, back=_way_back())


def _reference_image(image_id: int, path: Path, alt: str) -> None:
    # st.image itself rather than ui.show_image: that one gives every image alt="", and this
    # one stands for the whole search, so a screen reader must be told what it shows.
    rendered = resources.get_thumbnails().get(image_id, path, THUMBNAIL_SIDE)
    if rendered is None:
        st.warning("The file is missing or unreadable.", icon=":material/broken_image:")
        return
    st.image(
        rendered.data,
        width="stretch",
        link=ui.detail_href(image_id, _way_back()),
        alt=alt,
    )


def _reference(catalog: Catalog, image_id: int) -> None:
    """The photo a more-like-this search started from, small, with a way back."""
    detail = catalog.get_image(image_id)
    thumb, text = st.columns([1, 4], vertical_alignment="center")
    caption = detail.caption.text if detail and detail.caption else ""
    if detail is not None:
        with thumb:
            alt = caption or detail.image.abs_path.name
            _reference_image(image_id, detail.image.abs_path, alt)
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
    on_change=_new_text_query,
    bind="query-params",
)
with st.expander("…or search with a photo of your own"):
    upload = st.file_uploader(
        "Photo",
        type=None,
        key=_upload_key(),
        on_change=_clear_similar,
        label_visibility="collapsed",
    )

like = _like_id()
try:
    if like is not None:
        _reference(catalog, like)
        response = engine.find_similar(
            like, options.k, options.filters, options.min_score, options.sort_by_date
        )
        _show(response, "similar photos")
    elif upload is not None:
        image = open_upload(upload.getvalue())
        response = engine.search_image(
            image, options.k, options.filters, options.min_score, options.sort_by_date
        )
        _show(response, "photos like your upload")
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
