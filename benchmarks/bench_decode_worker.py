"""A decode worker's cost per photo on the Pillow path, and the pool's throughput.

    python benchmarks/bench_decode_worker.py --photos /tmp/lib   # written there when missing

One process: open + draft decode + `Preprocess.pixels_for_model` (the indexer's; the code before
it had `resize_for_model` only, which the script then times) of 16 photos, the best of 7
rounds of 10 (ms per photo). Then `indexer.decode.decode_all` in `--workers` processes over
`--count` photos (photos/s), as the indexer's Pillow path runs them (hashing included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import timeit
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_index  # noqa: E402

from coca.preprocess import Preprocess, PreprocessConfig  # noqa: E402
from indexer.decode import DecodeConfig, decode_all  # noqa: E402
from indexer.scan import walk_images  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, required=True, help="library folder, kept")
    parser.add_argument("--count", type=int, default=2048)
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the JPEG files")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    bench_index.library(args.photos, args.count, (width, height), grain=6.0)
    paths = sorted(args.photos / found.relative_path for found in walk_images(args.photos))
    torch.set_num_threads(1)  # as in a decode worker process
    preprocess = Preprocess(PreprocessConfig(image_size=224))
    prepare = getattr(preprocess, "pixels_for_model", preprocess.resize_for_model)

    def one_round() -> None:
        for path in paths[:16]:
            with Image.open(path) as image:
                prepare(image)

    best = min(timeit.repeat(one_round, number=10, repeat=7)) / 160
    config = DecodeConfig(workers=args.workers, backend="processes", hash_files=True, prefetch=256)
    start = time.perf_counter()
    decoded = sum(result.image is not None for result in decode_all(paths, config, prepare))
    rate = decoded / (time.perf_counter() - start)
    print(
        json.dumps(
            {
                "benchmark": "decode_worker",
                "one_process_ms_per_photo": round(1000 * best, 3),
                "workers": args.workers,
                "pool_photos_per_second": round(rate, 1),
                "photos": decoded,
            }
        )
    )


if __name__ == "__main__":
    main()
