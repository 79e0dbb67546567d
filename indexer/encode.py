"""Run the model over batches of images: one vision pass feeds both the embedding and the caption.

The image tower is the expensive half of CoCa, so each batch is encoded once with
`encode_image_with_tokens` and the caption decoder reads the tokens of that same pass. On a GPU the
uint8 batch is staged in pinned memory and copied asynchronously, and the towers run under bf16 (or
fp16) autocast; on a CPU everything stays in float32. Captions go through one
coca.caption_engine.CaptionEngine per encoder, so the decoder and its CUDA graphs are built once
per run, not once per batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from coca.caption_engine import CaptionEngine
from coca.generate import DecodingConfig, caption_texts

logger = logging.getLogger(__name__)


def default_decoding() -> DecodingConfig:
    """Greedy captions of at most 20 tokens: fast, and what the catalog stores by default."""
    return DecodingConfig(generation_type="greedy", seq_len=20)


@dataclass(frozen=True)
class EncodeConfig:
    """How batches go through the model."""

    batch_size: int = 32  # images per vision pass; larger is faster on a GPU until memory runs out
    captions: bool = True  # False: embeddings only (`--no-captions`)
    decoding: DecodingConfig = field(default_factory=default_decoding)
    autocast: bool = True  # bf16 (or fp16 where bf16 is unsupported) autocast on CUDA devices


@dataclass(frozen=True)
class EncodedBatch:
    """The model's output for one batch, on the CPU, in input order."""

    embeddings: np.ndarray  # float32 (B, E), L2-normalised
    captions: list[str] | None  # None when captions are off (or not yet turned into text)
    gpu_seconds: float  # wall time of encode(): staging, model, copies back (synchronised)
    # Time the device spent between the first and the last model kernel of the batch (CUDA
    # events; host waits inside decoding included); on a CPU the same as gpu_seconds.
    device_seconds: float
    # The captions' token ids (B, T) on the CPU, from `encode_ids`, until `with_texts`.
    caption_ids: torch.Tensor | None = None


def default_cpu_threads() -> int:
    """torch threads for CPU indexing: one core fewer than the machine has (at least one).

    The decode workers and the commit thread need a core too. When every core also runs a torch
    (OpenMP) thread, those threads spin waiting for each other while a decoder holds their core:
    measured on a 2-core machine, 2 torch threads indexed 10x slower than 1.
    """
    return max(1, (os.cpu_count() or 1) - 1)


# torch threads when the model runs on a GPU: the host's torch work is then staging copies.
# Measured on an H100 host (16 cores, 14 decode workers): with the default 16 OpenMP threads the
# indexing thread spent ~0.85 s of host time per 512-photo batch against 0.14 s of GPU work.
GPU_HOST_THREADS = 2


def default_threads(device: torch.device) -> int:
    """torch threads for indexing on `device` (see default_cpu_threads and GPU_HOST_THREADS)."""
    return GPU_HOST_THREADS if device.type == "cuda" else default_cpu_threads()


# Photos per batch when --batch-size is not given. On a GPU the caption step is bound by kernel
# latency, not by the rows it carries (an H100 step over 512 rows took 1.3x the time of one over
# 64), so big batches are nearly free: 512 is what the H100 benchmarks ran. On the CPU the batch
# size made no difference (default model, 2 cores: 32, 64 and 128 all ~145 images/s), and small
# batches commit sooner and keep the progress bar moving.
GPU_BATCH_SIZE = 512
CPU_BATCH_SIZE = 32


def default_batch_size(device: torch.device) -> int:
    """Photos per indexing batch on `device` (see GPU_BATCH_SIZE and CPU_BATCH_SIZE)."""
    return GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


# Cores a GPU run leaves to the indexing process (its gather, model and commit threads launch the
# GPU work and write the catalog). The H100 benchmarks ran 14 decode workers on 16 cores.
GPU_HOST_CORES = 2


def default_decode_workers(device: torch.device) -> int:
    """Decode workers when --workers is not given: every core on the CPU (the decoders and the
    model take turns there), all but GPU_HOST_CORES with a GPU."""
    cores = os.cpu_count() or 2
    return max(1, cores - GPU_HOST_CORES) if device.type == "cuda" else cores


def resolve_device(choice: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a clear error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda was requested but no CUDA GPU is available; use cpu or auto"
        )
    return device


class BatchEncoder:
    """Turns lists of uint8 (3, S, S) images into embeddings and captions with one model."""

    def __init__(self, model: torch.nn.Module, config: EncodeConfig) -> None:
        self.model = model
        self.config = config
        self.device = next(model.parameters()).device
        self._pinned: torch.Tensor | None = None
        # One caption engine for the whole run: its decoder (caches, captured CUDA graphs) is
        # reset per batch instead of rebuilt, which cost more host time than the GPU work.
        self.caption_engine = CaptionEngine(model, config.decoding) if config.captions else None

    def encode(self, images: list[torch.Tensor]) -> EncodedBatch:
        """Embed (and caption) a batch; the result does not depend on the batch size."""
        return self.with_texts(self.encode_ids(images))

    def with_texts(self, encoded: EncodedBatch) -> EncodedBatch:
        """`encoded` with its caption ids turned into text (host work only)."""
        if encoded.caption_ids is None:
            return encoded
        texts = caption_texts(self.model, encoded.caption_ids)
        return dataclasses.replace(encoded, captions=texts, caption_ids=None)

    def encode_ids(self, images: list[torch.Tensor]) -> EncodedBatch:
        """`encode` with the captions left as token ids (`caption_ids`): the indexer's model
        thread hands the text work to its commit thread, so the GPU's next batch is launched
        sooner (512 captions are a few ms of tokenizer work on the host)."""
        start = time.perf_counter()
        events = self._events()
        batch = self._to_device(images)  # uint8 (B, 3, S, S) on the model's device
        with torch.inference_mode(), self._autocast():
            if events:
                events[0].record()
            pixels = self.model.preprocess.batch(batch)  # float32 (B, 3, S, S), normalised
            # A model cast to bf16/fp16 weights takes its inputs in that dtype.
            encoding = self.model.encode_image_with_tokens(pixels.to(self._input_dtype()))
            latent = encoding.latent.float()  # (B, E)
            token_ids = None
            if self.caption_engine is not None:
                token_ids = self.caption_engine.generate(encoding.tokens)
            if events:
                events[1].record()
        embeddings = latent.cpu().numpy().astype(np.float32, copy=False)
        caption_ids = None if token_ids is None else token_ids.cpu()
        wall = time.perf_counter() - start
        if events:
            events[1].synchronize()
        device = events[0].elapsed_time(events[1]) / 1000 if events else wall
        return EncodedBatch(embeddings, None, wall, device, caption_ids)

    def _events(self) -> tuple[torch.cuda.Event, torch.cuda.Event] | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def _input_dtype(self) -> torch.dtype:
        return next(self.model.visual.parameters()).dtype

    def _to_device(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Stack (3, S, S) images (on the CPU, or already on the model's device) into a
        (B, 3, S, S) batch on the model's device.

        Decoded images are channel-last in memory (Pillow's layout) seen through a permuted view;
        stacking them channel-last is a plain copy, and the batch stays a channel-last view.
        """
        channels_last = [image.permute(1, 2, 0) for image in images]  # (S, S, 3) each
        if self.device.type != "cuda":
            return torch.stack(channels_last).permute(0, 3, 1, 2)
        on_device = [image.device == self.device for image in images]
        if any(on_device):  # decoded on the GPU (indexer.gpu_decode), some maybe by Pillow
            # Decoded on the decoder's streams: tell the allocator this stream reads the photos,
            # so their memory is not handed back to a decoder before the copy has run. The
            # photos are views of a few decoded chunks: one call per chunk's memory.
            stream = torch.cuda.current_stream(self.device)
            chunks = {image.untyped_storage().data_ptr(): image for image in images}
            for image in chunks.values():
                if image.device == self.device:
                    image.record_stream(stream)
            there = [i for i, flag in enumerate(on_device) if flag]
            if len(there) == len(images):
                return torch.stack(channels_last).permute(0, 3, 1, 2)
            shape = (len(images), *channels_last[0].shape)
            batch = torch.empty(shape, dtype=torch.uint8, device=self.device)
            batch[there] = torch.stack([channels_last[i] for i in there])
            here = [i for i, flag in enumerate(on_device) if not flag]
            # Photos Pillow decoded (non-JPEGs, nvJPEG's refusals) cross in one staged copy.
            batch[here] = self._staged([channels_last[i] for i in here])
            return batch.permute(0, 3, 1, 2)
        return self._staged(channels_last).permute(0, 3, 1, 2)

    def _staged(self, channels_last: list[torch.Tensor]) -> torch.Tensor:
        """(S, S, 3) CPU images -> (B, S, S, 3) on the GPU through a pinned staging buffer.

        Reusing one buffer avoids a pinned allocation per batch; the copy to the GPU is
        asynchronous, so it overlaps with whatever the GPU still has queued (each batch waits
        for its results before the next one stages, so the buffer is free again by then).
        """
        shape = (len(channels_last), *channels_last[0].shape)  # (B, S, S, 3)
        if (
            self._pinned is None
            or self._pinned.shape[1:] != shape[1:]
            or len(self._pinned) < len(channels_last)
        ):
            self._pinned = torch.empty(shape, dtype=torch.uint8).pin_memory()
        staging = self._pinned[: len(channels_last)]
        torch.stack(channels_last, out=staging)
        return staging.to(self.device, non_blocking=True)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.device.type != "cuda" or not self.config.autocast:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
