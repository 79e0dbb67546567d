"""Model-side subcommands: `caption`, `train` and `eval`.

Flags are parsed here and turned into the frozen configs of `coca.train` / `coca.evaluate`; the
work happens in the `coca` package. Expected failures (a missing image, a bad checkpoint, unusable
training data) print one line to stderr and exit non-zero, without a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    import torch

    from coca.generate import DecodingConfig
    from indexer.decode import DecodeResult

logger = logging.getLogger(__name__)

DECODINGS = ("greedy", "beam_search")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise _fail("--device cuda was asked for but no CUDA GPU is available; use --device cpu", 2)
    if name != "cpu" and not name.startswith("cuda"):
        raise _fail(f"unknown --device {name!r}: use auto, cpu or cuda", 2)
    return name


def _load_model(source: str, device: str) -> Any:
    """coca.load with its failures turned into one-line errors (exit code 2)."""
    import coca

    try:
        return coca.load(source, device=device)
    except coca.CheckpointError as exc:
        raise _fail(f"cannot load model {source!r}: {exc}", 2) from exc
    except (OSError, ValueError, RuntimeError) as exc:
        raise _fail(f"cannot load model {source!r}: {exc}", 2) from exc


def _decoding(name: str) -> DecodingConfig:
    from coca.generate import DecodingConfig

    if name not in DECODINGS:
        raise _fail(f"unknown --decoding {name!r}: use {' or '.join(DECODINGS)}", 2)
    return DecodingConfig(generation_type=name)


def _failure(result: DecodeResult) -> str:
    """Why a file got no caption, from the decoder's own record (`decode_or_error`, as `index`
    records it)."""
    if not result.path.exists():
        return "no such file"
    return f"not a readable image ({result.error})"


def _decode_stream(
    paths: list[Path], net: Any, batch_size: int
) -> Generator[DecodeResult, None, None]:
    """The files' model inputs in input order, decoded at most one batch ahead of the model, so
    memory follows --batch-size rather than the number of files."""
    import torch

    from indexer.decode import DecodeConfig, decode_or_error, map_files
    from indexer.encode import default_decode_workers

    config = DecodeConfig(
        image_size=net.preprocess.image_size,
        # No more workers than a batch: each holds one photo at full size while it decodes.
        workers=min(batch_size, default_decode_workers(torch.device(net.device))),
        prefetch=batch_size,
        backend="threads",  # a caption run is short: forking decode processes would not pay
    )
    return map_files(paths, config, net.preprocess.pixels_for_model, decode_or_error)


def _caption_pixels(net: Any, pixels: list[torch.Tensor], decoding: DecodingConfig) -> list[str]:
    """Captions for decoded uint8 (3, S, S) model inputs; they are already model-sized, so only
    normalisation is left of the model's preprocessing."""
    import torch

    from coca.generate import caption_texts

    with torch.no_grad():
        batch = net.preprocess.batch(pixels)  # (B, 3, S, S) normalised
        ids = net.generate(batch.to(net.device, net.dtype), **dataclasses.asdict(decoding))
    return caption_texts(net, ids)  # ids (B, T)


def _print_captions(
    net: Any, batch: list[DecodeResult], decoding: DecodingConfig, as_json: bool
) -> None:
    pixels = [result.image.pixels for result in batch if result.image is not None]
    texts = _caption_pixels(net, pixels, decoding)
    for result, text in zip(batch, texts, strict=True):
        if as_json:
            typer.echo(json.dumps({"file": str(result.path), "caption": text}))
        else:
            typer.echo(f"{result.path}\t{text}")


def caption_command(
    images: list[Path] = typer.Argument(..., help="Image files to caption."),
    model: str = typer.Option("default", "--model", help="Model: default, a folder or a hub id."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    decoding: str = typer.Option("beam_search", "--decoding", help="greedy or beam_search."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per model call."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of text."),
) -> None:
    """Caption images with a CoCa model; a file that cannot be read is reported, exit code 1."""
    config = _decoding(decoding)
    net = _load_model(model, _device(device))
    failed, batch = 0, []
    results = _decode_stream(images, net, batch_size)
    try:
        for result in results:
            if result.image is None:
                typer.echo(f"error: {result.path}: {_failure(result)}", err=True)
                failed += 1
                continue
            batch.append(result)
            if len(batch) == batch_size:
                _print_captions(net, batch, config, as_json)
                batch = []
        if batch:
            _print_captions(net, batch, config, as_json)
    finally:
        results.close()  # on Ctrl-C or a failed batch, stop the decode threads now
    if failed:
        raise typer.Exit(1)


def _render_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise _fail(f"--render-size must look like 160x120, got {text!r}", 2) from None
    return width, height


def _data_config(
    data: str, captions: Path | None, images: Path | None, workers: int, render_size: str,
    generated: dict[str, Any],
) -> Any:  # fmt: skip
    """The data source's config; `generated` holds GeneratedDataConfig's fields from the flags."""
    from coca.data import GeneratedDataConfig
    from coca.folder_data import FolderDataConfig

    if data == "folder":
        if captions is None:
            raise _fail("--data folder needs --captions FILE (CSV file,caption or JSON lines)", 2)
        return FolderDataConfig(captions_file=captions, image_root=images, workers=workers)
    if data != "generated":
        raise _fail(f"unknown --data {data!r}: use generated or folder", 2)
    width, height = _render_size(render_size)
    return GeneratedDataConfig(width=width, height=height, workers=workers, **generated)


class _Progress:
    """A tqdm bar on a terminal; on a pipe or log file, one plain line per 5% of the steps."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar = None
        self.next_line = 0
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)

    def __call__(self, report: Any) -> None:
        if self.bar is not None:
            self.bar.update(report.step - self.bar.n)
            if report.loss is not None:
                self.bar.set_postfix(
                    loss=f"{report.loss:.3f}",
                    lr=f"{report.lr:.2e}",
                    img_s=f"{report.images_per_s:.0f}",
                )
            return
        if report.loss is not None and report.step >= self.next_line:
            self.next_line = report.step + max(1, self.total // 20)
            typer.echo(
                f"step {report.step}/{self.total} loss {report.loss:.4f} lr {report.lr:.2e} "
                f"{report.images_per_s:.0f} img/s",
                err=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_command(
    output: Path = typer.Argument(..., help="Folder to write the model bundle to."),
    model: str = typer.Option(
        "coca_default_small", "--model", help="Preset to train from scratch."
    ),
    init: str | None = typer.Option(None, "--init", help="Fine-tune this model (folder, hub id)."),
    data: str = typer.Option("generated", "--data", help="generated or folder."),
    captions: Path | None = typer.Option(None, "--captions", help="CSV/JSONL captions (folder)."),
    images: Path | None = typer.Option(None, "--images", help="Image root for --captions rows."),
    pool_size: int = typer.Option(100_000, "--pool-size", min=1, help="Generated scenes."),
    render_size: str = typer.Option("160x120", "--render-size", help="Generated image size WxH."),
    captions_per_image: int = typer.Option(4, "--captions-per-image", min=1),
    split_seed: int = typer.Option(0, "--split-seed", help="Generated scenes' split seed."),
    double_size_fraction: float = typer.Option(
        0.0, "--double-size-fraction", help="Share of scenes rendered at twice --render-size."
    ),
    mirror: bool = typer.Option(
        False, "--mirror", help="Mirror half of each batch, swapping left/right in captions."
    ),
    mirror_twins: float = typer.Option(
        0.0, "--mirror-twins", help="Share of each batch that are mirrored twins (hard negatives)."
    ),
    partial_captions: int = typer.Option(
        0, "--partial-captions", min=0, help="Short true statements kept per generated scene."
    ),
    partial_share: float = typer.Option(
        0.5, "--partial-share", help="Share of contrastive texts drawn from --partial-captions."
    ),
    hard_negatives: float = typer.Option(
        0.0, "--hard-negatives", help="Share of each batch lending a false text (NegCLIP)."
    ),
    layout_probe: float = typer.Option(
        0.0, "--layout-probe", help="Weight of the latent's object-position probe loss."
    ),
    steps: int = typer.Option(1000, "--steps", min=1),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    warmup_steps: int = typer.Option(200, "--warmup-steps", min=0),
    min_lr_ratio: float = typer.Option(0.01, "--min-lr-ratio"),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Max gradient norm; 0 = off."),
    contrastive_weight: float = typer.Option(1.0, "--contrastive-weight"),
    caption_weight: float = typer.Option(2.0, "--caption-weight"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on GPU), bf16, fp32."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", min=1),
    log_every: int = typer.Option(10, "--log-every", min=1),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in <output>.run."),
    stop_after: int | None = typer.Option(None, "--stop-after", help="End this session here."),
    time_budget: float | None = typer.Option(
        None, "--time-budget", help="Seconds for the whole run (setup included); anneals by clock."
    ),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the forward."),
    workers: int = typer.Option(0, "--workers", min=0, help="Render/decode processes; 0 = all."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Default: <output>.run"),
) -> None:
    """Train a CoCa model on generated scenes or a folder of captioned images."""
    from coca.data import DataError
    from coca.optim import OptimConfig
    from coca.train import TrainConfig, train
    from coca.train_state import ResumeError

    try:
        generated = dict(
            pool_size=pool_size, captions_per_image=captions_per_image, split_seed=split_seed,
            double_size_fraction=double_size_fraction, mirror=mirror, mirror_twins=mirror_twins,
            partial_captions_per_image=partial_captions, partial_share=partial_share,
            hard_negatives=hard_negatives, layout_probe=layout_probe,
        )  # fmt: skip
        data_config = _data_config(data, captions, images, workers, render_size, generated)
        optim = OptimConfig(
            lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
            grad_clip=grad_clip, contrastive_weight=contrastive_weight,
            caption_weight=caption_weight,
        )  # fmt: skip
        config = TrainConfig(
            output=output, model=model, init=init, data=data_config, steps=steps,
            batch_size=batch_size, optim=optim, seed=seed, device=device, precision=precision,
            checkpoint_every=checkpoint_every, log_every=log_every, resume=resume,
            stop_after=stop_after, time_budget_s=time_budget, compile=compile_model,
            run_dir=run_dir,
        )  # fmt: skip
    except ValueError as exc:
        raise _fail(str(exc), 2) from exc
    import coca

    progress = _Progress(steps)
    try:
        result = train(config, on_step=progress)
    except (DataError, ResumeError, coca.CheckpointError, ValueError) as exc:
        raise _fail(str(exc), 2) from exc
    finally:
        progress.close()
    if result.finished:
        typer.echo(f"trained {result.steps_done} steps in {result.train_seconds:.0f} s; "
                   f"model bundle: {result.bundle}")  # fmt: skip
    else:
        typer.echo(f"stopped after step {result.steps_done} of {steps}; continue with --resume "
                   f"(checkpoint in {result.run_dir})")  # fmt: skip


def eval_command(
    model: str = typer.Option("default", "--model", help="Model: default, a folder or a hub id."),
    count: int = typer.Option(2000, "--count", min=10, help="Held-out images."),
    seed: int | None = typer.Option(None, "--seed", help="Held-out split seed (default: world's)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    decoding: str = typer.Option("greedy", "--decoding", help="greedy or beam_search."),
    render_size: str = typer.Option("640x480", "--render-size", help="Held-out image size WxH."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    workers: int = typer.Option(0, "--workers", min=0, help="Render processes; 0 = all cores."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Score a model on held-out generated scenes (retrieval P@10, R@1, caption F1, BLEU, CIDEr)."""
    from coca.evaluate import EvalConfig, evaluate, format_report
    from coca.world.queries import HELDOUT_SEED, TRAIN_SEED

    split = HELDOUT_SEED if seed is None else seed
    if split == TRAIN_SEED:
        raise _fail(f"--seed {split} is the training split; evaluate on a held-out seed", 2)
    width, height = _render_size(render_size)
    config = EvalConfig(
        count=count, seed=split, width=width, height=height, batch_size=batch_size,
        decoding=_decoding(decoding), workers=workers,
    )  # fmt: skip
    net = _load_model(model, _device(device))
    report = evaluate(net, config)
    if as_json:
        record = report.to_dict()
        record["model"] = model
        record["targets_met"] = report.targets_met()
        typer.echo(json.dumps(record, indent=2))
    else:
        typer.echo(f"model: {model}")
        typer.echo(format_report(report))


def register(app: typer.Typer) -> None:
    """Add the model subcommands to the `coca-search` app."""
    app.command("caption")(caption_command)
    app.command("train")(train_command)
    app.command("eval")(eval_command)
