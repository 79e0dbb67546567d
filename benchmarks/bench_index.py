"""Indexing throughput end to end: JPEG files on disk -> committed catalog rows + vector index.

    python benchmarks/bench_index.py --model preset:coca_default_small --count 2000 --size 640x480
    python benchmarks/bench_index.py --model preset:coca_ViT-B-32 --device cuda --count 20000 \
        --size 1024x768 --batch-size 512
    python benchmarks/bench_index.py --rescan 100000        # re-scan of unchanged files

`--model` takes any `coca.load` source ("default", a folder, a hub id) or `preset:NAME` for a
random-weight model built from a preset (coca.config.PRESETS or coca.recipe.TRAINING_PRESETS);
random weights never emit <end_of_text>, so every caption runs the full --caption-tokens.

The photos are rendered once per size from the procedural world (a few distinct scenes) and each
file gets a unique trailer after the JPEG end marker, so every file hashes differently but
decodes like a real 1024x768 / 640x480 photo. Files are read from the page cache after writing.
Prints one JSON line: images/s and where the time went (scan, decode wait, model busy, commit).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import coca  # noqa: E402
import storage  # noqa: E402
from coca.generate import DecodingConfig  # noqa: E402
from indexer.decode import DecodeConfig  # noqa: E402
from indexer.encode import EncodeConfig, default_cpu_threads, resolve_device  # noqa: E402
from indexer.pipeline import IndexConfig, register_model, run_index  # noqa: E402
from indexer.scan import walk_images  # noqa: E402
from search_app.search import DataLayout  # noqa: E402

BASE_IMAGES = 16


def build_model(source: str, device: torch.device) -> torch.nn.Module:
    """coca.load(source), or a random-weight preset model for `preset:NAME`."""
    if not source.startswith("preset:"):
        return coca.load(source, device=device)
    name = source.removeprefix("preset:")
    from coca.recipe import TRAINING_PRESETS, build_model

    if name in TRAINING_PRESETS:
        model = build_model(name).eval()  # the world's tokenizer and squash preprocessing
    else:
        from coca.model import CoCa
        from coca.preprocess import Preprocess, PreprocessConfig
        from coca.tokenizer import Tokenizer

        config = coca.get_config(name)
        torch.manual_seed(0)
        model = CoCa(config).eval()
        model.tokenizer = Tokenizer.clip(context_length=config.text.context_length)
        model.preprocess = Preprocess(PreprocessConfig(image_size=config.vision.image_size))
    model.source = source
    return model.to(device)


def base_jpegs(size: tuple[int, int]) -> list[bytes]:
    """A few rendered scenes as JPEG bytes (quality ~90, like a camera's export)."""
    from coca.world import render_scene, scene_for_seed

    jpegs = []
    for index in range(BASE_IMAGES):
        image = render_scene(scene_for_seed(1000 + index), *size)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def write_photos(folder: Path, count: int, size: tuple[int, int]) -> float:
    """`count` distinct JPEG files in folders of 1,000; returns the seconds it took."""
    start = time.perf_counter()
    jpegs = base_jpegs(size)

    def write(index: int) -> None:
        path = folder / f"roll{index // 1000:03d}" / f"IMG_{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpegs[index % len(jpegs)] + index.to_bytes(8, "little"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(count)))
    return time.perf_counter() - start


def run_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    device = resolve_device(args.device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or default_cpu_threads())  # as `coca-search index`
    width, height = (int(v) for v in args.size.lower().split("x"))
    photos, layout = workdir / "photos", DataLayout(workdir / "data")
    write_seconds = write_photos(photos, args.count, (width, height))
    model = build_model(args.model, device)
    catalog = storage.open_catalog(layout.catalog_path)
    decoding = DecodingConfig(generation_type="greedy", seq_len=args.caption_tokens, min_seq_len=1)
    config = IndexConfig(
        photos_dir=photos,
        index_path=layout.index_path(register_model(catalog, model)),
        decode=DecodeConfig(workers=args.workers),
        encode=EncodeConfig(
            batch_size=args.batch_size, captions=not args.no_captions, decoding=decoding
        ),
    )
    if args.warmup:
        warm(model, config)
    summary = run_index(config, model, catalog)
    return {
        "benchmark": "index_throughput",
        "model": args.model,
        "device": _device_name(device),
        "count": args.count,
        "size": f"{width}x{height}",
        "batch_size": args.batch_size,
        "workers": args.workers,
        "torch_threads": torch.get_num_threads(),
        "captions": not args.no_captions,
        "caption_tokens": args.caption_tokens,
        "images_per_second": summary.images_per_second,
        "seconds": summary.seconds,
        "indexed": summary.indexed,
        "errors": summary.errors,
        "times": summary.to_dict()["times"],
        "model_images_per_second": round(summary.indexed / max(summary.times.model, 1e-9), 1),
        "write_files_seconds": round(write_seconds, 2),
    }


def warm(model: torch.nn.Module, config: IndexConfig) -> None:
    """One batch through the model first, so CUDA start-up and autotuning are not timed."""
    from indexer.encode import BatchEncoder

    size = model.preprocess.image_size
    images = [torch.zeros(3, size, size, dtype=torch.uint8)] * config.encode.batch_size
    BatchEncoder(model, config.encode).encode(images)


def run_rescan(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """Time a run over `--rescan` files that are all unchanged (catalogued with embeddings)."""
    photos, layout = workdir / "photos", DataLayout(workdir / "data")
    jpeg = base_jpegs((64, 48))[0]
    for index in range(args.rescan):
        path = photos / f"d{index // 1000:03d}" / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg + index.to_bytes(8, "little"))
    model = build_model(args.model, torch.device("cpu"))
    catalog = storage.open_catalog(layout.catalog_path)
    model_id = register_model(catalog, model)
    fill_catalog(catalog, model_id, photos, model.config.embed_dim)
    config = IndexConfig(photos_dir=photos, index_path=layout.index_path(model_id))
    first = run_index(config, model, catalog)  # builds and saves the vector index once
    start = time.perf_counter()
    second = run_index(config, model, catalog)
    return {
        "benchmark": "rescan_unchanged",
        "files": args.rescan,
        "seconds": round(time.perf_counter() - start, 3),
        "first_run_seconds": first.seconds,
        "unchanged": second.unchanged,
        "indexed": second.indexed,
        "times": second.to_dict()["times"],
    }


def fill_catalog(catalog: storage.Catalog, model_id: int, photos: Path, dim: int) -> None:
    """Catalog every file as if indexed (random unit vectors): what a finished run leaves."""
    rng = np.random.default_rng(0)
    root = photos.resolve().as_posix()
    files = list(walk_images(photos))
    for start in range(0, len(files), 5000):
        chunk = files[start : start + 5000]
        vectors = rng.standard_normal((len(chunk), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = [
            storage.IndexedFile(
                storage.ImageMeta(root, f.relative_path, f.size, f.mtime_ns, None), vector
            )
            for f, vector in zip(chunk, vectors, strict=True)
        ]
        catalog.store_indexed(model_id, rows)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="preset:coca_default_small")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the JPEG files")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: CPUs - 1)")
    parser.add_argument("--caption-tokens", type=int, default=20)
    parser.add_argument("--no-captions", action="store_true")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--rescan", type=int, default=0, help="time a re-scan of N unchanged files")
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    return parser.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_index_"))
    try:
        result = run_rescan(args, workdir) if args.rescan else run_throughput(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
