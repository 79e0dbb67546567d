"""Benchmark the product's vector index at library scale (CPU): build time, memory, latency, recall.

    .venv/bin/python benchmarks/bench_vectors.py --out bench_vectors.json        # 1M x 512
    .venv/bin/python benchmarks/bench_vectors.py --rows 100000 --out small.json  # quick look

The index is whatever `storage.VectorIndex.from_vectors` picks for that many rows (at 1M: IVF over
8-bit scalar-quantised vectors), with the default `VectorIndexConfig`: the benchmark measures the
product, not a tuned variant. Extra rows sweep `nprobe` to show the speed/recall trade-off.

Data: embedding-like unit vectors, generated in chunks of 100k with a fixed seed. Each vector is
    normalize(0.6 * m + 0.5 * S[s(c)] + 0.6 * C[c] + 0.45 * U_c z + 0.25 * g / sqrt(D))
with m a shared mean direction (CLIP-like anisotropy), S one of 64 "super-topic" directions, C one
of 4,000 cluster centres whose sizes follow a Zipf-like law (weight ~ rank^-0.7), U_c an orthonormal
16-dimensional subspace per cluster (one of 64) with z ~ N(0, I/16) (within-cluster variation that
lives in few dimensions, as real image variation does), and g ~ N(0, I) isotropic noise.
That gives random-pair cosine ~0.30 and nearest-neighbour cosine ~0.90, close to what CLIP image
embeddings of a photo collection show. Queries are 1,000 further draws, not in the index.
Ground truth: exact inner-product search (faiss.knn) over all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.vectors import VectorIndex, VectorIndexConfig  # noqa: E402


@dataclass(frozen=True)
class DataSpec:
    rows: int = 1_000_000
    dim: int = 512
    queries: int = 1_000
    clusters: int = 4_000
    super_topics: int = 64
    subspace_rank: int = 16
    subspaces: int = 64
    seed: int = 0
    chunk: int = 100_000


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def generate(spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    """(rows, D) base vectors and (queries, D) held-out queries, unit norm, float32."""
    rng = np.random.default_rng(spec.seed)
    d = spec.dim
    mean = _unit(rng.standard_normal(d))
    supers = _unit(rng.standard_normal((spec.super_topics, d)))
    centers = _unit(rng.standard_normal((spec.clusters, d)))
    super_of = rng.integers(0, spec.super_topics, spec.clusters)
    bases = np.stack(
        [
            np.linalg.qr(rng.standard_normal((d, spec.subspace_rank)))[0].T
            for _ in range(spec.subspaces)
        ]
    ).astype(np.float32)  # (subspaces, r, D)
    weights = 1.0 / np.arange(1, spec.clusters + 1) ** 0.7
    weights /= weights.sum()
    total = spec.rows + spec.queries
    out = np.empty((total, d), np.float32)
    for start in range(0, total, spec.chunk):
        m = min(spec.chunk, total - start)
        cluster = rng.choice(spec.clusters, m, p=weights)
        x = 0.6 * mean + 0.5 * supers[super_of[cluster]] + 0.6 * centers[cluster]  # (m, D)
        z = rng.standard_normal((m, spec.subspace_rank)).astype(np.float32)
        z *= 0.45 / np.sqrt(spec.subspace_rank)
        which = cluster % spec.subspaces
        for k in range(spec.subspaces):
            rows = np.nonzero(which == k)[0]
            x[rows] += z[rows] @ bases[k]  # (n_k, r) @ (r, D)
        x += 0.25 * rng.standard_normal((m, d)).astype(np.float32) / np.sqrt(d)
        out[start : start + m] = _unit(x)
    return out[: spec.rows], out[spec.rows :]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def single_query_latencies(index: VectorIndex, queries: np.ndarray, k: int, **kw) -> np.ndarray:
    index.search(queries[:10], k, **kw)  # warm-up
    times = np.empty(len(queries))
    for i in range(len(queries)):
        start = time.perf_counter()
        index.search(queries[i : i + 1], k, **kw)
        times[i] = time.perf_counter() - start
    return times * 1e3  # ms


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(result: dict, spec: DataSpec) -> str:
    default = result["sweep"][0]
    load = result["machine"]
    raw_gib = result["raw_float32_bytes"] / 2**30
    summary = _table(
        ("metric", "value", "target"),
        [
            ("vectors", f"{spec.rows:,} x {spec.dim}", "1,000,000 x 512"),
            ("index (chosen automatically)", f"{result['kind']}, nprobe {default['nprobe']}", ""),
            ("build time", f"{result['build_s']:.1f} s", "<= 300 s"),
            ("index bytes", f"{result['index_bytes'] / 2**30:.3f} GiB", f"<= {raw_gib:.2f} GiB"),
            ("recall@10", f"{default['recall_at_10']:.4f}", ">= 0.95"),
            (
                "single-query p50 / p95",
                f"{default['p50_ms']:.2f} / {default['p95_ms']:.2f} ms",
                "p50 <= 2 ms",
            ),
            ("p50 with a 10% id filter", f"{result['filtered_10pct_p50_ms']:.2f} ms", ""),
            (
                "load average start / end",
                f"{load['loadavg_start'][0]:.1f} / {load['loadavg_end'][0]:.1f}",
                f"{load['cpu_count']} cores",
            ),
        ],
    )
    sweep = _table(
        ("nprobe", "recall@10", "p50 ms", "p95 ms"),
        [
            (r["nprobe"], f"{r['recall_at_10']:.4f}", f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}")
            for r in sorted(result["sweep"], key=lambda r: r["nprobe"])
        ],
    )
    return summary + "\n\n" + sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--sweep", default="4,8,16,32", help="extra nprobe values to report")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    spec = DataSpec(rows=args.rows, dim=args.dim, queries=args.queries)
    config = VectorIndexConfig()
    result: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "faiss_omp_threads": faiss.omp_get_max_threads(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
            "processor": platform.processor(),
            "loadavg_start": os.getloadavg(),
        },
        "data": asdict(spec),
        "config": asdict(config),
    }

    start = time.perf_counter()
    base, queries = generate(spec)
    result["generate_s"] = time.perf_counter() - start
    sample = np.random.default_rng(1).choice(len(base), 2000, replace=False)
    result["data"]["random_pair_cosine"] = float(
        np.mean(np.sum(base[sample[:1000]] * base[sample[1000:]], axis=1))
    )
    print(f"generated {base.shape} in {result['generate_s']:.1f}s", flush=True)

    start = time.perf_counter()
    truth_scores, truth = faiss.knn(queries, base, args.k, metric=faiss.METRIC_INNER_PRODUCT)
    result["ground_truth_s"] = time.perf_counter() - start
    result["data"]["nn1_cosine"] = float(truth_scores[:, 0].mean())
    result["data"]["nn10_cosine"] = float(truth_scores[:, -1].mean())
    print(f"exact ground truth in {result['ground_truth_s']:.1f}s", flush=True)

    ids = np.arange(len(base), dtype=np.int64)
    start = time.perf_counter()
    index = VectorIndex.from_vectors(ids, base, model_id=1, config=config)
    result["build_s"] = time.perf_counter() - start
    result["kind"] = index.kind
    result["index_bytes"] = index.serialized_size()
    result["raw_float32_bytes"] = int(base.nbytes)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"built {index.kind} in {result['build_s']:.1f}s, {result['index_bytes'] / 1e6:.0f} MB",
        flush=True,
    )

    rows = []
    for nprobe in [config.nprobe] + [int(v) for v in args.sweep.split(",") if v]:
        if nprobe == config.nprobe and rows:
            continue
        index.nprobe = nprobe
        found = index.search(queries, args.k).ids
        latencies = single_query_latencies(index, queries, args.k)
        rows.append(
            {
                "nprobe": nprobe,
                "default": nprobe == config.nprobe,
                "recall_at_10": recall_at(found, truth),
                "p50_ms": float(np.percentile(latencies, 50)),
                "p95_ms": float(np.percentile(latencies, 95)),
            }
        )
        print(rows[-1], flush=True)
    index.nprobe = config.nprobe
    allowed = ids[np.random.default_rng(2).random(len(ids)) < 0.1]  # a 10% folder/date filter
    filtered = single_query_latencies(index, queries[:200], args.k, allowed_ids=allowed)
    result["filtered_10pct_p50_ms"] = float(np.percentile(filtered, 50))
    result["sweep"] = rows
    result["machine"]["loadavg_end"] = os.getloadavg()

    print()
    print(markdown_report(result, spec))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
