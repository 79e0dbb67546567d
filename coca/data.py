"""Training data: batches from a pool of procedural scenes rendered into memory (coca.scene_pool;
a user's photos: coca.folder_data).

Both sources hand the trainer `Batch`es through one seam, `batches(start_step, stop_step)`, and
draw every step's examples with a generator seeded by (seed, step) alone. So a resumed run sees
exactly the batches an uninterrupted run would, without saving any data-loader state.

Legend: N pool images, K captions per image, B batch, T tokens, H/W render size, S model input side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from coca.hard_negatives import choose_negative_rows, negative_allowed
from coca.layout_probe import mirror_layout
from coca.scene_pool import (  # re-exported: the pool is part of this module's API
    GeneratedDataConfig,
    RenderedScenes,
    cpu_workers,
    render_scenes,
    scene_captions,
)

__all__ = [
    "Batch",
    "BatchSource",
    "DataError",
    "GeneratedBatches",
    "GeneratedDataConfig",
    "RenderedScenes",
    "cpu_workers",
    "render_scenes",
    "scene_captions",
    "step_generator",
    "tokenize_captions",
]

logger = logging.getLogger(__name__)


class DataError(Exception):
    """Training data could not be read or is unusable; the message says which file and why."""


@dataclass(frozen=True)
class Batch:
    """One training step's examples, already on the training device."""

    images: torch.Tensor  # (B, 3, S, S) float, normalised by the model's preprocessing
    tokens: torch.Tensor  # (B, T) long, <start_of_text> ... <end_of_text> pad...
    # (B, T) texts for the contrastive loss when they differ from the captions (partial ones)
    contrastive_tokens: torch.Tensor | None = None
    negative_tokens: torch.Tensor | None = None  # (M, T) false texts (coca.hard_negatives)
    negative_allowed: torch.Tensor | None = None  # (B, M) image b may be pushed from negative m
    layouts: torch.Tensor | None = None  # (B, L) layout probe targets, NaN = absent (layout_probe)


class BatchSource(Protocol):
    """What the trainer needs from a data source."""

    def batches(self, start_step: int, stop_step: int) -> Iterator[Batch]:
        """The batches of steps start_step .. stop_step-1, each a function of (seed, step) only."""
        ...


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator that draws step `step`'s examples: a pure function of (seed, step)."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 32) | int(state[1]))


def tokenize_captions(
    tokenizer: Callable[[list[str]], torch.Tensor], texts: list[str]
) -> torch.Tensor:
    """(len(texts), T) token ids, in slices so a huge pool does not build one giant Python list."""
    if not texts:
        raise DataError("there are no captions to train on")
    parts = [tokenizer(texts[i : i + 65536]) for i in range(0, len(texts), 65536)]
    return torch.cat(parts).long()


def _to_device(indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy without a sync: a pageable host->GPU copy would wait for the whole GPU queue."""
    if device.type != "cuda":
        return indices
    return indices.pin_memory().to(device, non_blocking=True)


def _normalizer(preprocess: Any, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (B, 3, S, S) -> normalised float, with mean/std kept on the device.

    preprocess.batch builds its mean/std tensors per call, and each such host->GPU copy waits for
    the GPU queue; for a small model that stall costs more than the step itself.
    """
    config = getattr(preprocess, "config", None)
    if config is None:
        return preprocess.batch
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1) * 255  # (1, 3, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1) * 255
    return lambda pixels: (pixels.float() - mean) / std


def _side_word_ids(tokenizer: Any) -> tuple[int, int]:
    """Token ids of "left" and "right"; mirroring needs each to be a single token."""
    ids = [tokenizer.encode(word) for word in ("left", "right")]
    if any(len(word_ids) != 1 for word_ids in ids):
        raise ValueError("mirror needs 'left' and 'right' to be single tokens of the vocabulary")
    return ids[0][0], ids[1][0]


def _mirror(
    pixels: torch.Tensor, tokens: torch.Tensor, flip: torch.Tensor, side_words: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the rows of pixels (B, 3, S, S) where flip (B,) is set; swap left/right in their
    tokens (B, ..., T)."""
    pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
    return pixels, _swap_sides(tokens, flip, side_words)


def _swap_sides(
    tokens: torch.Tensor, flip: torch.Tensor, side_words: tuple[int, int]
) -> torch.Tensor:
    """tokens (B, ..., T) with "left" and "right" exchanged in the rows where flip (B,) is set."""
    left, right = side_words
    swap = flip.view(-1, *([1] * (tokens.dim() - 1)))  # (B, 1, ...)
    swapped = torch.where(tokens == left, right, torch.where(tokens == right, left, tokens))
    return torch.where(swap, swapped, tokens)


class GeneratedBatches:
    """Batches drawn from an in-memory pool of rendered scenes, kept on the training device."""

    def __init__(
        self,
        config: GeneratedDataConfig,
        tokenizer: Callable[[list[str]], torch.Tensor],
        preprocess: Any,
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        started = time.perf_counter()
        rendered = render_scenes(config, preprocess, tokenizer)
        assert rendered.tokens is not None  # a tokenizer was given
        logger.info(
            "rendered %d scenes at %dx%d in %.1f s",
            config.pool_size,
            config.width,
            config.height,
            time.perf_counter() - started,
        )
        self.tokens = torch.from_numpy(rendered.tokens).long().to(device)  # (N, K+P, T)
        # Channel-first so a gathered batch is what preprocess.batch takes; (N, 3, S, S) uint8.
        self.images = torch.from_numpy(rendered.images).permute(0, 3, 1, 2).to(device)
        self.normalize = _normalizer(preprocess, device)
        self.side_words = _side_word_ids(tokenizer) if config.mirror else None
        self.full, self.partial = config.captions_per_image, config.partial_captions_per_image
        self.partial_share = config.partial_share
        self.twins = int(config.mirror_twins * batch_size)
        self.negative_slots = round(config.hard_negatives * batch_size)
        if self.negative_slots:
            assert rendered.negatives is not None and rendered.negative_tokens is not None
            found = [[text is not None for text in texts] for texts in rendered.negatives]
            self.negative_valid = torch.tensor(found, dtype=torch.bool)  # (N, K+P), host side
            self.negative_tokens = torch.from_numpy(rendered.negative_tokens).long().to(device)
        self.layouts = None
        if config.layout_probe:
            assert rendered.layouts is not None  # the pool renders them when layout_probe is on
            self.layouts = torch.from_numpy(rendered.layouts).to(device)  # (N, L)
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    def batch(self, step: int) -> Batch:
        generator = step_generator(self.seed, step)
        b = self.batch_size
        rows = torch.randint(self.tokens.shape[0], (b,), generator=generator)  # (B,)
        choice = torch.randint(self.full, (b,), generator=generator)  # (B,) a whole caption
        texts = [choice]
        if self.partial:
            partial = self.full + torch.randint(self.partial, (b,), generator=generator)  # (B,)
            use = torch.rand(b, generator=generator) < self.partial_share
            texts.append(torch.where(use, partial, choice))  # contrastive text per row
        columns = torch.stack(texts, dim=1)  # (B, 1 or 2)
        flip = torch.rand(b, generator=generator) < 0.5  # (B,) used only with mirror
        if self.twins:  # the last rows repeat the first ones, mirrored the other way
            rows[b - self.twins :], columns[b - self.twins :] = (
                rows[: self.twins],
                columns[: self.twins],
            )
            flip[b - self.twins :] = ~flip[: self.twins]
        picked = None
        if self.negative_slots:  # chosen on the host: no device sync, fixed (M,) shapes
            valid = self.negative_valid[rows, columns[:, -1]]  # (B,) of each contrastive text
            picked = choose_negative_rows(valid, self.negative_slots, generator)  # (M,)
            picked_valid = _to_device(valid[picked], self.device)
            picked = _to_device(picked, self.device)
        rows, columns = _to_device(rows, self.device), _to_device(columns, self.device)
        flip = _to_device(flip, self.device)
        pixels = self.images[rows]  # (B, 3, S, S) uint8
        tokens = self.tokens[rows[:, None], columns]  # (B, 1 or 2, T)
        if self.side_words is not None:
            pixels, tokens = _mirror(pixels, tokens, flip, self.side_words)
        layouts = None
        if self.layouts is not None:
            layouts = self.layouts[rows]  # (B, L)
            if self.side_words is not None:
                layouts = mirror_layout(layouts, flip)
        batch = Batch(
            images=self.normalize(pixels),
            tokens=tokens[:, 0],
            contrastive_tokens=tokens[:, 1] if self.partial else None,
            layouts=layouts,
        )
        if picked is None:
            return batch
        negatives = self.negative_tokens[rows[picked], columns[picked, -1]]  # (M, T)
        mirror_flip = None if self.side_words is None else flip
        if mirror_flip is not None:
            negatives = _swap_sides(negatives, flip[picked], self.side_words)
        allowed = negative_allowed(rows, picked, picked_valid, mirror_flip)  # (B, M)
        return replace(batch, negative_tokens=negatives, negative_allowed=allowed)

    def batches(self, start_step: int, stop_step: int) -> Iterator[Batch]:
        for step in range(start_step, stop_step):
            yield self.batch(step)
