"""Objects shared by every browser session, made once per server process (st.cache_resource):
the catalog, the model and the search engine. All three are safe to use from many threads.

Failures are not cached (Streamlit re-runs a cached function that raised), so the app recovers by
itself once the catalog exists or the model is installed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st
import torch

from search_app.library import open_catalog_for_reading
from search_app.search import DataLayout, SearchEngine
from search_app.settings import AppSettings
from search_app.thumbnails import ThumbnailCache
from storage import Catalog

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The app's model could not be loaded; the message says what to do."""


def settings() -> AppSettings:
    return AppSettings.from_env()


@st.cache_resource(show_spinner=False)
def get_catalog(catalog_path: str) -> Catalog:
    return open_catalog_for_reading(Path(catalog_path))


def _resolve_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("the app was started with --device cuda but no CUDA GPU is available")
    return choice


@st.cache_resource(show_spinner="Loading the model…")
def get_model(source: str, device: str) -> torch.nn.Module:
    import coca

    model = coca.load(source, device=_resolve_device(device))
    torch.set_grad_enabled(False)
    # One query at a time per session: extra intra-op threads only spin against the thumbnail
    # renderers and the other sessions on a small machine.
    torch.set_num_threads(1)
    return model


@st.cache_resource(show_spinner=False)
def get_engine(data_dir: str, source: str, device: str) -> SearchEngine:
    catalog = get_catalog(str(DataLayout(Path(data_dir)).catalog_path))
    return SearchEngine(catalog, None, get_model(source, device))


@st.cache_resource(show_spinner=False)
def get_thumbnails() -> ThumbnailCache:
    return ThumbnailCache()


def ready_engine(config: AppSettings) -> SearchEngine:
    """The shared engine, pointed at the loaded model's index file.

    Raises ModelLoadError, or the engine's SearchError subclasses (empty catalog, model
    mismatch), for the page to show; checked on every call, so indexing while the app runs is
    picked up.
    """
    import coca

    try:
        engine = get_engine(str(config.data_dir), config.model_source, config.device)
    except (coca.CheckpointError, OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(
            f"the search model {config.model_source!r} could not be loaded ({error}); restart "
            "with coca-search serve --model SOURCE, the model the catalog was indexed with"
        ) from error
    model_id = engine.model_id()
    if engine.index_path is None:
        # Set once (always to the same value): the engine reloads the index from this file.
        engine.index_path = DataLayout(config.data_dir).index_path(model_id)
    return engine
