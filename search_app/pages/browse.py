"""Browse page: the whole library, page by page, with folder and date filters and captions."""

from __future__ import annotations

import streamlit as st

from search_app import resources, ui
from storage import ImageDetail, ImageFilter

PAGE_SIZES = (12, 24, 48, 96)
ORDERS = {"date_desc": "Newest first", "date_asc": "Oldest first", "path": "By path"}


def _tile(detail: ImageDetail) -> ui.Tile:
    image = detail.image
    caption = detail.caption.text if detail.caption else None
    return ui.Tile(image.id, image.abs_path, caption, note=ui.format_date(image.photo_date))


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
# Filters or layout changed: start again from the first page.
view = (spec, page_size, order)
if st.session_state.get("browse-view") != view:
    st.session_state["browse-view"] = view
    st.session_state.pop("browse-page", None)

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
page = st.pagination(pages, key="browse-page") if pages > 1 else 1
result = catalog.list_images(spec, page=page - 1, page_size=page_size, order=order)
st.caption(f"{result.total} photos · page {page} of {result.pages}")
ui.photo_grid([_tile(d) for d in result.items])
