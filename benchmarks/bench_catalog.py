"""Benchmark the catalog's batch write path: `Catalog.store_indexed` on a temp SQLite file.

    .venv/bin/python benchmarks/bench_catalog.py                    # 10 batches x 512 rows
    .venv/bin/python benchmarks/bench_catalog.py --batches 20 --json

Each batch is what the indexer commits after one model pass: new images (metadata), one 512-d
float32 embedding and one caption each, in one transaction. A second phase stores the same paths
again with new content hashes (the "changed files" path: row updates, old output dropped, new
output stored). The GPU indexing target (2,500 images/s end to end) leaves the commit thread well
under 100 ms for a batch of 512. Every few batches a commit also checkpoints the WAL into the
database file (an fsync): that is the max column; on a shared machine, min is the steadiest.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import Catalog, ImageMeta, IndexedFile, NewCaption, open_catalog  # noqa: E402

_DECODING = {"generation_type": "greedy", "seq_len": 20, "num_beams": 1}
_WORDS = "a red car parked next to a small dog on the grass under blue sky".split()


@dataclass(frozen=True)
class PhaseResult:
    phase: str
    batches: int
    rows: int
    rows_per_second: float
    batch_ms_min: float
    batch_ms_median: float
    batch_ms_max: float


def make_batch(
    rng: np.random.Generator, root: str, start: int, size: int, dim: int, version: int
) -> list[IndexedFile]:
    """`size` files numbered from `start`; `version` changes their content hash."""
    vectors = rng.standard_normal((size, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    files = []
    for row in range(size):
        number = start + row
        meta = ImageMeta(
            root=root,
            path=f"album{number // 1000:03d}/IMG_{number:06d}.jpg",
            size=200_000 + number,
            mtime_ns=1_700_000_000_000_000_000 + number + version,
            content_hash=f"{number:016x}{version:016x}",
            width=1024,
            height=768,
            format="JPEG",
            taken_at=datetime(2023, 5, 1 + number % 28, 12, number % 60),
            camera="Bench Camera",
        )
        words = rng.choice(_WORDS, size=8)
        caption = NewCaption(" ".join(words), _DECODING, float(-rng.random()))
        files.append(IndexedFile(meta, vectors[row], caption))
    return files


def run_phase(
    catalog: Catalog, model_id: int, phase: str, batches: list[list[IndexedFile]]
) -> PhaseResult:
    seconds = []
    for batch in batches:
        start = time.perf_counter()
        catalog.store_indexed(model_id, batch)
        seconds.append(time.perf_counter() - start)
    rows = sum(len(batch) for batch in batches)
    return PhaseResult(
        phase=phase,
        batches=len(batches),
        rows=rows,
        rows_per_second=round(rows / sum(seconds), 1),
        batch_ms_min=round(1000 * min(seconds), 2),
        batch_ms_median=round(1000 * statistics.median(seconds), 2),
        batch_ms_max=round(1000 * max(seconds), 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    root = "/photos"
    sizes = range(0, args.batches * args.batch_size, args.batch_size)
    new = [make_batch(rng, root, s, args.batch_size, args.dim, 0) for s in sizes]
    changed = [make_batch(rng, root, s, args.batch_size, args.dim, 1) for s in sizes]
    with tempfile.TemporaryDirectory() as folder:
        catalog = open_catalog(Path(folder) / "catalog.db")
        model_id = catalog.get_or_create_model("bench", "0" * 32, args.dim)
        results = [
            run_phase(catalog, model_id, "new", new),
            run_phase(catalog, model_id, "changed", changed),
        ]
        stats = catalog.stats()
        catalog.db.dispose()
    expected = args.batches * args.batch_size
    if stats.images != expected or stats.models[0].captions != expected:
        raise SystemExit(f"catalog holds {stats}, expected {expected} images with captions")
    if args.json:
        report = {"machine": platform.platform(), "results": [asdict(r) for r in results]}
        print(json.dumps(report, indent=2))
        return
    for r in results:
        print(
            f"{r.phase:8s} {r.rows:6d} rows in {r.batches} batches: {r.rows_per_second:9.1f} rows/s"
            f"  (batch ms: min {r.batch_ms_min}, median {r.batch_ms_median}, max {r.batch_ms_max})"
        )


if __name__ == "__main__":
    main()
