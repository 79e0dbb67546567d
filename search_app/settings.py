"""What the web app serves: the data folder, the model and the device, handed over by `coca-search
serve` through environment variables (Streamlit runs the app script in its own process).

No streamlit here: the settings are plain data, read once per process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_DATA = "COCA_SEARCH_DATA"
ENV_MODEL = "COCA_SEARCH_MODEL"
ENV_DEVICE = "COCA_SEARCH_DEVICE"

DEFAULT_DATA_DIR = Path("coca-data")  # as `coca-search index` defaults
CATALOG_NAME = "catalog.db"


@dataclass(frozen=True)
class AppSettings:
    """One served catalog."""

    data_dir: Path  # holds catalog.db and the per-model FAISS files the indexer writes
    model_source: str = (
        "default"  # as given to coca.load: the same model the catalog was indexed with
    )
    device: str = "auto"  # auto picks CUDA when present

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / CATALOG_NAME

    def to_env(self) -> dict[str, str]:
        """The variables `from_env` reads, for the Streamlit subprocess."""
        return {
            ENV_DATA: str(self.data_dir),
            ENV_MODEL: self.model_source,
            ENV_DEVICE: self.device,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AppSettings:
        env = os.environ if environ is None else environ
        data_dir = Path(env.get(ENV_DATA) or DEFAULT_DATA_DIR).expanduser().resolve()
        return cls(
            data_dir=data_dir,
            model_source=env.get(ENV_MODEL) or "default",
            device=env.get(ENV_DEVICE) or "auto",
        )
