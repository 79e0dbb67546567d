"""Training CoCa: AdamW, warmup + cosine schedule, bf16 autocast on GPU, checkpoints, exact resume.

`train(TrainConfig)` builds a model (a preset with the procedural world's word-level vocabulary, or
any `coca.load` source to fine-tune), streams `Batch`es from `coca.data`, and writes a model bundle
with `coca.save_bundle`. Every step's data is a function of (seed, step) and the learning rate a
function of the step, so `resume=True` continues a run exactly where it stopped.

Files of a run (run_dir, default `<output>.run/`): checkpoint.pt (model, optimizer, step, RNG
states), train_log.jsonl (one JSON record per logged step), train_config.json, train_summary.json.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from coca.data import Batch, BatchSource, GeneratedBatches, GeneratedDataConfig
from coca.folder_data import FolderBatches, FolderDataConfig
from coca.layout_probe import LayoutProbe
from coca.loss import CocaLoss, CocaLossOutput, TextNegatives
from coca.model import CoCa, CocaOutput
from coca.optim import OptimConfig, learning_rate, make_optimizer
from coca.recipe import build_model
from coca.train_state import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LossLog,
    ResumeError,
    RunState,
    config_record,
    load_checkpoint,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"
MAX_LOGIT_SCALE = math.log(100)  # open_clip clamps the learned temperature here


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Built from command-line flags in coca_search only."""

    output: Path  # the model bundle folder written at the end
    model: str = "coca_default_small"  # preset to train from scratch (ignored with init)
    init: str | None = None  # a coca.load source to fine-tune instead (keeps its tokenizer)
    data: GeneratedDataConfig | FolderDataConfig = field(default_factory=GeneratedDataConfig)
    steps: int = 1000  # optimizer steps of the whole schedule
    batch_size: int = 256
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0  # model init and every step's batch
    device: str = "auto"  # auto = cuda when available, else cpu
    precision: str = "auto"  # auto = bf16 autocast on cuda, fp32 elsewhere; or "bf16" / "fp32"
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    log_every: int = 10  # steps between loss-log records
    resume: bool = False  # continue from run_dir/checkpoint.pt
    stop_after: int | None = (
        None  # end this session after this step; the schedule still spans steps
    )
    # Wall-clock seconds for the whole run, data preparation included: the steps get what the
    # setup left, and the cosine follows the clock when it runs out before `steps` do.
    time_budget_s: float | None = None
    compile: bool = False  # torch.compile the training forward (slow start, faster steps)
    run_dir: Path | None = None  # checkpoint and logs; default "<output>.run"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.optim.warmup_steps < 0 or self.optim.lr <= 0:
            raise ValueError("lr must be > 0 and warmup_steps >= 0")

    @property
    def resolved_run_dir(self) -> Path:
        output = Path(self.output)
        return Path(self.run_dir) if self.run_dir else output.with_name(output.name + ".run")


@dataclass(frozen=True)
class StepReport:
    """What the progress callback sees after each optimizer step."""

    step: int  # 1-based count of finished steps
    total_steps: int
    lr: float
    loss: float | None  # only filled on log steps (reading it waits for the GPU)
    images_per_s: float | None


@dataclass(frozen=True)
class TrainResult:
    bundle: Path
    run_dir: Path
    steps_done: int
    finished: bool  # False when stop_after ended the session early
    final_loss: float | None
    train_seconds: float


def build_data(config: TrainConfig, model: CoCa, device: torch.device) -> BatchSource:
    args = (model.tokenizer, model.preprocess, config.batch_size, config.seed, device)
    if isinstance(config.data, FolderDataConfig):
        return FolderBatches(config.data, *args)
    return GeneratedBatches(config.data, *args)


@dataclass(frozen=True)
class TrainingOutput:
    """The training forward: CoCa's outputs plus the features of the hard negative texts."""

    coca: CocaOutput
    negative_features: torch.Tensor | None = None  # (M, E) normalised


def training_forward(
    model: CoCa,
    images: torch.Tensor,
    tokens: torch.Tensor,
    contrastive_tokens: torch.Tensor | None = None,
    negative_tokens: torch.Tensor | None = None,
) -> TrainingOutput:
    """CoCa.forward minus its input checks (they read token ids back from the GPU every step,
    which stalls the queue of a small model; the data sources produce valid batches by design).

    With `contrastive_tokens`, the text latents come from those texts (e.g. partial descriptions)
    while the decoder still learns to write `tokens`; with `negative_tokens` (M, T), their latents
    too. One text-tower pass serves them all.
    """
    latent, image_tokens = model.visual(images)  # (B, E), (B, N, D)
    b = tokens.shape[0]
    texts = [tokens] if contrastive_tokens is None else [tokens, contrastive_tokens]
    start = (len(texts) - 1) * b  # where the contrastive rows begin
    if negative_tokens is not None:
        texts.append(negative_tokens)
    joined = texts[0] if len(texts) == 1 else torch.cat(texts)  # (B*n+M, T)
    text_latent, token_outputs = model.text(joined)  # (B*n+M, E), (B*n+M, L, D)
    logits = model.text_decoder(image_tokens, token_outputs[:b, :-1])  # (B, L-1, V)
    features = torch.nn.functional.normalize(text_latent[start:], dim=-1)  # (B+M, E)
    output = CocaOutput(
        image_features=torch.nn.functional.normalize(latent, dim=-1),
        text_features=features[:b],
        logits=logits,
        labels=tokens[:, 1:],
        logit_scale=model.logit_scale.exp(),
        logit_bias=model.logit_bias,
    )
    negatives = None if negative_tokens is None else features[b:]
    return TrainingOutput(output, negatives)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; use cpu")
    return device


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


ProgressCallback = Callable[[StepReport], None]


class _Trainer:
    """The state of one training session: model, optimizer, data, and where the run stands."""

    def __init__(self, config: TrainConfig) -> None:
        setup_started = time.perf_counter()
        self.config = config
        self.device = resolve_device(config.device)
        self.run_dir = config.resolved_run_dir
        self.record = config_record(config)
        model = build_model(config.model, config.init, config.seed)
        # The data first: rendering forks worker processes, best done before CUDA starts.
        self.data = build_data(config, model, self.device)
        self.model = model.to(self.device).train()
        # Weight of the layout probe loss; only generated scenes have the scene graphs it needs.
        self.layout_weight = getattr(config.data, "layout_probe", 0.0)
        self.probes = self._layout_probe()
        self.optimizer = make_optimizer(
            self.model, config.optim, self.device, tuple(self.probes.values())
        )
        self.loss_fn = CocaLoss(
            config.optim.contrastive_weight,
            config.optim.caption_weight,
            pad_id=self.model.config.pad_token_id,
        )
        self.forward = torch.compile(training_forward) if config.compile else training_forward
        self.autocast = autocast_for(config.precision, self.device)
        self.state = self._start_state(time.perf_counter() - setup_started)
        self.log = LossLog(self.run_dir, self.state.step)

    def _layout_probe(self) -> dict[str, LayoutProbe]:
        """The training-only layout probe head when the data asks for one (coca.layout_probe)."""
        if not self.layout_weight:
            return {}
        probe = LayoutProbe(self.model.config.embed_dim).to(self.device).train()
        return {"layout_probe": probe}

    def _start_state(self, setup_seconds: float) -> RunState:
        if self.config.resume:
            state = load_checkpoint(
                self.run_dir, self.model, self.optimizer, self.record, self.probes
            )
            logger.info("resuming %s at step %d", self.run_dir, state.step)
            return state
        if (self.run_dir / CHECKPOINT_FILE).exists():
            raise ResumeError(
                f"{self.run_dir} already holds a training run; pass --resume to continue it, "
                "or choose another --output"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.record, indent=2) + "\n"
        (self.run_dir / CONFIG_FILE).write_text(text, encoding="utf-8")
        budget = self.config.time_budget_s
        step_budget = None if budget is None else max(1.0, budget - setup_seconds)
        if step_budget is not None:
            logger.info("setup took %.0f s; %.0f s left for the steps", setup_seconds, step_budget)
        return RunState(step=0, train_seconds=0.0, step_budget_s=step_budget)

    def step(self, batch: Batch, lr: float) -> tuple[CocaLossOutput, torch.Tensor]:
        """One optimizer step; returns the (unsynchronised) losses and gradient norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            output = self.forward(
                self.model,
                batch.images,
                batch.tokens,
                batch.contrastive_tokens,
                batch.negative_tokens,
            )
            negatives = None
            if output.negative_features is not None and batch.negative_allowed is not None:
                negatives = TextNegatives(output.negative_features, batch.negative_allowed)
            losses = self.loss_fn(output.coca, negatives)
            if self.probes and batch.layouts is not None:
                probe = self.probes["layout_probe"]
                layout = self.layout_weight * probe.loss(output.coca.image_features, batch.layouts)
                losses = replace(losses, total=losses.total + layout, layout=layout)
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        losses = CocaLossOutput(
            losses.total.detach(),
            losses.contrastive.detach(),
            losses.caption.detach(),
            None if losses.layout is None else losses.layout.detach(),
        )
        clip = self.config.optim.grad_clip
        params = self.model.parameters()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return losses, grad_norm

    def checkpoint(self, step: int, train_seconds: float) -> None:
        state = RunState(step, train_seconds, self.state.step_budget_s)
        save_checkpoint(self.run_dir, self.model, self.optimizer, state, self.record, self.probes)


class _Window:
    """Images since the last log record, for its throughput figure."""

    def __init__(self, clock: float, seconds_before: float) -> None:
        self.clock, self.seconds_before = clock, seconds_before  # this session's start
        self.start, self.images = clock, 0

    def record(
        self, step: int, lr: float, losses: CocaLossOutput, grad_norm: torch.Tensor
    ) -> dict[str, Any]:
        """The log record of `step` (reading the losses waits for the GPU), and a new window."""
        now = time.perf_counter()
        speed = self.images / max(now - self.start, 1e-9)
        elapsed = self.seconds_before + now - self.clock
        self.start, self.images = now, 0
        record = {
            "step": step,
            "lr": lr,
            "loss": losses.total.item(),
            "contrastive": losses.contrastive.item(),
            "caption": losses.caption.item(),
            "grad_norm": grad_norm.item(),
            "images_per_s": round(speed, 1),
            "elapsed_s": round(elapsed, 2),
        }
        if losses.layout is not None:
            record["layout"] = losses.layout.item()
        return record


def train(config: TrainConfig, on_step: ProgressCallback | None = None) -> TrainResult:
    """Train (or resume) a run and write the model bundle when its schedule is complete."""
    trainer = _Trainer(config)
    start, seconds_before = trainer.state.step, trainer.state.train_seconds
    stop = min(config.steps, config.stop_after or config.steps)
    budget = trainer.state.step_budget_s
    step, last_loss, out_of_time = start, None, False
    clock = time.perf_counter()
    window = _Window(clock, seconds_before)
    for batch in trainer.data.batches(start, stop):
        elapsed = seconds_before + time.perf_counter() - clock
        time_fraction = elapsed / budget if budget else 0.0
        if time_fraction >= 1.0:
            out_of_time = True
            logger.info("time budget of %.0f s used up after %d steps", budget, step)
            break
        lr = learning_rate(step, config.steps, config.optim, time_fraction)
        losses, grad_norm = trainer.step(batch, lr)
        step += 1
        window.images += config.batch_size
        speed = None
        if step % config.log_every == 0 or step == stop:
            record = window.record(step, lr, losses, grad_norm)
            trainer.log.write(record)
            last_loss, speed = record["loss"], record["images_per_s"]
        if on_step is not None:
            on_step(StepReport(step, config.steps, lr, last_loss if speed else None, speed))
        if step % config.checkpoint_every == 0 and step < stop:
            trainer.checkpoint(step, seconds_before + time.perf_counter() - clock)
    if window.images and step > start:  # the clock ended the run between two log steps
        record = window.record(step, lr, losses, grad_norm)
        trainer.log.write(record)
        last_loss = record["loss"]
    train_seconds = seconds_before + time.perf_counter() - clock
    trainer.checkpoint(step, train_seconds)
    finished = step >= config.steps or out_of_time
    if finished:
        _write_outputs(trainer, step, train_seconds, last_loss)
    return TrainResult(
        bundle=Path(config.output),
        run_dir=trainer.run_dir,
        steps_done=step,
        finished=finished,
        final_loss=last_loss,
        train_seconds=train_seconds,
    )


def _write_outputs(trainer: _Trainer, step: int, seconds: float, loss: float | None) -> None:
    """The fp16 bundle, plus a summary of the run next to its log."""
    from coca.checkpoint import save_bundle

    save_bundle(trainer.model.eval(), trainer.config.output, dtype=torch.float16)
    device = trainer.device
    summary = {
        "steps_done": step,
        "train_seconds": round(seconds, 1),
        "final_loss": loss,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "bundle": str(trainer.config.output),
    }
    text = json.dumps(summary, indent=2) + "\n"
    (trainer.run_dir / SUMMARY_FILE).write_text(text, encoding="utf-8")
    logger.info("trained %d steps in %.0f s; bundle in %s", step, seconds, trainer.config.output)
