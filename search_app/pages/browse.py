"""Browse page: the whole library, page by page, with folder and date filters and captions."""

from __future__ import annotations

import streamlit as st

from search_app import resources, ui
from storage import ImageDetail, ImageFilter

PAGE_SIZES = (12, 24, 48, 96)
ORDERS = {"date_desc": "Newest first", "date_asc": "Oldest first", "path": "By path"}
PAGE_KEY = "browse-page"


def _tile(detail: ImageDetail) -> ui.Tile:
    image = detail.image
    caption = detail.caption.text if detail.caption else None
    return ui.Tile(image.id, image.abs_path, caption, note=ui.format_date(image.photo_date))


def _restart_on_new_view(view: tuple) -> None:
    """Filters or layout changed since this session's last run: start again from page 1.

    A session's first run keeps the page the URL asks for (a reload, a shared link, or Back
    from a photo, which opens a new session).
    """
    shown = st.session_state.get("browse-view")
    st.session_state["browse-view"] = view
    if shown is not None and shown != view:
        st.session_state[PAGE_KEY] = 1


st.title("Browse the library")
config = resources.settings()
catalog = ui.catalog_or_stop(config)

filters = ui.filter_widgets(catalog, key="browse")
st.sidebar.header("Layout")
page_size = st.sidebar.select_slider(
    "Photos per page", PAGE_SIZES, value=24, key="page_size", bind="query-params"
)
order = st.sidebar.selectbox(
    "Order", list(ORDERS), format_func=ORDERS.get, key="order", bind="query-params"
)

spec = ImageFilter(folder=filters.folder, date_from=filters.date_from, date_to=filters.date_to)
_restart_on_new_view((spec, page_size, order))

total = catalog.list_images(spec, page=0, page_size=1).total
if total == 0:
    if spec.is_empty:
        st.info(
            "No photos in the catalog yet: run coca-search index PHOTOS_DIR "
            f"--data {config.data_dir}",
            icon=":material/inbox:",
        )
    else:
        st.info("No photos in this folder and date range.", icon=":material/search_off:")
    st.stop()

pages = -(-total // page_size)
# Bound to the URL (?browse-page=3): reloading, or coming back from a photo, keeps the page.
page = st.pagination(pages, key=PAGE_KEY, bind="query-params") if pages > 1 else 1
result = catalog.list_images(spec, page=page - 1, page_size=page_size, order=order)
st.caption(f"{result.total} photos · page {page} of {result.pages}")
ui.photo_grid([_tile(d) for d in result.items], back=ui.back_here("browse"))
