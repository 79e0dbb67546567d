"""CPU speed of a model bundle: load time, one-caption latency, and captioned images per second.

    python benchmarks/bench_default_cpu.py                       # the embedded default model
    python benchmarks/bench_default_cpu.py --model runs/bundle --threads 2 --json
    python benchmarks/bench_default_cpu.py --random-default      # untrained default-size weights

Images are procedural scenes rendered at the sample library's 640x480. "index" mimics the indexer:
PIL resize_for_model per image, then one vision pass and greedy captions per batch. Untrained
weights stop at random lengths, so `--caption-tokens N` forces N-token captions (the default
model's captions run 10-16 tokens) to time a realistic decode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import coca  # noqa: E402
from coca.generate import DecodingConfig, caption_texts  # noqa: E402
from coca.world import HELDOUT_SEED, render_scene, scenes  # noqa: E402


def random_default_bundle(folder: Path) -> Path:
    """An untrained model of the default recipe, saved as an fp16 bundle."""
    from coca.recipe import build_model

    return coca.save_bundle(build_model("coca_default_small").eval(), folder, torch.float16)


def time_load(source: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        coca.load(source)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decoding(tokens: int | None) -> DecodingConfig:
    if tokens is None:
        return DecodingConfig(generation_type="greedy")
    # <start_of_text> + tokens words + <end_of_text>; min length forbids an earlier end.
    return DecodingConfig(generation_type="greedy", seq_len=tokens + 2, min_seq_len=tokens + 1)


@torch.no_grad()
def caption_batch(model: Any, images: list[Any], config: DecodingConfig) -> list[str]:
    """The indexer's path: PIL resize per image, one vision pass, greedy decode."""
    pre = model.preprocess
    pixels = [pre.to_uint8_tensor(pre.resize_for_model(image)) for image in images]
    batch = pre.batch(torch.stack(pixels))  # (B, 3, S, S)
    encoding = model.encode_image_with_tokens(batch)
    return caption_texts(model, model.generate_from_tokens(encoding.tokens, config))


def time_one_caption(
    model: Any, image: Any, config: DecodingConfig, repeats: int
) -> tuple[float, float]:
    """(min, median) seconds; the minimum is the least disturbed by other work on the machine."""
    caption_batch(model, [image], config)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        caption_batch(model, [image], config)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def time_throughput(model: Any, images: list[Any], config: DecodingConfig, batch: int) -> dict:
    caption_batch(model, images[:batch], config)
    start = time.perf_counter()
    texts: list[str] = []
    for i in range(0, len(images), batch):
        texts.extend(caption_batch(model, images[i : i + batch], config))
    seconds = time.perf_counter() - start
    words = float(np.mean([len(t.split()) for t in texts]))
    return {"images_per_s": len(images) / seconds, "mean_caption_words": words, "sample": texts[0]}


@torch.no_grad()
def time_vision(model: Any, images: list[Any], batch: int) -> float:
    pre = model.preprocess
    pixels = torch.stack([pre.to_uint8_tensor(pre.resize_for_model(im)) for im in images])
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        model.encode_image(pre.batch(pixels[i : i + batch]))
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="default, a bundle folder, hub id")
    parser.add_argument("--random-default", action="store_true", help="untrained default recipe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--caption-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        source = str(random_default_bundle(Path(tmp))) if args.random_default else args.model
        bundle = Path(source) if Path(source).is_dir() else None
        size_mb = (bundle / "model.safetensors").stat().st_size / 1e6 if bundle else None
        load_s = time_load(source)
        model = coca.load(source)
    params = sum(p.numel() for p in model.parameters())
    photos = [render_scene(s, 640, 480) for s in scenes(HELDOUT_SEED, args.images)]
    config = decoding(args.caption_tokens)
    one_min, one_median = time_one_caption(model, photos[0], config, args.repeats)
    result = {
        "model": "random coca_default_small" if args.random_default else args.model,
        "threads": args.threads,
        "parameters_m": round(params / 1e6, 2),
        "weights_mb": size_mb and round(size_mb, 1),
        "load_s": round(load_s, 3),
        "one_caption_ms": round(1000 * one_median, 1),
        "one_caption_min_ms": round(1000 * one_min, 1),
        "vision_images_per_s": round(time_vision(model, photos, args.batch), 1),
        **time_throughput(model, photos, config, args.batch),
        "batch": args.batch,
    }
    result["images_per_s"] = round(result["images_per_s"], 1)
    # Other work on the machine distorts every figure above: record how busy it was.
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
