"""Host CPU the indexing process spends per photo on the GPU path, with the GPU work stubbed out.

    python benchmarks/bench_index_host.py --count 4096            # this 2-core CPU, ~20 s

On an H100 host the GPU path (nvJPEG + model) is bounded by the indexing process itself: its
threads (gathering, the nvJPEG decode threads, the model and commit threads) share one
interpreter with the pool's result reader. This benchmark runs the real `run_index` on the GPU
path's code (worker processes read headers and hash, `indexer.gpu_decode.ChunkDecoder` hands
JPEGs to the decoder, batches are gathered and committed to a real catalog and FAISS index) but
replaces the three device calls with stand-ins that cost nothing on the host: nvJPEG
(`decode_jpegs`), the resize (`to_model_pixels`) and the model (`BatchEncoder.encode_ids`: random
unit vectors and caption ids, which the commit thread turns into text with the real tokenizer).
What is left is the host work per photo, reported as the indexing process's CPU seconds (user +
system, all its threads; the worker processes excluded) per indexed photo. Lower is better; the
GPU path cannot index faster than one photo per that many microseconds of one core, less where
threads overlap.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_index  # noqa: E402

import coca  # noqa: E402
import storage  # noqa: E402
from coca.generate import DecodingConfig  # noqa: E402
from indexer import encode, gpu_decode, pipeline  # noqa: E402
from indexer.decode import DecodeConfig  # noqa: E402
from indexer.encode import EncodeConfig, EncodedBatch  # noqa: E402
from indexer.pipeline import IndexConfig, register_model, run_index  # noqa: E402


def stub_device_work(model: torch.nn.Module, photo_shape: tuple[int, int]) -> None:
    """Replace nvJPEG, the resize and the model with host-free stand-ins (see the docstring)."""
    size = model.preprocess.image_size
    decoded = torch.zeros(3, *photo_shape, dtype=torch.uint8)  # one shared "decoded photo"
    squares = torch.zeros(4096, size, size, 3, dtype=torch.uint8)  # views, never allocated again
    with torch.inference_mode():
        embed_dim = model.encode_image(torch.zeros(1, 3, size, size)).shape[-1]
    rng = np.random.default_rng(0)

    def decode_jpegs(files: list, device: torch.device) -> list[torch.Tensor]:
        return [decoded for _ in files]

    def to_model_pixels(images: list, preprocess: object) -> torch.Tensor:
        return squares[: len(images)]

    def encode_batch(self: encode.BatchEncoder, images: list[torch.Tensor]) -> EncodedBatch:
        vectors = rng.standard_normal((len(images), embed_dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = torch.randint(300, 5000, (len(images), 20))  # 20-token captions, as on the GPU
        return EncodedBatch(vectors, None, 0.0, 0.0, ids)  # texts: BatchEncoder.with_texts

    gpu_decode.decode_jpegs = decode_jpegs
    gpu_decode.to_model_pixels = to_model_pixels
    encode.BatchEncoder.encode_ids = encode_batch
    # The GPU decoder even though the model is on the CPU: the code path is the same.
    pipeline.resolve_decoder = lambda choice, device, workers=1: "gpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=4096)
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the JPEG files")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=1, help="decode worker processes")
    parser.add_argument("--photos", type=Path, default=None, help="library folder, kept")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    model = coca.load("default")
    stub_device_work(model, (height, width))
    with tempfile.TemporaryDirectory(prefix="coca-host-") as work:
        photos = args.photos or Path(work) / "photos"
        bench_index.library(photos, args.count, (width, height), grain=6.0)
        catalog = storage.open_catalog(Path(work) / "catalog.db")
        model_id = register_model(catalog, model)
        decoding = DecodingConfig(generation_type="greedy", seq_len=20, min_seq_len=1)
        config = IndexConfig(
            photos_dir=photos,
            index_path=Path(work) / f"model-{model_id}.faiss",
            decode=DecodeConfig(workers=args.workers, backend="processes", decoder="gpu"),
            encode=EncodeConfig(batch_size=args.batch_size, decoding=decoding),
        )
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        summary = run_index(config, model, catalog)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    photos_done = max(summary.indexed, 1)
    print(
        json.dumps(
            {
                "benchmark": "index_host_cpu",
                "count": summary.indexed,
                "workers": args.workers,
                "host_cpu_us_per_photo": round(1e6 * (user + system) / photos_done, 1),
                "user_us_per_photo": round(1e6 * user / photos_done, 1),
                "system_us_per_photo": round(1e6 * system / photos_done, 1),
                "wall_s": round(wall, 2),
                "times": summary.to_dict()["times"],
            }
        )
    )


if __name__ == "__main__":
    main()
