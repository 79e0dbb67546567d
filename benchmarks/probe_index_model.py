"""Where the GPU time of one indexer batch goes: vision pass vs captions, and the top kernels.

    python benchmarks/probe_index_model.py --out $OUT          # device tool, one H100
    python benchmarks/probe_index_model.py --device cpu --model preset:coca_tiny --batch 8  # smoke

Builds the random-weight preset as `bench_index.py` does, runs `indexer.encode.BatchEncoder` on a
batch of random uint8 photos already on the device (the indexer's model thread, without the
decode and commit stages), times the vision pass and the captions apart with CUDA events, then
profiles one batch with torch.profiler and writes the kernel table. One run per weight setting
(fp32 under bf16 autocast, as `coca-search index` runs; bf16 weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_index import WEIGHTS, build_model  # noqa: E402

from coca.generate import DecodingConfig  # noqa: E402
from indexer.encode import BatchEncoder, EncodeConfig  # noqa: E402


def split_times(encoder: BatchEncoder, pixels: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms of the vision pass and of the captions for one batch (CUDA events)."""
    model, vision, captions = encoder.model, [], []
    for _ in range(repeats):
        with torch.inference_mode(), encoder._autocast():
            start, middle, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            start.record()
            batch = model.preprocess.batch(pixels).to(encoder._input_dtype())
            encoding = model.encode_image_with_tokens(batch)
            middle.record()
            encoder.caption_engine.generate(encoding.tokens)
            end.record()
        end.synchronize()
        vision.append(start.elapsed_time(middle))
        captions.append(middle.elapsed_time(end))
    return {"vision_ms": statistics.median(vision), "captions_ms": statistics.median(captions)}


def kernel_table(encoder: BatchEncoder, images: list[torch.Tensor], rows: int) -> list[dict]:
    """The `rows` costliest kernels of one encode() call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        encoder.encode(images)
        torch.cuda.synchronize()
    table = []
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", 0.0) or getattr(event, "cuda_time_total", 0)
        if device_us:
            table.append({"kernel": event.key[:120], "calls": event.count, "us": round(device_us)})
    table.sort(key=lambda row: -row["us"])
    total = sum(row["us"] for row in table)
    calls = sum(row["calls"] for row in table)
    return [{"kernel": "(all)", "calls": calls, "us": total}] + table[:rows]


def attention_variants(
    rows: int, heads: int, keys: int, dim: int, queries: int = 1
) -> dict[str, float]:
    """Microseconds per call of one-token cross-attention, q (B, H, T, Dh) over the image tokens'
    k, v (B, H, N, Dh) in bf16, by implementation (CUDA events, 50 calls after 5 warm-ups).
    T > 1 stands for beams folded into the query axis."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from coca.layers import attend_few

    make = torch.randn
    q = make(rows, heads, queries, dim, device="cuda", dtype=torch.bfloat16)
    k, v = (make(rows, heads, keys, dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    variants = {
        "attend_few (bmm, softmax, bmm)": lambda: attend_few(q, k, v, None),
        "sdpa (default)": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
    }
    for backend in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
    ):

        def run(backend: SDPBackend = backend) -> torch.Tensor:
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        variants[f"sdpa {backend.name}"] = run
    timings = {}
    for name, call in variants.items():
        try:
            for _ in range(5):
                call()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(50):
                call()
            end.record()
            end.synchronize()
            timings[name] = round(1000 * start.elapsed_time(end) / 50, 1)
        except RuntimeError as error:
            timings[name] = str(error).splitlines()[0][:80]
    bytes_read = 2 * k.numel() * k.element_size()
    timings["floor at 3.35 TB/s (K and V read once)"] = round(1e6 * bytes_read / 3.35e12, 1)
    return timings


def sdpa_for_cross_attention() -> None:
    """Variant "-sdpa": one-token cross-attention (no bias) through SDPA's fused kernels instead
    of `attend_few`'s bmm/softmax/bmm; self-attention over the cache (with a bias) unchanged."""
    import coca.layers as layers

    bmm_path = layers.attend_few

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: object) -> torch.Tensor:
        if bias is None:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return bmm_path(q, k, v, bias)

    layers.attend_few = attend


def probe(args: argparse.Namespace, variant: str) -> dict[str, object]:
    import coca.layers as layers

    weights, _, kernel = variant.partition("-")
    original = layers.attend_few
    if kernel == "sdpa":
        sdpa_for_cross_attention()
    try:
        return _probe(args, weights, variant)
    finally:
        layers.attend_few = original


def _probe(args: argparse.Namespace, weights: str, variant: str) -> dict[str, object]:
    device = torch.device(args.device)
    model = build_model(args.model, device, WEIGHTS[weights])
    decoding = DecodingConfig(generation_type="greedy", seq_len=args.caption_tokens, min_seq_len=1)
    encoder = BatchEncoder(model, EncodeConfig(batch_size=args.batch, decoding=decoding))
    size = model.preprocess.image_size
    generator = torch.Generator(device=device).manual_seed(0)
    pixels = torch.randint(0, 256, (args.batch, 3, size, size), generator=generator, device=device)
    pixels = pixels.to(torch.uint8)
    images = list(pixels.unbind(0))
    for _ in range(3):  # CUDA start-up, graph capture, autotuning
        encoder.encode(images)
    walls = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        encoded = encoder.encode(images)
        walls.append(time.perf_counter() - start)
    result: dict[str, object] = {
        "model": args.model,
        "variant": variant,
        "batch": args.batch,
        "encode_wall_ms": round(1000 * statistics.median(walls), 2),
        "images_per_second": round(args.batch / statistics.median(walls), 1),
        "device_ms": round(1000 * encoded.device_seconds, 2),
        "captions": encoded.captions,
    }
    if device.type == "cuda":
        result.update({k: round(v, 2) for k, v in split_times(encoder, pixels, 5).items()})
        result["kernels"] = kernel_table(encoder, images, args.kernel_rows)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="preset:coca_ViT-B-32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--caption-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kernel-rows", type=int, default=25)
    parser.add_argument(
        "--variants",
        default="fp32,bf16,bf16-sdpa",
        help="comma-separated: fp32 (under bf16 autocast), bf16 (weights); '-sdpa' suffix: "
        "one-token cross-attention through SDPA",
    )
    parser.add_argument("--out", type=Path, default=None, help="write probe_index_model.json")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        for rows, queries in ((args.batch, 1), (64, 1), (64, 6)):
            timings = attention_variants(rows, 8, 255, 64, queries)
            print(json.dumps({"cross_attention_us": timings, "rows": rows, "queries": queries}))
    results = [probe(args, variant) for variant in args.variants.split(",")]
    by_variant = {result["variant"]: result.pop("captions") for result in results}
    for result in results:
        plain = by_variant.get(str(result["variant"]).split("-")[0])
        mine = by_variant[result["variant"]]
        if plain is not None and mine is not None and plain is not mine:
            same = sum(a == b for a, b in zip(plain, mine, strict=True))
            result["captions_same_as_bmm_path"] = f"{same}/{len(mine)}"
    for result in results:
        kernels = result.pop("kernels", [])
        print(json.dumps(result))
        for row in kernels:
            print(f"  {row['us']:>9,} us {row['calls']:>6} calls  {row['kernel']}")
        result["kernels"] = kernels
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe_index_model.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
