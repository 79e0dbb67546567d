"""The coca-search web app's entry point: it only routes. Start it with `coca-search serve`.

Pages live in search_app/pages/; the data folder and model come from search_app.settings.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run search_app/app.py` puts search_app/ (not the project) on sys.path; the app's
# modules import as `search_app.*` like everywhere else.
_PROJECT = str(Path(__file__).resolve().parent.parent)
if _PROJECT not in sys.path:
    sys.path.insert(0, _PROJECT)

import streamlit as st  # noqa: E402

st.set_page_config(page_title="coca-search", page_icon=":material/image_search:", layout="wide")
router = st.navigation(
    [
        st.Page("pages/search.py", title="Search", icon=":material/search:", default=True),
        st.Page("pages/browse.py", title="Browse", icon=":material/photo_library:"),
        st.Page("pages/detail.py", title="Photo", icon=":material/image:", visibility="hidden"),
    ]
)
router.run()
