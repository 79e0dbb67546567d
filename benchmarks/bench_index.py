"""Indexing throughput end to end: JPEG files on disk -> committed catalog rows + vector index.

    python benchmarks/bench_index.py --model preset:coca_default_small --count 2000 --size 640x480
    python benchmarks/bench_index.py --model preset:coca_ViT-B-32 --device cuda --count 20480 \
        --size 1024x768 --batch-size 512 --photos /tmp/lib_1024 --json-out b32.json
    bash benchmarks/gpu_index_run.sh $OUT                   # the GPU runs, one command
    python benchmarks/bench_index.py --rescan 100000        # re-scan of unchanged files

`--model` takes any `coca.load` source ("default", a folder, a hub id) or `preset:NAME` for a
random-weight model built from a preset (coca.config.PRESETS or coca.recipe.TRAINING_PRESETS);
random weights never emit <end_of_text>, so every caption runs the full --caption-tokens.

The photos are rendered once per size from the procedural world (16 distinct scenes), given
camera-like grain (so a 1024x768 file is ~150 KB at quality 90, like a phone photo, rather than
the ~70 KB of flat synthetic shapes, which decode faster) and EXIF (camera, time, orientation 1);
each file gets a unique trailer after the JPEG end marker, so every file hashes differently. The
files are written in parallel and read from the page cache. `--photos DIR` keeps the library for
the next run (it is reused when it already holds --count files).

Prints one JSON line: images/s end to end (scan + decode + model + commit + index save) and where
the wall time went. Three threads overlap: the indexing thread gathers decoded images
(`decode_wait`: waiting for the decoders; `model_wait`: waiting for the model thread to take the
next batch), the model thread runs the model (`model`: its host wall time; `model_device`: the
GPU's span over the model's kernels from CUDA events; `commit_wait`: waiting for the commit
thread) and the commit thread writes the catalog (`commit`).
`decode_only_images_per_second` is the decode stage alone over the same files (the ceiling of
the decoder the run used: `--decode cpu` Pillow's worker pool, `--decode gpu` header workers +
nvJPEG + resize on the GPU); with the GPU decoder, `gpu_vs_pillow_pixels` says how far its model
inputs are from the Pillow path's on the first 64 files.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import coca  # noqa: E402
import storage  # noqa: E402
from coca.generate import DecodingConfig  # noqa: E402
from coca.step_graphs import captured_graph_count  # noqa: E402
from indexer.decode import BACKENDS, DECODERS, DecodeConfig, decode_all  # noqa: E402
from indexer.encode import (  # noqa: E402
    EncodeConfig,
    default_decoding,
    default_threads,
    resolve_device,
)
from indexer.gpu_decode import decode_for_model  # noqa: E402
from indexer.pipeline import (  # noqa: E402
    IndexConfig,
    IndexProgress,
    IndexSummary,
    register_model,
    run_index,
)
from indexer.scan import walk_images  # noqa: E402
from search_app.search import DataLayout  # noqa: E402

BASE_IMAGES = 16


WEIGHTS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(
    source: str, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """coca.load(source), or a random-weight preset model for `preset:NAME`, in `dtype`.

    fp32 weights (with bf16 autocast on a GPU) are what `coca-search index` runs.
    """
    if not source.startswith("preset:"):
        return coca.load(source, device=device, dtype=dtype)
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
        with device:  # random init on the GPU: seconds instead of a minute for L-14 on a CPU
            model = CoCa(config).eval()
        model.tokenizer = Tokenizer.clip(context_length=config.text.context_length)
        model.preprocess = Preprocess(PreprocessConfig(image_size=config.vision.image_size))
    model.source = source
    return model.to(device=device, dtype=dtype)


def base_jpegs(size: tuple[int, int], grain: float = 6.0) -> list[bytes]:
    """A few rendered scenes as JPEG bytes (quality 90, grain and EXIF like a camera's export)."""
    from coca.world import render_scene, scene_for_seed

    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 1  # orientation: upright (the decoder still reads and applies it)
    exif[0x010F], exif[0x0110] = "Benchcam", "Benchcam One"
    exif.get_ifd(0x8769)[0x9003] = "2024:06:01 12:00:00"
    jpegs = []
    for index in range(BASE_IMAGES):
        image = render_scene(scene_for_seed(1000 + index), *size)
        if grain > 0:
            pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
            pixels = pixels + rng.normal(0.0, grain, pixels.shape).astype(np.float32)
            image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90, exif=exif)
        jpegs.append(buffer.getvalue())
    return jpegs


def photo_path(folder: Path, index: int) -> Path:
    return folder / f"roll{index // 1000:03d}" / f"IMG_{index:06d}.jpg"


def write_photos(folder: Path, count: int, size: tuple[int, int], grain: float = 6.0) -> float:
    """`count` distinct JPEG files in folders of 1,000; returns the seconds it took."""
    start = time.perf_counter()
    jpegs = base_jpegs(size, grain)
    for index in range(0, count, 1000):
        photo_path(folder, index).parent.mkdir(parents=True, exist_ok=True)

    def write(index: int) -> None:
        trailer = index.to_bytes(8, "little")  # after the end marker: decoders ignore it
        photo_path(folder, index).write_bytes(jpegs[index % len(jpegs)] + trailer)

    with ThreadPoolExecutor(min(32, 2 * (os.cpu_count() or 2))) as pool:
        list(pool.map(write, range(count), chunksize=256))
    return time.perf_counter() - start


def library(folder: Path, count: int, size: tuple[int, int], grain: float) -> float:
    """Write the library unless `folder` already holds exactly `count` photos; seconds spent."""
    if folder.is_dir():
        found = sum(1 for _ in walk_images(folder))
        if found == count:
            return 0.0
        if found or any(folder.iterdir()):
            raise SystemExit(f"{folder} holds {found} photos, not {count}: pass a new folder")
    return write_photos(folder, count, size, grain)


def run_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads or default_threads(device))  # as `coca-search index`
    width, height = (int(v) for v in args.size.lower().split("x"))
    photos, layout = args.photos or workdir / "photos", DataLayout(workdir / "data")
    write_seconds = library(photos, args.count, (width, height), args.grain)
    model = build_model(args.model, device, WEIGHTS[args.weights])
    catalog = storage.open_catalog(layout.catalog_path)
    decoding = DecodingConfig(generation_type="greedy", seq_len=args.caption_tokens, min_seq_len=1)
    config = IndexConfig(
        photos_dir=photos,
        index_path=layout.index_path(register_model(catalog, model)),
        decode=DecodeConfig(
            workers=args.workers,
            backend=args.decode_backend,
            decoder=args.decode,
            gpu_threads=args.gpu_threads,
            cpu_share=args.cpu_share,
        ),
        encode=EncodeConfig(
            batch_size=args.batch_size, captions=not args.no_captions, decoding=decoding
        ),
    )
    if args.warmup:
        warm(model, config)
    graphs_before = captured_graph_count()  # decoder-reuse check: constant, not one per batch
    summary = run_index(config, model, catalog, progress_printer())
    graphs_in_run = captured_graph_count() - graphs_before
    decode = dataclasses.replace(
        config.decode,
        decoder=summary.decoder,
        image_size=model.preprocess.image_size,
        prefetch=2 * config.encode.batch_size,
    )
    paths = [photos / f.relative_path for f in walk_images(photos)]
    on = next(model.parameters()).device  # "cuda:0", as the run had it: one nvJPEG decoder
    decode_only = decode_throughput(paths[: args.decode_only_count], decode, model, on)
    agreement = pixel_agreement(paths[:64], decode, model, on) if summary.decoder == "gpu" else None
    return {
        "benchmark": "index_throughput",
        "model": args.model,
        "weights": args.weights,
        "device": _device_name(device),
        "cpu": _cpu_name(),
        "torch": torch.__version__,
        "count": args.count,
        "size": f"{width}x{height}",
        "batch_size": args.batch_size,
        "workers": args.workers,
        "decode_backend": "processes" if config.decode.uses_processes() else "threads",
        "decoder": summary.decoder,
        "gpu_threads": config.decode.gpu_threads,
        "cpu_share": config.decode.cpu_share,
        "torch_threads": torch.get_num_threads(),
        "captions": not args.no_captions,
        "caption_tokens": args.caption_tokens,
        "images_per_second": summary.images_per_second,
        "seconds": summary.seconds,
        "indexed": summary.indexed,
        "errors": summary.errors,
        "times": summary.to_dict()["times"],
        "split": time_split(summary),
        "model_images_per_second": round(summary.indexed / max(summary.times.model, 1e-9), 1),
        "decode_only_images_per_second": decode_only,
        "gpu_vs_pillow_pixels": agreement,
        "cuda_graphs_captured_in_run": graphs_in_run,
        "write_files_seconds": round(write_seconds, 2),
    }


def progress_printer(every_s: float = 5.0):  # noqa: ANN201 - indexer.pipeline.ProgressCallback
    """Progress on stderr every few seconds, so a run cut short by `timeout` still says how far
    it got and how fast."""
    last = [time.perf_counter()]

    def report(progress: IndexProgress) -> None:
        now = time.perf_counter()
        if now - last[0] >= every_s or progress.done == progress.total:
            last[0] = now
            print(
                f"progress {progress.done}/{progress.total} images, "
                f"{progress.images_per_second:.1f} images/s, {progress.errors} errors",
                file=sys.stderr,
                flush=True,
            )

    return report


def time_split(summary: IndexSummary) -> dict[str, float]:
    """Shares of the run's wall time. The indexing thread's parts add up to 1 with `other`;
    the model and commit threads run beside it (`model_thread_busy`, `commit_thread_busy`)."""
    t, wall = summary.times, max(summary.seconds, 1e-9)
    parts = {
        "setup": t.open_index + t.scan,
        "decode_wait": t.decode_wait,
        "model_wait": t.model_wait,
        "save": t.save,
    }
    parts["other"] = wall - sum(parts.values())  # batching, progress, the final waits
    split = {name: round(value / wall, 3) for name, value in parts.items()}
    split["model_thread_busy"] = round(t.model / wall, 3)
    split["gpu_busy"] = round(t.model_device / wall, 3)  # device span / wall (CUDA events)
    split["commit_thread_busy"] = round(t.commit / wall, 3)
    split["commit_wait"] = round(t.commit_wait / wall, 3)  # the model thread waiting on commits
    return split


def decode_throughput(
    paths: list[Path], decode: DecodeConfig, model: torch.nn.Module, device: torch.device
) -> float | None:
    """Images/s of the run's decode stage alone over `paths` (None when there are none)."""
    if not paths:
        return None
    start = time.perf_counter()
    results = decode_for_model(paths, decode, model.preprocess, device)
    decoded = sum(result.image is not None for result in results)
    return round(decoded / (time.perf_counter() - start), 1)


def pixel_agreement(
    paths: list[Path], decode: DecodeConfig, model: torch.nn.Module, device: torch.device
) -> dict[str, float]:
    """How far the GPU decoder's model inputs are from the Pillow path's, on the same files."""
    preprocess = model.preprocess
    pillow = decode_all(
        paths, dataclasses.replace(decode, decoder="cpu"), preprocess.resize_for_model
    )
    by_pillow = {r.path: r.image.pixels for r in pillow if r.image is not None}
    by_gpu = {r.path: r.image.pixels for r in decode_for_model(paths, decode, preprocess, device)}
    common = [path for path in paths if path in by_pillow and by_gpu.get(path) is not None]
    if not common:
        return {"files": 0}
    expected = torch.stack([by_pillow[path] for path in common])  # uint8 (N, 3, S, S)
    got = torch.stack([by_gpu[path].cpu() for path in common])  # decoded on the GPU
    inputs = (preprocess.batch(expected), preprocess.batch(got))  # normalised, about unit variance
    difference = (inputs[0] - inputs[1]).abs()
    cosine = torch.nn.functional.cosine_similarity(inputs[0].flatten(1), inputs[1].flatten(1))
    return {
        "files": len(common),
        "uint8_mean_abs": round((expected.float() - got.float()).abs().mean().item(), 3),
        "input_mean_abs": round(difference.mean().item(), 4),
        "input_q99_abs": round(torch.quantile(difference.flatten()[::7], 0.99).item(), 4),
        "cosine_min": round(cosine.min().item(), 5),
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
    if first.indexed:
        raise RuntimeError(f"the filled catalog left {first.indexed} files to index")
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
    """Catalog every file as if indexed (random unit vectors and a caption each): what a
    finished run leaves, so the timed run has nothing to (re)do."""
    rng = np.random.default_rng(0)
    caption = storage.NewCaption("a photo", dataclasses.asdict(default_decoding()))
    root = photos.resolve().as_posix()
    files = list(walk_images(photos))
    for start in range(0, len(files), 5000):
        chunk = files[start : start + 5000]
        vectors = rng.standard_normal((len(chunk), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = [
            storage.IndexedFile(
                storage.ImageMeta(root, f.relative_path, f.size, f.mtime_ns, None),
                vector,
                caption,
            )
            for f, vector in zip(chunk, vectors, strict=True)
        ]
        catalog.store_indexed(model_id, rows)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores"


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
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="decoders")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as index)")
    parser.add_argument("--caption-tokens", type=int, default=20)
    parser.add_argument("--no-captions", action="store_true")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--weights", choices=sorted(WEIGHTS), default="fp32")
    parser.add_argument("--decode-backend", choices=BACKENDS, default="auto")
    parser.add_argument("--decode", choices=DECODERS, default="auto", help="JPEG decoder")
    parser.add_argument("--gpu-threads", type=int, default=DecodeConfig.gpu_threads)
    parser.add_argument(
        "--cpu-share", type=float, default=DecodeConfig.cpu_share, help="Pillow's JPEGs (gpu path)"
    )
    parser.add_argument("--grain", type=float, default=6.0, help="photo grain (std, 0..255)")
    parser.add_argument("--photos", type=Path, default=None, help="library folder, kept")
    parser.add_argument("--decode-only-count", type=int, default=0, help="also time decode alone")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
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
    print(json.dumps(result), flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
