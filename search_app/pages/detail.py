"""Detail page (?id=N): the full photo, its caption with provenance, metadata and similar photos.

The id is the only thing looked up from the request, and only digits are accepted: anything else
(a path, a bogus number) shows the same "not found" and nothing more. The grid's links may add
the way back to their results (`from` and `back`, see grid.BackLink): those are only handed back
to that page, whose widgets check them as they check any shared link.
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from search_app import resources, ui
from search_app.grid import LIKE_PARAM
from search_app.library import CatalogMissingError
from search_app.search import SearchError
from search_app.thumbnails import FULL_SIDE
from storage import Catalog, ImageDetail

SIMILAR_COUNT = 8
_ID = re.compile(r"[0-9]{1,12}")


def _requested(catalog: Catalog) -> ImageDetail | None:
    raw = st.query_params.get("id", "")
    if not _ID.fullmatch(raw):
        return None
    detail = catalog.get_image(int(raw))
    return detail if detail is not None and detail.image.status == "ok" else None


def _not_found() -> None:
    st.title("Photo not found")
    st.error("There is no photo with this id in the catalog.")
    st.page_link("pages/browse.py", label="Browse the library", icon=":material/photo_library:")
    st.stop()


def _back_link(back: ui.BackLink | None) -> None:
    """To the results this photo was opened from, as they were; a plain search without them."""
    if back is None:
        st.page_link("pages/search.py", label="Back to search", icon=":material/arrow_back:")
        return
    st.page_link(
        back.page_file,
        label=f"Back to {back.page}",
        icon=":material/arrow_back:",
        query_params=back.params,
    )


def _photo(detail: ImageDetail) -> None:
    """The photo, large; st.image itself since ui.show_image gives it no alt text."""
    image = detail.image
    rendered = resources.get_thumbnails().get(image.id, image.abs_path, FULL_SIDE)
    if rendered is None:
        st.warning(
            "The file is missing or unreadable; re-run the indexer.", icon=":material/broken_image:"
        )
        return
    alt = detail.caption.text if detail.caption else image.abs_path.name
    st.image(rendered.data, width="stretch", alt=alt)


def _caption(detail: ImageDetail) -> None:
    caption = detail.caption
    if caption is None:
        st.info("This photo has no caption yet (indexed with --no-captions, or still queued).")
        return
    st.subheader(ui.escape(caption.text))
    st.caption(
        f"Caption by model {ui.escape(caption.model_source)}, "
        f"{caption.created_at:%Y-%m-%d %H:%M}"
        + (f", score {caption.score:.3f}" if caption.score is not None else "")
    )
    every = ", ".join(f"{name}={value}" for name, value in sorted(caption.decoding.items()))
    st.caption(
        f"Decoding: {ui.escape(ui.decoding_summary(caption.decoding))}",
        help=ui.escape(every) if every else None,
    )


def _metadata(detail: ImageDetail) -> None:
    image = detail.image
    facts = {
        "Path": str(image.abs_path),
        "Dimensions": f"{image.width} × {image.height} px" if image.width else "unknown",
        "Format": image.format or "unknown",
        "File size": ui.format_size(image.size),
        "Taken at": ui.format_date(image.taken_at) or "unknown (no EXIF date)",
        "Camera": image.camera or "unknown",
        "Indexed at": ui.format_date(image.indexed_at) or "unknown",
    }
    st.markdown("\n".join(f"- **{name}:** {ui.escape(value)}" for name, value in facts.items()))


def _search_options(back: ui.BackLink | None) -> list[tuple[str, str]]:
    """The options (number of results, filters...) of the search that led here, if one did:
    "More like this" keeps them, as the grid's own "More like this" links do."""
    if back is None or back.page != "search":
        return []
    return [(name, value) for name, value in back.params if name != LIKE_PARAM]


def _similar(image_id: int, back: ui.BackLink | None) -> None:
    st.subheader("Similar photos")
    config = resources.settings()
    try:
        engine = resources.ready_engine(config)
        response = engine.find_similar(image_id, SIMILAR_COUNT)
    except (SearchError, resources.ModelLoadError) as error:
        st.info(f"Similar photos are unavailable: {error}")
        return
    st.page_link(
        "pages/search.py",
        label="More like this",
        icon=":material/search:",
        query_params=[*_search_options(back), (LIKE_PARAM, str(image_id))],
    )
    tiles = [ui.Tile(r.id, Path(r.path), r.caption, r.score) for r in response.results]
    # Hop from photo to similar photo as long as you like: "Back" still leads to the results.
    ui.photo_grid(tiles, back=back)


config = resources.settings()
try:
    catalog = resources.get_catalog(str(config.catalog_path))
except CatalogMissingError:
    _not_found()
detail = _requested(catalog)
if detail is None:
    _not_found()

back = ui.incoming_back()
_back_link(back)
picture, about = st.columns([3, 2], gap="large")
with picture:
    _photo(detail)
with about:
    _caption(detail)
    _metadata(detail)
_similar(detail.image.id, back)
