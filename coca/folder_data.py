"""Training data from a folder of a user's captioned images, e.g. to fine-tune a public checkpoint.

The captions file is CSV with a `file,caption` header or JSON lines with `file` and `caption` (or a
`captions` list, as the world's manifest.jsonl has). Images decode in DataLoader workers with the
model's own preprocessing; each step's examples come from coca.data.step_generator(seed, step), so
a resumed run sees the same batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coca.data import Batch, DataError, cpu_workers, step_generator, tokenize_captions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderDataConfig:
    """A folder of images plus a captions file (CSV `file,caption` or JSON lines)."""

    captions_file: Path
    image_root: Path | None = None  # where relative `file` entries live; default: the file's folder
    workers: int = 0  # image decoding processes; 0 = one per CPU core (at most 8)


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
