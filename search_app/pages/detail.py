"""Detail page (?id=N): the full photo, its caption with provenance, metadata and similar photos.

The id is the only thing read from the request, and only digits are accepted: anything else (a
path, a bogus number) shows the same "not found" and nothing more.
"""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from search_app import resources, ui
from search_app.library import CatalogMissingError
from search_app.search import SearchError
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


def _similar(image_id: int) -> None:
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
        query_params={"like": str(image_id)},
    )
    tiles = [ui.Tile(r.id, Path(r.path), r.caption, r.score) for r in response.results]
    ui.photo_grid(tiles)


config = resources.settings()
try:
    catalog = resources.get_catalog(str(config.catalog_path))
except CatalogMissingError:
    _not_found()
detail = _requested(catalog)
if detail is None:
    _not_found()

st.page_link("pages/search.py", label="Back to search", icon=":material/arrow_back:")
picture, about = st.columns([3, 2], gap="large")
with picture:
    ui.show_image(detail.image.id, detail.image.abs_path, full=True)
with about:
    _caption(detail)
    _metadata(detail)
_similar(detail.image.id)
