"""The rendered pool of procedural scenes: pixels, captions, partial captions, hard negatives
and their token ids, made once per training run in parallel worker processes (`coca.data` draws
each step's batch from it).

Every random choice is a function of (split_seed, scene index, stream), so a pool is the same for
any number of workers.

Legend: N pool images, K texts per image (captions, then partial captions), T tokens, H/W size.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import torch

from coca.hard_negatives import negatives_for
from coca.layout_probe import layout_target
from coca.partial_captions import partial_captions
from coca.world.captions import captions_for
from coca.world.queries import TRAIN_SEED
from coca.world.render import render_scene
from coca.world.scene import Scene, item_seed, scene_for_seed

logger = logging.getLogger(__name__)

_CAPTION_STREAM = 1  # caption rng = default_rng([split, index, 1]), as world.write_library draws
_SCALE_STREAM = 2  # decides which scenes are rendered at double size
_PARTIAL_STREAM = 3  # draws a scene's partial captions
_NEGATIVE_STREAM = 4  # draws a scene's hard negative texts
_RENDER_CHUNK = 256  # images per worker task: big enough to amortise IPC, small for load balance


@dataclass(frozen=True)
class GeneratedDataConfig:
    """Procedural scenes: rendered once into memory, then sampled with a fresh caption each step."""

    pool_size: int = 100_000  # distinct scenes; each step draws B of them with replacement
    width: int = 160  # render size: the library's 4:3 aspect, squashed to the model's square input
    height: int = 120
    captions_per_image: int = 4  # grammar paraphrases kept per scene; one is drawn per step
    split_seed: int = TRAIN_SEED  # scene i = scene_for_seed(item_seed(split_seed, i))
    workers: int = 0  # render processes; 0 = one per CPU core
    # Share of scenes rendered at twice the size before the resize to the model input: library
    # photos reach the model from ~320x240 (JPEG draft of 640x480), so both scales are seen.
    double_size_fraction: float = 0.0
    # Mirror half of each batch and swap the words "left"/"right" in its captions: twice the
    # distinct pictures from the same pool (nothing else in the grammar depends on the side).
    mirror: bool = False
    # With mirror: this share of each batch are mirrored twins of other rows of the same batch,
    # the hardest negatives for "left of" / "right of" (same scene, opposite sides).
    mirror_twins: float = 0.0
    # Short true statements per scene ("a red car", "two cars left of a tree") kept next to the
    # captions; this share of the contrastive texts is drawn from them (coca.partial_captions).
    partial_captions_per_image: int = 0
    partial_share: float = 0.5
    # Share of each batch whose contrastive text lends a hard negative: the same text with its
    # relation, subject/object or colors swapped, checked false for the scene (coca.hard_negatives).
    # Every image is then also scored against these texts; 0 turns them off.
    hard_negatives: float = 0.0
    # Weight of the layout probe loss (coca.layout_probe): a linear head on the image latent must
    # regress where each kind and (kind, color) group sits, so the latent encodes positions and
    # relational queries can be read from it. 0 turns it off (and the pool carries no targets).
    layout_probe: float = 0.0

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.captions_per_image < 1:
            raise ValueError("pool_size and captions_per_image must be >= 1")
        if not 0.0 <= self.mirror_twins <= 0.5 or (self.mirror_twins and not self.mirror):
            raise ValueError("mirror_twins must lie in [0, 0.5] and needs mirror")
        if self.partial_captions_per_image < 0 or not 0.0 <= self.partial_share <= 1.0:
            raise ValueError("partial_captions_per_image must be >= 0, partial_share in [0, 1]")
        if not 0.0 <= self.hard_negatives <= 1.0:
            raise ValueError(f"hard_negatives must lie in [0, 1], got {self.hard_negatives}")
        if self.layout_probe < 0.0:
            raise ValueError(f"layout_probe must be >= 0, got {self.layout_probe}")
        if not 0.0 <= self.double_size_fraction <= 1.0:
            raise ValueError(
                f"double_size_fraction must lie in [0, 1], got {self.double_size_fraction}"
            )


def cpu_workers(requested: int, cap: int | None = None) -> int:
    """`requested` processes, or one per available core when 0."""
    if requested > 0:
        return requested
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = max(1, available or 1)
    return min(count, cap) if cap else count


@dataclass(frozen=True)
class RenderedScenes:
    """Rendered scenes (already at the model's input size when a preprocess was given)."""

    images: np.ndarray  # (N, H, W, 3) uint8
    captions: list[list[str]]  # N lists of K captions, then P partial captions
    tokens: np.ndarray | None  # (N, K+P, T) int32 when a tokenizer was given
    negatives: list[list[str | None]] | None = None  # one false text per caption (or None)
    negative_tokens: np.ndarray | None = None  # (N, K+P, T): the caption's own where None
    layouts: np.ndarray | None = None  # (N, L) float32 layout probe targets, NaN = absent


@dataclass(frozen=True)
class _RenderJob:
    """What a render worker needs (pickled once per chunk)."""

    config: GeneratedDataConfig
    preprocess: Any  # None: keep the render size; else its resize_for_model (the indexer's path)
    tokenizer: Any  # None: captions as text only; else also their ids (tokenizing is parallel too)
    shape: tuple[int, ...]  # (N, H, W, 3) of the output array
    memory: str | None = None  # shared memory block holding the output array


@dataclass(frozen=True)
class _Rendered:
    """One chunk's captions (and their ids) coming back from a worker."""

    captions: list[list[str]]
    tokens: np.ndarray | None  # (n, K, T) int32
    images: np.ndarray | None = None  # (n, H, W, 3) uint8 when there is no shared memory
    negatives: list[list[str | None]] | None = None
    negative_tokens: np.ndarray | None = None  # (n, K, T) int32
    layouts: np.ndarray | None = None  # (n, L) float32


def scene_captions(
    split_seed: int, index: int, count: int, scene: Scene | None = None
) -> list[str]:
    """The `count` reference captions of scene `index` of a split (deterministic)."""
    scene = scene or scene_for_seed(item_seed(split_seed, index))
    rng = np.random.default_rng([split_seed, index, _CAPTION_STREAM])
    return captions_for(scene, rng, count)


def _render_into(
    images: np.ndarray, job: _RenderJob, start: int, stop: int, offset: int = 0
) -> _Rendered:
    """Render scenes offset+start .. offset+stop-1 into images[start:stop]; return captions."""
    config, captions, negatives, layouts = job.config, [], [], []
    for row in range(start, stop):
        index = offset + row
        scene = scene_for_seed(item_seed(config.split_seed, index))
        image = render_scene(scene, *_render_size(config, index))
        if job.preprocess is not None:
            # The same PIL resize the indexer's decode workers use, so pixels match inference.
            image = job.preprocess.resize_for_model(image)
        images[row] = np.asarray(image)
        texts = scene_captions(config.split_seed, index, config.captions_per_image, scene)
        if config.partial_captions_per_image:
            rng = np.random.default_rng([config.split_seed, index, _PARTIAL_STREAM])
            texts += partial_captions(scene, rng, config.partial_captions_per_image)
        captions.append(texts)
        if config.hard_negatives:
            rng = np.random.default_rng([config.split_seed, index, _NEGATIVE_STREAM])
            negatives.append(negatives_for(texts, scene, rng))
        if config.layout_probe:
            layouts.append(layout_target(scene))
    found = negatives if config.hard_negatives else None
    layout = np.stack(layouts) if layouts else None  # (n, L)
    if job.tokenizer is None:
        return _Rendered(captions, None, negatives=found, layouts=layout)
    ids = job.tokenizer([text for texts in captions for text in texts]).numpy().astype(np.int32)
    ids = ids.reshape(len(captions), len(captions[0]), -1)  # (n, K, T)
    negative_ids = None if found is None else _negative_ids(job, ids, found)
    return _Rendered(captions, ids, negatives=found, negative_tokens=negative_ids, layouts=layout)


def _negative_ids(
    job: _RenderJob, ids: np.ndarray, negatives: list[list[str | None]]
) -> np.ndarray:
    """(n, K, T) ids of the negatives; a caption without one keeps its own ids (never used)."""
    where = [(i, k) for i, texts in enumerate(negatives) for k, text in enumerate(texts) if text]
    out = ids.copy()
    if where:
        texts = [negatives[i][k] for i, k in where]
        rows, columns = zip(*where, strict=True)
        out[list(rows), list(columns)] = job.tokenizer(texts).numpy().astype(np.int32)
    return out


def _render_size(config: GeneratedDataConfig, index: int) -> tuple[int, int]:
    if config.double_size_fraction == 0.0:
        return config.width, config.height
    draw = np.random.default_rng([config.split_seed, index, _SCALE_STREAM]).random()
    scale = 2 if draw < config.double_size_fraction else 1
    return config.width * scale, config.height * scale


def _render_chunk(task: tuple[_RenderJob, int, int]) -> _Rendered:
    """Worker: render a range, into the parent's shared memory when there is one."""
    job, start, stop = task
    if job.memory is None:  # pixels travel back through the pipe
        images = np.zeros((stop - start, *job.shape[1:]), dtype=np.uint8)
        done = _render_into(images, job, 0, stop - start, offset=start)
        return dataclasses.replace(done, images=images)
    memory = SharedMemory(name=job.memory)
    try:
        return _render_into(np.ndarray(job.shape, np.uint8, buffer=memory.buf), job, start, stop)
    finally:
        memory.close()


def _one_thread() -> None:
    """Worker start: torch ops (the tokenizer builds tensors) must not enter the OpenMP pool the
    parent started before the fork; GNU OpenMP is not fork-safe and such workers hang forever."""
    torch.set_num_threads(1)


def _shared_memory_fits(nbytes: int) -> bool:
    """Containers often mount a small /dev/shm; writing past it kills workers with SIGBUS."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize > 1.1 * nbytes


def render_scenes(
    config: GeneratedDataConfig, preprocess: Any = None, tokenizer: Any = None
) -> RenderedScenes:
    """Render the pool, in parallel worker processes when it is large enough to pay off.

    With `preprocess`, each image is resized to the model's input (S, S) right after rendering;
    with `tokenizer`, the captions are tokenized there too.
    """
    if preprocess is None:
        if config.double_size_fraction:
            raise ValueError("double_size_fraction needs a preprocess to bring sizes together")
        shape = (config.pool_size, config.height, config.width, 3)
    else:
        shape = (config.pool_size, preprocess.image_size, preprocess.image_size, 3)
    workers = cpu_workers(config.workers)
    if workers == 1 or config.pool_size <= 2 * _RENDER_CHUNK:
        images = np.zeros(shape, dtype=np.uint8)
        job = _RenderJob(config, preprocess, tokenizer, shape)
        done = _render_into(images, job, 0, config.pool_size)
        return RenderedScenes(
            images, done.captions, done.tokens, done.negatives, done.negative_tokens, done.layouts
        )
    nbytes = int(np.prod(shape))
    memory = SharedMemory(create=True, size=nbytes) if _shared_memory_fits(nbytes) else None
    try:
        job = _RenderJob(config, preprocess, tokenizer, shape, memory and memory.name)
        starts = range(0, config.pool_size, _RENDER_CHUNK)
        tasks = [(job, start, min(start + _RENDER_CHUNK, config.pool_size)) for start in starts]
        # fork is fastest and safe here (workers touch only numpy and PIL); spawn elsewhere.
        method = "fork" if os.name == "posix" else "spawn"
        with get_context(method).Pool(workers, initializer=_one_thread) as pool:
            chunks = list(pool.imap(_render_chunk, tasks))
        if memory is None:
            images = np.concatenate([chunk.images for chunk in chunks])
        else:
            images = np.ndarray(shape, dtype=np.uint8, buffer=memory.buf).copy()
    finally:
        if memory is not None:
            memory.close()
            memory.unlink()
    return _joined(images, chunks)


def _joined(images: np.ndarray, chunks: list[_Rendered]) -> RenderedScenes:
    """The workers' chunks as one pool."""

    def stacked(name: str) -> np.ndarray | None:
        parts = [getattr(chunk, name) for chunk in chunks]
        return None if parts[0] is None else np.concatenate(parts)

    captions = [texts for chunk in chunks for texts in chunk.captions]
    negatives = None
    if chunks[0].negatives is not None:
        negatives = [texts for chunk in chunks for texts in chunk.negatives or []]
    return RenderedScenes(
        images,
        captions,
        stacked("tokens"),
        negatives,
        stacked("negative_tokens"),
        stacked("layouts"),
    )
