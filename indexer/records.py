"""The indexer's run settings and records, shared by `indexer.pipeline` (planning a run) and
`indexer.batch_loop` (running its batches)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from indexer.decode import DecodeConfig
from indexer.encode import EncodeConfig
from indexer.scan import FoundFile
from storage import VectorIndexConfig


@dataclass(frozen=True)
class IndexConfig:
    """One indexing run; built from command-line flags by `coca_search`."""

    photos_dir: Path  # the library root: every path in the catalog is relative to it
    index_path: Path  # this model's FAISS file (the caller names it per model id)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    # Seconds between index saves during a run: a crash costs at most one rebuild from the
    # catalog, while saving a large index after every batch would dominate the run.
    save_index_every_s: float = 120.0
    vectors: VectorIndexConfig = field(default_factory=VectorIndexConfig)


@dataclass(frozen=True)
class StageTimes:
    """Where the wall-clock time of a run went (seconds)."""

    open_index: float = 0.0  # loading (or rebuilding) the vector index
    scan: float = 0.0  # walk, diff against the catalog, removals and moves
    # The three stages run on their own threads and overlap: the indexing thread gathers
    # decoded images, the model thread runs the model, the commit thread writes the catalog.
    decode_wait: float = 0.0  # the indexing thread waiting for decoded images
    # The indexing thread waiting for the model thread to take a batch, and at the end for the
    # last batches to be stored.
    model_wait: float = 0.0
    model: float = 0.0  # model thread: vision pass + captions + copies back, synchronised
    model_device: float = 0.0  # the device's span over the model's kernels (CUDA events)
    commit: float = 0.0  # commit thread: catalog transactions and index updates
    commit_wait: float = 0.0  # the model thread waiting for the previous commit to finish
    save: float = 0.0  # writing the FAISS file


@dataclass(frozen=True)
class IndexProgress:
    """Reported after every committed batch (and once when the work is known)."""

    done: int  # files finished (indexed or failed)
    total: int  # files that need work in this run
    errors: int
    images_per_second: float


ProgressCallback = Callable[[IndexProgress], None]


@dataclass(frozen=True)
class WorkItem:
    """A file to run through the model; `image_id` is set when its catalog row is kept."""

    file: FoundFile
    image_id: int | None
    content_hash: str | None
