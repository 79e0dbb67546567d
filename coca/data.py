"""Training data: procedural scenes rendered into memory, or a folder of a user's captioned images.

Both sources hand the trainer `Batch`es through one seam, `batches(start_step, stop_step)`, and
draw every step's examples with a generator seeded by (seed, step) alone. So a resumed run sees
exactly the batches an uninterrupted run would, without saving any data-loader state.

Legend: N pool images, K captions per image, B batch, T tokens, H/W render size, S model input side.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from coca.world.captions import captions_for
from coca.world.queries import TRAIN_SEED
from coca.world.render import render_scene
from coca.world.scene import Scene, item_seed, scene_for_seed

logger = logging.getLogger(__name__)

_CAPTION_STREAM = 1  # caption rng = default_rng([split, index, 1]), as world.write_library draws
_SCALE_STREAM = 2  # decides which scenes are rendered at double size
_RENDER_CHUNK = 256  # images per worker task: big enough to amortise IPC, small for load balance


class DataError(Exception):
    """Training data could not be read or is unusable; the message says which file and why."""


@dataclass(frozen=True)
class Batch:
    """One training step's examples, already on the training device."""

    images: torch.Tensor  # (B, 3, S, S) float, normalised by the model's preprocessing
    tokens: torch.Tensor  # (B, T) long, <start_of_text> ... <end_of_text> pad...


class BatchSource(Protocol):
    """What the trainer needs from a data source."""

    def batches(self, start_step: int, stop_step: int) -> Iterator[Batch]:
        """The batches of steps start_step .. stop_step-1, each a function of (seed, step) only."""
        ...


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

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.captions_per_image < 1:
            raise ValueError("pool_size and captions_per_image must be >= 1")
        if not 0.0 <= self.double_size_fraction <= 1.0:
            raise ValueError(
                f"double_size_fraction must lie in [0, 1], got {self.double_size_fraction}"
            )


@dataclass(frozen=True)
class FolderDataConfig:
    """A folder of images plus a captions file (CSV `file,caption` or JSON lines)."""

    captions_file: Path
    image_root: Path | None = (
        None  # relative `file` entries resolve here; default: the file's folder
    )
    workers: int = 0  # image decoding processes; 0 = one per CPU core (at most 8)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator that draws step `step`'s examples: a pure function of (seed, step)."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 32) | int(state[1]))


def cpu_workers(requested: int, cap: int | None = None) -> int:
    """`requested` processes, or one per available core when 0."""
    if requested > 0:
        return requested
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = max(1, available or 1)
    return min(count, cap) if cap else count


# --- procedural scenes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedScenes:
    """Rendered scenes (already at the model's input size when a preprocess was given)."""

    images: np.ndarray  # (N, H, W, 3) uint8
    captions: list[list[str]]  # N lists of K captions
    tokens: np.ndarray | None  # (N, K, T) int32 when a tokenizer was given


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
    config, captions = job.config, []
    for row in range(start, stop):
        index = offset + row
        scene = scene_for_seed(item_seed(config.split_seed, index))
        image = render_scene(scene, *_render_size(config, index))
        if job.preprocess is not None:
            # The same PIL resize the indexer's decode workers use, so pixels match inference.
            image = job.preprocess.resize_for_model(image)
        images[row] = np.asarray(image)
        texts = scene_captions(config.split_seed, index, config.captions_per_image, scene)
        captions.append(texts)
    if job.tokenizer is None:
        return _Rendered(captions, None)
    ids = job.tokenizer([text for texts in captions for text in texts]).numpy().astype(np.int32)
    return _Rendered(captions, ids.reshape(len(captions), config.captions_per_image, -1))


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
        return _Rendered(done.captions, done.tokens, images)
    memory = SharedMemory(name=job.memory)
    try:
        return _render_into(np.ndarray(job.shape, np.uint8, buffer=memory.buf), job, start, stop)
    finally:
        memory.close()


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
        return RenderedScenes(images, done.captions, done.tokens)
    nbytes = int(np.prod(shape))
    memory = SharedMemory(create=True, size=nbytes) if _shared_memory_fits(nbytes) else None
    try:
        job = _RenderJob(config, preprocess, tokenizer, shape, memory and memory.name)
        starts = range(0, config.pool_size, _RENDER_CHUNK)
        tasks = [(job, start, min(start + _RENDER_CHUNK, config.pool_size)) for start in starts]
        # fork is fastest and safe here (workers touch only numpy and PIL); spawn elsewhere.
        method = "fork" if os.name == "posix" else "spawn"
        with get_context(method).Pool(workers) as pool:
            chunks = list(pool.imap(_render_chunk, tasks))
        if memory is None:
            images = np.concatenate([chunk.images for chunk in chunks])
        else:
            images = np.ndarray(shape, dtype=np.uint8, buffer=memory.buf).copy()
    finally:
        if memory is not None:
            memory.close()
            memory.unlink()
    captions = [texts for chunk in chunks for texts in chunk.captions]
    tokens = None if tokenizer is None else np.concatenate([chunk.tokens for chunk in chunks])
    return RenderedScenes(images, captions, tokens)


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
        self.tokens = torch.from_numpy(rendered.tokens).long().to(device)  # (N, K, T)
        # Channel-first so a gathered batch is what preprocess.batch takes; (N, 3, S, S) uint8.
        self.images = torch.from_numpy(rendered.images).permute(0, 3, 1, 2).to(device)
        self.normalize = _normalizer(preprocess, device)
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    def batch(self, step: int) -> Batch:
        generator = step_generator(self.seed, step)
        n, k = self.tokens.shape[:2]
        rows = torch.randint(n, (self.batch_size,), generator=generator)  # (B,)
        choice = torch.randint(k, (self.batch_size,), generator=generator)  # (B,)
        rows, choice = _to_device(rows, self.device), _to_device(choice, self.device)
        images = self.normalize(self.images[rows])  # (B, 3, S, S) float
        return Batch(images=images, tokens=self.tokens[rows, choice])

    def batches(self, start_step: int, stop_step: int) -> Iterator[Batch]:
        for step in range(start_step, stop_step):
            yield self.batch(step)


# --- a folder of captioned images ----------------------------------------------------------------


@dataclass(frozen=True)
class CaptionedImage:
    """One image file and every caption the captions file gives it."""

    path: Path
    captions: tuple[str, ...]


@dataclass(frozen=True)
class CaptionTable:
    """The usable rows of a captions file, grouped by image, and what was wrong with the others."""

    images: tuple[CaptionedImage, ...]
    problems: tuple[str, ...]  # "captions.csv line 7: no such image 'x.jpg'", ...

    @property
    def caption_count(self) -> int:
        return sum(len(item.captions) for item in self.images)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
            raise DataError(
                f"{path} needs a header row with the columns 'file' and 'caption' "
                f"(found {reader.fieldnames})"
            )
        for row in reader:
            yield reader.line_num, row


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    import json

    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_number, f"not valid JSON ({exc.msg})"
                continue
            yield line_number, row if isinstance(row, dict) else "not a JSON object"


def _row_captions(row: dict[str, Any]) -> list[str] | str:
    """The captions of one row (`caption` string or `captions` list), or what is wrong with it."""
    raw = row.get("captions", row.get("caption"))
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return "needs a 'caption' string (or a 'captions' list of strings)"
    texts = [" ".join(t.split()) for t in texts if t and t.strip()]
    return texts or "has an empty caption"


def _image_problem(path: Path) -> str | None:
    """Why `path` cannot serve as a training image, or None (reads the header, not the pixels)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return f"no such image {str(path)!r}"
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"unreadable image {str(path)!r} ({exc})"
    return None


def read_caption_table(captions_file: Path, image_root: Path | None = None) -> CaptionTable:
    """Read a CSV (`file,caption` header) or JSON lines (`{"file", "caption"|"captions"}`) file.

    Bad rows (missing fields, empty captions, missing or unreadable images) are collected as
    problems rather than raised, so one typo does not stop a fine-tuning run; DataError when no
    row is usable or the file itself cannot be read.
    """
    captions_file = Path(captions_file)
    root = Path(image_root) if image_root is not None else captions_file.parent
    suffix = captions_file.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json", ".ndjson"):
        raise DataError(f"{captions_file}: use a .csv (file,caption) or .jsonl captions file")
    reader = _csv_rows if suffix == ".csv" else _jsonl_rows
    grouped: dict[Path, list[str]] = {}
    problems: list[str] = []
    checked: dict[Path, str | None] = {}
    try:
        for line_number, row in reader(captions_file):
            where = f"{captions_file.name} line {line_number}"
            texts = row if isinstance(row, str) else _row_captions(row)
            file = None if isinstance(row, str) else row.get("file")
            if isinstance(texts, str):
                problems.append(f"{where}: {texts}")
                continue
            if not isinstance(file, str) or not file.strip():
                problems.append(f"{where}: needs a 'file' entry")
                continue
            path = (root / file.strip()).resolve()
            if path not in checked:
                checked[path] = _image_problem(path)
            if checked[path] is not None:
                problems.append(f"{where}: {checked[path]}")
                continue
            grouped.setdefault(path, []).extend(texts)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read captions file {captions_file}: {exc}") from exc
    if not grouped:
        detail = f" ({problems[0]}{' ...' if len(problems) > 1 else ''})" if problems else ""
        raise DataError(f"{captions_file} has no usable rows{detail}")
    items = tuple(CaptionedImage(path, tuple(texts)) for path, texts in grouped.items())
    return CaptionTable(items, tuple(problems))


class _FolderImages(torch.utils.data.Dataset):
    """Decodes and preprocesses the image of one (image index, caption row) key, in workers."""

    def __init__(self, table: CaptionTable, preprocess: Any) -> None:
        self.paths = [item.path for item in table.images]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from PIL import Image

        index, caption_row = key
        try:
            with Image.open(self.paths[index]) as image:
                pixels = self.preprocess(image.convert("RGB"))  # (3, S, S)
        except OSError as exc:
            raise DataError(f"cannot decode {self.paths[index]}: {exc}; remove it") from exc
        return pixels, caption_row


class _StepSampler(torch.utils.data.Sampler):
    """Yields each step's keys [(image index, caption row)] from step_generator(seed, step)."""

    def __init__(
        self, table: CaptionTable, batch_size: int, seed: int, start: int, stop: int
    ) -> None:
        counts = torch.tensor([len(item.captions) for item in table.images])
        self.first_row = torch.cumsum(counts, 0) - counts  # (N,) first caption row of each image
        self.counts = counts
        self.batch_size, self.seed, self.start, self.stop = batch_size, seed, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        n = len(self.counts)
        for step in range(self.start, self.stop):
            generator = step_generator(self.seed, step)
            rows = torch.randint(n, (self.batch_size,), generator=generator)  # (B,)
            pick = torch.rand(self.batch_size, generator=generator)  # (B,) which caption
            offset = (pick * self.counts[rows]).long()
            caption_rows = (self.first_row[rows] + offset).tolist()
            yield list(zip(rows.tolist(), caption_rows, strict=True))


class FolderBatches:
    """Batches of a user's captioned images, decoded in parallel by a DataLoader."""

    def __init__(
        self,
        config: FolderDataConfig,
        tokenizer: Callable[[list[str]], torch.Tensor],
        preprocess: Any,
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        self.table = read_caption_table(config.captions_file, config.image_root)
        for problem in self.table.problems:
            logger.warning("skipped %s", problem)
        logger.info(
            "%d images with %d captions from %s (%d rows skipped)",
            len(self.table.images),
            self.table.caption_count,
            config.captions_file,
            len(self.table.problems),
        )
        texts = [text for item in self.table.images for text in item.captions]
        self.tokens = tokenize_captions(tokenizer, texts)  # (captions, T)
        self.dataset = _FolderImages(self.table, preprocess)
        self.workers = cpu_workers(config.workers, cap=8)
        self.batch_size, self.seed, self.device = batch_size, seed, device

    def batches(self, start_step: int, stop_step: int) -> Iterator[Batch]:
        sampler = _StepSampler(self.table, self.batch_size, self.seed, start_step, stop_step)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            num_workers=0 if self.workers == 1 else self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for images, caption_rows in loader:
            yield Batch(
                images=images.to(self.device, non_blocking=True),
                tokens=self.tokens[caption_rows].to(self.device, non_blocking=True),
            )
