"""Caption generation speed: ours (KV cache) vs open_clip 3.3.0's CoCa.generate, same weights.

For each model the reference runs in a separate Python process whose sys.path starts with
--ref-site (open_clip_torch 3.3.0, transformers 4.55.4, ...): it builds open_clip's model with
random weights (fixed seed), saves it as an open_clip folder, times its greedy (generation_type
"top_k", top_k=1) and beam search (the seed's defaults) and its vision tower. This process loads
that folder through coca.load and times the same work, checks that greedy tokens are identical
and measures the decoding step against the card's memory-bandwidth floor. Results:
<out>/bench_generate.json and <out>/bench_generate.md. See benchmarks/README.md.

  python benchmarks/bench_generate.py --ref-site /path/to/ref_site --out results/
  python benchmarks/bench_generate.py --tiny --out /tmp/bench   # CPU smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("bench_generate")
SEED = 0
# Peak HBM bandwidth, bytes/s, by a substring of torch.cuda.get_device_name().
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="coca_ViT-B-32,coca_ViT-L-14", help="comma-separated")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of ours")
    p.add_argument("--ref-repeats", type=int, default=2, help="timed runs of the reference")
    p.add_argument("--ref-site", type=Path, help="folder with open_clip 3.3.0 + transformers 4.55")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bandwidth", type=float, help="bytes/s; default: detected from the card")
    p.add_argument("--tiny", action="store_true", help="coca_tiny, batch 4: a CPU smoke test")
    p.add_argument(
        "--no-reference", action="store_true", help="skip open_clip (ours on our own random init)"
    )
    p.add_argument(
        "--kernel-table", type=int, default=0, help="write the N costliest kernels per step (GPU)"
    )
    p.add_argument(
        "--compile-step",
        action="store_true",
        help="also time ours with the torch.compile'd one-token step (fp32 and bf16 weights)",
    )
    p.add_argument("--no-autocast", action="store_true", help="skip ours under bf16 autocast")
    p.add_argument("--bf16-only", action="store_true", help="skip ours in fp32 (and autocast)")
    p.add_argument("--reference-job", type=Path, help=argparse.SUPPRESS)  # child process mode
    args = p.parse_args(argv)
    if args.tiny:
        args.models, args.batch, args.seq_len = "coca_tiny", min(args.batch, 4), 12
        args.repeats, args.ref_repeats = min(args.repeats, 2), 1
    return args


# --- timing helpers (both processes) --------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(
    fn: Callable[[], Any], repeats: int, device: str, warmup: Callable[[], Any] | None = None
):
    """(seconds per run, one per repeat; output of the last run). Warm up once first."""
    (warmup or fn)()
    sync(device)
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times, out


def rate(times: list[float], items: int) -> float:
    return items / sorted(times)[len(times) // 2]  # median run


def no_tf32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def mean_length(ids: torch.Tensor, eos: int) -> float:
    """Mean tokens per caption, <start_of_text> and <end_of_text> included, padding excluded."""
    lengths = [row.index(eos) + 1 if eos in row else len(row) for row in ids.tolist()]
    return sum(lengths) / len(lengths)


# --- the reference, in its own process ---------------------------------------------------------


def run_reference(job_path: Path) -> None:
    """Child process: build, save and time open_clip's CoCa; files go next to the job file."""
    job, work = json.loads(job_path.read_text()), job_path.parent
    if job["ref_site"]:
        sys.path.insert(0, job["ref_site"])
    import open_clip

    no_tf32()
    device, batch, reps = job["device"], job["batch"], job["repeats"]
    torch.manual_seed(SEED)
    if job["model_cfg"] is not None:  # --tiny: no named open_clip config
        model_cfg = job["model_cfg"]
        model = open_clip.CoCa(**{k: v for k, v in model_cfg.items() if k != "custom_text"})
    else:
        model_cfg = open_clip.get_model_config(job["model"])
        model = open_clip.create_model(job["model"], pretrained=None)
    with torch.no_grad():  # open_clip leaves this projection uninitialised (torch.empty)
        model.text_decoder.text_projection.normal_(std=model.text_decoder.width**-0.5)
    save_open_clip_folder(model, model_cfg, work / "open_clip_folder")
    model = model.to(device).eval()
    images = torch.load(work / "images.pt", weights_only=True).to(device)
    import transformers  # after saving: ours can still use the weights if this is missing

    result = {"open_clip": open_clip.__version__, "transformers": transformers.__version__}
    with torch.no_grad():
        result["vision_fp32"] = rate(
            timed(lambda: model.encode_image(images), reps, device)[0], batch
        )
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            times = timed(lambda: model.encode_image(images), reps, device)[0]
        result["vision_bf16"] = rate(times, batch)
    searches = {"greedy": dict(generation_type="top_k", top_k=1), "beam": {}}
    for kind, kwargs in searches.items():
        kwargs["seq_len"] = job["seq_len"]
        times, ids = timed(
            lambda kw=kwargs: model.generate(images, **kw),
            reps,
            device,
            warmup=lambda kw=kwargs: model.generate(images[:2], **kw),  # short: it is slow
        )
        result[kind] = rate(times, batch)
        result[f"{kind}_mean_length"] = mean_length(ids, job["eos"])
        torch.save(ids.cpu(), work / f"ref_{kind}.pt")
    (work / "ref_result.json").write_text(json.dumps(result, indent=2))


def save_open_clip_folder(model: torch.nn.Module, model_cfg: dict, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))


def reference_in_subprocess(args: argparse.Namespace, name: str, work: Path) -> dict[str, Any]:
    """Run the reference for one model; {'error': ...} when it fails (ours still runs)."""
    from coca.config import get_config

    job = {
        "model": name,
        "model_cfg": get_config(name).to_open_clip() if args.tiny else None,
        "eos": get_config(name).eot_token_id,
        "ref_site": str(args.ref_site.resolve()) if args.ref_site else "",
        "device": args.device,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "repeats": args.ref_repeats,
    }
    (work / "job.json").write_text(json.dumps(job))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(work)]
    cmd += ["--reference-job", str(work / "job.json")]
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=420)
    if proc.returncode != 0 or not (work / "ref_result.json").is_file():
        return {"error": (proc.stderr or proc.stdout)[-3000:]}
    return json.loads((work / "ref_result.json").read_text())


# --- ours --------------------------------------------------------------------------------


class CountingDecoder:
    """Counts decoder steps (the protocol's step/reorder pass straight through)."""

    def __init__(self, decoder: Any) -> None:
        self.decoder, self.steps = decoder, 0

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return self.decoder.step(tokens)

    def reorder(self, rows: torch.Tensor) -> None:
        self.decoder.reorder(rows)

    def follow_beams(self, rows: torch.Tensor) -> None:
        self.decoder.follow_beams(rows)  # as beam search drives the real decoder (no host sync)


def run_ours(args: argparse.Namespace, model: Any, images: torch.Tensor, prefix: str) -> dict:
    """Captions/s end to end and decoding alone, greedy and beam, and the vision tower alone;
    with per-step metrics. Errors are recorded, not raised."""
    from coca.generate import DecodingConfig, generate_from_tokens

    dev, batch, result = args.device, args.batch, {}
    configs = {
        "greedy": DecodingConfig(generation_type="greedy", seq_len=args.seq_len),
        "beam": DecodingConfig(seq_len=args.seq_len),
    }
    try:
        with torch.no_grad():
            times, enc = timed(lambda: model.encode_image_with_tokens(images), args.repeats, dev)
            result[f"{prefix}vision"] = rate(times, batch)
            for kind, config in configs.items():
                kw = dataclasses.asdict(config)
                times, ids = timed(lambda kw=kw: model.generate(images, **kw), args.repeats, dev)
                result[f"{prefix}{kind}"] = rate(times, batch)
                result[f"{prefix}{kind}_ids"] = ids.cpu()
                run = lambda c=config: generate_from_tokens(model, enc.tokens, c)  # noqa: E731
                result[f"{prefix}{kind}_decode"] = rate(timed(run, args.repeats, dev)[0], batch)
                result[f"{prefix}{kind}_step"] = step_metrics(args, model, enc.tokens, config)
    except Exception:
        result[f"{prefix}error"] = traceback.format_exc()
        logger.error("%s failed:\n%s", prefix, result[f"{prefix}error"])
    return result


def run_compiled(
    args: argparse.Namespace, model: Any, images: torch.Tensor, prefix: str, eager_ids: Any
) -> dict:
    """run_ours with the torch.compile'd one-token step; the first call's extra time (the
    compiles: greedy rows, then beam rows) is recorded, and greedy tokens are compared with the
    eager step's."""
    import torch._dynamo

    # One compile per model x dtype x search shape: past the default limit torch.compile would
    # silently fall back to eager for the later models.
    for name, value in (("recompile_limit", 64), ("accumulated_recompile_limit", 256)):
        try:
            setattr(torch._dynamo.config, name, value)
        except AttributeError:  # older spelling
            setattr(torch._dynamo.config, name.replace("recompile", "cache_size"), value)
    from coca.generate import DecodingConfig, generate_from_tokens

    model.decode_compiled = True
    try:
        with torch.no_grad():
            enc = model.encode_image_with_tokens(images)
            compile_s = {}
            for kind, cfg in {
                "greedy": DecodingConfig(generation_type="greedy", seq_len=args.seq_len),
                "beam": DecodingConfig(seq_len=args.seq_len),
            }.items():
                start = time.perf_counter()
                generate_from_tokens(model, enc.tokens, cfg)
                sync(args.device)
                compile_s[kind] = time.perf_counter() - start
        result = run_ours(args, model, images, prefix)
        result[f"{prefix}first_call_s"] = compile_s
        if eager_ids is not None and f"{prefix}greedy_ids" in result:
            same = (result[f"{prefix}greedy_ids"] == eager_ids).all(dim=1)
            result[f"{prefix}greedy_rows_identical_to_eager"] = int(same.sum())
        return result
    finally:
        model.decode_compiled = False


def step_metrics(args: argparse.Namespace, model: Any, tokens: torch.Tensor, config: Any) -> dict:
    """Time per decoder step (search work included), kernels per step and the card's floor."""
    from coca.generate import SpecialTokens, decode

    special = SpecialTokens.from_model(model)
    prompt = torch.full((tokens.shape[0], 1), special.sot, device=tokens.device)

    def run() -> CountingDecoder:
        counter = CountingDecoder(model.incremental_decoder(tokens, max_len=config.seq_len))
        decode(counter, prompt, config, special)
        return counter

    times, counter = timed(run, args.repeats, args.device)
    out: dict[str, Any] = {"steps": counter.steps, "ms": 1000 * min(times) / counter.steps}
    if args.device.startswith("cuda"):
        out.update(count_kernels(run, counter.steps, args.kernel_table))
    rows = tokens.shape[0] * (config.num_beams if config.is_beam_search else 1)
    out["bytes"] = bytes_per_step(model, config.seq_len, tokens.shape[0], rows)
    bandwidth = args.bandwidth or card_bandwidth(args.device)
    if bandwidth:
        out["floor_ms"] = {
            "weights": 1000 * out["bytes"]["weights"] / bandwidth,
            "weights_and_kv": 1000 * sum(out["bytes"].values()) / bandwidth,
        }
        out["x_floor"] = {k: out["ms"] / v for k, v in out["floor_ms"].items()}
    return out


def card_bandwidth(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((bw for key, bw in BANDWIDTH.items() if key in name), None)


def count_kernels(run: Callable[[], Any], steps: int, top: int = 0) -> dict:
    """Device kernels and host launch calls (kernels + CUDA graphs) per step, by torch.profiler;
    with `top`, also the `top` kernels (by name) with the most device time per step."""
    from torch.profiler import ProfilerActivity, profile

    launch_calls = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cudaGraphLaunch")
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        launches = sum(e.count for e in prof.key_averages() if e.key in launch_calls)
        graphs = sum(e.count for e in prof.key_averages() if e.key == "cudaGraphLaunch")
        kernels = sum(
            1
            for e in prof.events()
            if e.device_type.name == "CUDA" and "Memcpy" not in e.name and "Memset" not in e.name
        )
        out = {
            "kernels_per_step": kernels / steps,
            "launches_per_step": launches / steps,
            "graph_launches_per_step": graphs / steps,
        }
        if top:
            out["top_kernels"] = kernel_table(prof.events(), steps, top)
        return out
    except Exception as exc:  # the profiler is optional; never lose the timings for it
        return {"profiler_error": repr(exc)}


def kernel_table(events: Any, steps: int, top: int) -> list[dict[str, Any]]:
    """Device time and count per step of each kernel name, the costliest `top` first."""
    by_name: dict[str, list[float]] = {}
    for e in events:
        if e.device_type.name != "CUDA":
            continue
        entry = by_name.setdefault(e.name[:120], [0.0, 0])
        entry[0] += e.time_range.elapsed_us()
        entry[1] += 1
    rows = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    total = sum(us for us, _ in by_name.values())
    table = [{"kernel": "(all)", "us_per_step": total / steps, "per_step": 0.0}]
    table += [
        {"kernel": k, "us_per_step": us / steps, "per_step": n / steps} for k, (us, n) in rows
    ]
    return table


def bytes_per_step(model: Any, seq_len: int, images: int, rows: int) -> dict[str, float]:
    """Bytes one decoding step must read: the weights used per token, and the KV caches (the
    self-attention caches at the mean prefix length; cross-attention K/V once per image)."""
    weights = 0
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size()
        if name.startswith("visual.") or ".ln_1_kv." in name:
            continue  # vision tower and image-side layer norms: once per image, not per step
        if name.startswith("text.") and not name.startswith("text.transformer."):
            continue  # embeddings are gathered by row; cls, ln_final, projection: latent only
        if ".cross_attn." in name and ".attn.in_proj_" in name:
            size //= 3  # only the query projection; image keys/values are computed once
        weights += size
    c, elt = model.config, model.dtype.itemsize
    width = c.decoder.width
    cross = images * c.decoder.layers * 2 * (c.vision.n_queries - 1) * width * elt
    mean_prefix = (1 + seq_len) / 2
    self_kv = rows * (c.text.layers + c.decoder.layers) * 2 * mean_prefix * width * elt
    return {"weights": weights, "cross_kv": cross, "self_kv": self_kv}


# --- one model, the report, main ------------------------------------------------------------


def load_ours(args: argparse.Namespace, name: str, folder: Path, dtype: torch.dtype) -> Any:
    """The reference's weights through coca.load, or our own random init if it never saved them."""
    import coca
    from coca.config import get_config
    from coca.model import CoCa

    if (folder / "open_clip_config.json").is_file():
        return coca.load(folder, device=args.device, dtype=dtype)
    torch.manual_seed(SEED)
    return CoCa(get_config(name)).eval().to(device=args.device, dtype=dtype)


def compare_tokens(ours: torch.Tensor, ref: torch.Tensor, pad: int) -> dict[str, Any]:
    width = max(ours.shape[1], ref.shape[1])
    a = torch.nn.functional.pad(ours, (0, width - ours.shape[1]), value=pad)
    b = torch.nn.functional.pad(ref, (0, width - ref.shape[1]), value=pad)
    same = (a == b).all(dim=1)
    return {"identical": bool(same.all()), "rows_identical": int(same.sum()), "rows": len(same)}


def parity(args: argparse.Namespace, model: Any, images: torch.Tensor, res: dict, work: Path):
    """Greedy and beam tokens of ours vs the reference's (beam with both scorings)."""
    from coca.beam_search import beam_search
    from coca.generate import DecodingConfig, SpecialTokens

    special, out = SpecialTokens.from_model(model), {}
    for kind in ("greedy", "beam"):
        if f"fp32_{kind}_ids" in res:
            out[f"{kind}_mean_length"] = mean_length(res[f"fp32_{kind}_ids"], special.eos)
    if (work / "ref_greedy.pt").is_file() and "fp32_greedy_ids" in res:
        ref = torch.load(work / "ref_greedy.pt", weights_only=True)
        out["greedy_parity"] = compare_tokens(res["fp32_greedy_ids"], ref, special.pad)
    if (work / "ref_beam.pt").is_file() and "fp32_beam_ids" in res:
        ref = torch.load(work / "ref_beam.pt", weights_only=True)
        out["beam_parity_logprob_scoring"] = compare_tokens(res["fp32_beam_ids"], ref, special.pad)
        with torch.no_grad():
            tokens = model.encode_image_with_tokens(images).tokens
            prompt = torch.full((args.batch, 1), special.sot, device=images.device)
            decoder = model.incremental_decoder(tokens, max_len=args.seq_len)
            config = DecodingConfig(seq_len=args.seq_len)
            seed = beam_search(decoder, prompt, config, special, raw_logit_scores=True).tokens
        out["beam_parity_seed_scoring"] = compare_tokens(seed.cpu(), ref, special.pad)
    return out


def bench_model(
    args: argparse.Namespace, name: str, work: Path, save: Callable[[dict], None] = lambda r: None
) -> dict[str, Any]:
    """Reference, then ours in each variant; `save(partial results)` after every stage, so a
    run stopped by a time limit keeps what it measured."""
    from coca.config import get_config

    size = get_config(name).vision.image_size
    g = torch.Generator().manual_seed(SEED)
    images = torch.randn(args.batch, 3, size, size, generator=g)  # fp32, the same for both
    torch.save(images, work / "images.pt")
    logger.info("%s: reference", name)
    if args.no_reference:
        ref: dict[str, Any] = {"error": "skipped (--no-reference)"}
    else:
        ref = reference_in_subprocess(args, name, work)
    images = images.to(args.device)
    res: dict[str, Any] = {"reference": ref, "shared_weights": "error" not in ref}
    save(res)
    if not args.bf16_only:
        bench_fp32(args, name, work, images, res, save)
    logger.info("%s: ours bf16 weights", name)
    model = load_ours(args, name, work / "open_clip_folder", torch.bfloat16)
    res.update(run_ours(args, model, images.to(torch.bfloat16), "bf16_"))
    save(res)
    if args.compile_step:
        bf16_ids = res.get("bf16_greedy_ids")
        res.update(run_compiled(args, model, images.to(torch.bfloat16), "bf16c_", bf16_ids))
        save(res)
    return {k: v for k, v in res.items() if not k.endswith("_ids")}


def bench_fp32(
    args: argparse.Namespace,
    name: str,
    work: Path,
    images: torch.Tensor,
    res: dict[str, Any],
    save: Callable[[dict], None],
) -> None:
    """Ours with fp32 weights: plain, under bf16 autocast, compiled; token parity checks."""
    logger.info("%s: ours fp32", name)
    model = load_ours(args, name, work / "open_clip_folder", torch.float32)
    res.update(run_ours(args, model, images, "fp32_"))
    save(res)
    if not args.no_autocast:
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16):
            res.update(run_ours(args, model, images, "autocast_"))
            save(res)
    res.update(parity(args, model, images, res, work))
    save(res)
    if args.compile_step:
        res.update(run_compiled(args, model, images, "fp32c_", res.get("fp32_greedy_ids")))
        save(res)


# Columns of ours: result-key prefix -> label.
VARIANTS = {
    "fp32_": "ours fp32",
    "autocast_": "ours bf16 autocast",
    "bf16_": "ours bf16 weights",
    "fp32c_": "ours fp32, compiled step",
    "bf16c_": "ours bf16 weights, compiled step",
}


def ref_decode_rate(ref: dict, batch: int, kind: str) -> float | None:
    """Reference decoding alone = end to end minus its vision passes (beam: one per beam)."""
    if "error" in ref:
        return None
    vision_images = batch * (6 if kind == "beam" else 1)
    seconds = batch / ref[kind] - vision_images / ref["vision_fp32"]
    return batch / seconds if seconds > 0 else None


def fmt(x: float | None, ref: float | None = None) -> str:
    if x is None:
        return "—"
    return f"{x:,.1f} ({x / ref:,.1f}×)" if ref else f"{x:,.1f}"


def markdown(args: argparse.Namespace, results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"# Generation benchmark — {meta['date']}, {meta['card']}",
        "",
        f"batch {args.batch}, seq_len {args.seq_len}, TF32 off, random weights (seed {SEED}), "
        f"fp32 random images; torch {meta['torch']}. Captions/s (vision: images/s), median "
        "of the timed runs; (×) = over the reference (vision bf16: over its bf16 autocast).",
        "",
    ]
    columns = [p for p in VARIANTS if any(f"{p}greedy" in r for r in results.values())]
    lines += [
        "| model | measure | reference | " + " | ".join(VARIANTS[p] for p in columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for name, r in results.items():
        ref = r["reference"]
        for label, key in [
            ("greedy, end to end", "greedy"),
            ("beam, end to end", "beam"),
            ("greedy, decoding alone", "greedy_decode"),
            ("beam, decoding alone", "beam_decode"),
            ("vision tower", "vision"),
        ]:
            if key.endswith("_decode"):
                refs = [ref_decode_rate(ref, args.batch, key.split("_")[0])] * len(columns)
            elif key == "vision":
                refs = [
                    ref.get("vision_fp32" if p.startswith("fp32") else "vision_bf16")
                    for p in columns
                ]
            else:
                refs = [ref.get(key)] * len(columns)
            ours = [r.get(f"{p}{key}") for p in columns]
            cells = " | ".join(fmt(o, rv) for o, rv in zip(ours, refs, strict=True))
            ref_cell = (
                fmt(ref.get("vision_fp32")) + f" / {fmt(ref.get('vision_bf16'))} bf16"
                if key == "vision"
                else fmt(refs[0])
            )
            lines.append(f"| {name} | {label} | {ref_cell} | {cells} |")
    lines += ["", "Decoding step (search work included; floor = bytes read / bandwidth):", ""]
    lines += [
        "| model | search | weights | ms/step | kernels/step | launches/step | floor: weights "
        "| floor: +KV | × floor (weights / +KV) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for name, r in results.items():
        for kind in ("greedy", "beam"):
            for prefix in VARIANTS:
                s = r.get(f"{prefix}{kind}_step")
                if not s:
                    continue
                f = s.get("floor_ms", {"weights": nan, "weights_and_kv": nan})
                x = s.get("x_floor", {"weights": nan, "weights_and_kv": nan})
                lines.append(
                    f"| {name} | {kind} | {prefix[:-1]} | {s['ms']:.2f} | "
                    f"{s.get('kernels_per_step', nan):.0f} | "
                    f"{s.get('launches_per_step', nan):.0f} | "
                    f"{f['weights']:.3f} ms | {f['weights_and_kv']:.3f} ms | "
                    f"{x['weights']:.1f} / {x['weights_and_kv']:.1f} |"
                )
    for name, r in results.items():
        for key, s in r.items():
            if not key.endswith("_step") or "top_kernels" not in s:
                continue
            lines += ["", f"Costliest kernels, {name} {key[:-5]} (µs and launches per step):", ""]
            lines += ["| µs/step | per step | kernel |", "|---|---|---|"]
            lines += [
                f"| {k['us_per_step']:.1f} | {k['per_step']:.0f} | `{k['kernel'][:90]}` |"
                for k in s["top_kernels"]
            ]
    lines += ["", "Checks:", ""]
    for name, r in results.items():
        for prefix in ("fp32c_", "bf16c_"):
            if f"{prefix}first_call_s" in r:
                lines.append(
                    f"- {name}: {VARIANTS[prefix]}: first call (compiles) "
                    + ", ".join(f"{k} {v:.1f} s" for k, v in r[f"{prefix}first_call_s"].items())
                    + "; greedy rows identical to the eager step: "
                    + f"{r.get(f'{prefix}greedy_rows_identical_to_eager')}/{args.batch}"
                )
    for name, r in results.items():
        errors = {k: v for k, v in r.items() if k.endswith("error")}
        errors.update({"reference": r["reference"]["error"]} if "error" in r["reference"] else {})
        for where, text in errors.items():
            lines.append(f"- {name}: {where} failed: `{text.strip().splitlines()[-1]}`")
        checks = ("greedy_parity", "beam_parity_seed_scoring", "beam_parity_logprob_scoring")
        lines.append(f"- {name}: " + "; ".join(f"{k} {r.get(k)}" for k in checks))
        lengths = ("greedy_mean_length", "beam_mean_length")
        lines.append(
            f"- {name}: mean caption length (tokens, sot/eot included): "
            + ", ".join(f"{k} {r.get(k)}" for k in lengths)
            + f", reference greedy {r['reference'].get('greedy_mean_length')}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reference_job:
        run_reference(args.reference_job)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
    no_tf32()
    args.out.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    meta = {"date": time.strftime("%Y-%m-%d"), "card": card, "torch": torch.__version__}
    results: dict[str, Any] = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
            try:

                def save(partial: dict, name: str = name) -> None:
                    results[name] = {k: v for k, v in partial.items() if not k.endswith("_ids")}
                    write_results(args, meta, results)

                results[name] = bench_model(args, name, Path(tmp), save)
            except Exception:
                results[name] = {"error": traceback.format_exc()}
                logger.error("%s failed:\n%s", name, results[name]["error"])
        write_results(args, meta, results)
    print((args.out / "bench_generate.md").read_text(), flush=True)
    failed = [k for k, v in results.items() if any(key.endswith("error") for key in v)]
    return 1 if failed else 0


def write_results(args: argparse.Namespace, meta: dict[str, Any], results: dict[str, Any]) -> None:
    ok = {k: v for k, v in results.items() if "error" not in v}
    summary = {"meta": meta, "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "bench_generate.json").write_text(
        json.dumps({**summary, "results": results}, indent=2)
    )
    try:
        report = (
            markdown(args, ok, meta) if ok else "# Generation benchmark\n\nevery model failed\n"
        )
    except Exception:  # a partial result the table cannot show yet: the JSON has it
        logger.warning("no markdown for partial results:\n%s", traceback.format_exc())
        return
    (args.out / "bench_generate.md").write_text(report)


if __name__ == "__main__":
    sys.exit(main())
