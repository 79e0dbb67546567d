"""Decode image files into small uint8 tensors ready for the model, in a bounded parallel pool.

Decoding is the CPU-heavy stage of indexing, so it runs ahead of the model in worker threads
(Pillow releases the GIL while it decodes and resizes) or, with many cores, in worker processes
(`indexer.decode_processes`): the Python work around each decode holds the GIL, which caps threads
near a thousand images/s however many cores there are. Each image is reduced as early as possible:
JPEGs are decoded at a reduced DCT scale (draft mode) when the model needs far fewer pixels, and the
model's `resize_for_model` resamples only the centre square, so odd aspect ratios stay cheap.
A file that fails is returned with its error message; it never stops the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image

from coca.preprocess import Preprocess, PreprocessConfig, channel_last_pixels
from indexer.heif import register_heif_opener
from indexer.ordered import ordered_map
from storage.hashing import content_hash, content_hash_of_bytes

logger = logging.getLogger(__name__)

# Turns an oriented, loaded photo into the model's S x S RGB input, as a PIL image or a uint8
# (3, S, S) tensor: the model's own `preprocess.pixels_for_model` (the indexer's choice; or
# `resize_for_model`), so decoding matches what `model.preprocess` would do.
Prepare = Callable[[Image.Image], Image.Image | torch.Tensor]

_EXIF_IFD = 0x8769
_TAG_ORIENTATION = 0x0112
_TAG_MAKE = 0x010F
_TAG_MODEL = 0x0110
_TAG_DATETIME = 0x0132
_TAG_DATETIME_ORIGINAL = 0x9003
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height
# EXIF orientation -> the transpose that shows the photo upright (as ImageOps.exif_transpose does).
_ORIENTATION_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

BACKENDS = ("auto", "threads", "processes")
# Where JPEG pixels are decoded: "cpu" (Pillow, this module), "gpu" (nvJPEG through torchvision,
# `indexer.gpu_decode`), or "auto": the GPU when the model is on CUDA, nvJPEG works there and
# there are fewer decode workers than `indexer.gpu_decode.CPU_DECODE_WORKERS`.
DECODERS = ("auto", "cpu", "gpu")
# From this many decode workers up, "auto" uses processes: the Python part of each decode (open,
# EXIF, array copies) holds the GIL, and the model and commit threads need it too, so threads stop
# scaling after a few cores; a process costs a one-off fork at the first task.
PROCESS_WORKERS = 6


class DecodeError(ValueError):
    """A file that cannot be turned into an image for the model; the message says why."""


@dataclass(frozen=True)
class DecodeConfig:
    """How files become model inputs."""

    image_size: int = 224  # side S of the model's square input; JPEG draft keeps >= S on each side
    max_pixels: int = 2 * Image.MAX_IMAGE_PIXELS  # larger images are refused (decompression bombs)
    workers: int = 2  # decode threads or processes; about one per free CPU core
    # Files decoded ahead of the consumer. The indexer raises it to two batches, so the workers
    # keep decoding the next batch while the model is busy with the current one.
    prefetch: int = 64
    use_draft: bool = True  # reduced-size JPEG decode; off only to compare against full decodes
    # "threads", "processes", or "auto": processes from PROCESS_WORKERS workers up, where the GIL
    # held by the Python part of each decode would leave cores idle.
    backend: str = "auto"
    chunk_size: int = 32  # files per task sent to a decode process (amortises the hand-over)
    decoder: str = "auto"  # one of DECODERS; the indexer resolves "auto" for its model's device
    # Also compute each file's content hash (storage.content_hash) in the worker that reads it:
    # the indexer needs one per new file, and there it costs a read from the page cache, not
    # threads in the indexing process contending for the GIL with the model and the commits.
    hash_files: bool = False
    # JPEGs per nvJPEG call on the "gpu" decoder: large enough to keep the hardware decoder busy,
    # small enough that the full-size decoded photos (~2.4 MB each at 1024x768) stay a few
    # hundred MB of GPU memory.
    gpu_batch_size: int = 128
    # Threads decoding chunks with nvJPEG, each on its own CUDA stream: one thread reads the next
    # chunk's files and launches its decode while another waits for its chunk's kernels. On an
    # H100 host, B-32 indexed 751 / 845 / 729 photos/s with 1 / 2 / 3 threads (same run).
    gpu_threads: int = 2
    # On the GPU path, the share of JPEGs the decode workers decode with Pillow themselves (they
    # only read headers otherwise, so their cores idle while nvJPEG and the model share the GPU);
    # chosen per file from its path, so a file always takes the same path. 0: nvJPEG takes every
    # JPEG it can. Run 10 (H100, 2026-11-25) showed no gain, with the indexing process's host
    # time then ~2x today's; kept to measure again (benchmarks/bench_index.py --cpu-share).
    cpu_share: float = 0.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if min(self.workers, self.chunk_size, self.gpu_batch_size, self.gpu_threads) < 1:
            raise ValueError(
                "workers, chunk_size, gpu_batch_size and gpu_threads must be at least 1, got "
                f"{self.workers}, {self.chunk_size}, {self.gpu_batch_size}, {self.gpu_threads}"
            )
        if not 0.0 <= self.cpu_share <= 1.0:
            raise ValueError(f"cpu_share must be between 0 and 1, got {self.cpu_share}")

    def uses_processes(self) -> bool:
        """True when decoding runs in worker processes rather than threads."""
        if self.backend == "auto":
            return self.workers >= PROCESS_WORKERS
        return self.backend == "processes"


@dataclass(frozen=True)
class DecodedImage:
    """One image, oriented, converted to RGB and cut to the model's square input."""

    pixels: torch.Tensor  # uint8 (3, S, S)
    width: int  # original size after EXIF orientation, for the catalog
    height: int
    format: str | None  # Pillow's format name, e.g. "JPEG"
    taken_at: datetime | None  # EXIF DateTimeOriginal (or DateTime), no timezone
    camera: str | None  # EXIF make and model


@dataclass(frozen=True)
class ImageHeader:
    """What the catalog needs from a file's header, read without decoding any pixels."""

    width: int  # size after EXIF orientation
    height: int
    format: str | None  # Pillow's format name, e.g. "JPEG"
    orientation: int  # EXIF orientation 1..8 (1 when missing or invalid)
    taken_at: datetime | None
    camera: str | None


@dataclass(frozen=True)
class DecodeResult:
    """The outcome for one path: an image, or the message explaining why there is none."""

    path: Path
    image: DecodedImage | None
    error: str | None
    content_hash: str | None = None  # with DecodeConfig.hash_files; None if unreadable


def default_prepare(image_size: int) -> Prepare:
    """CLIP-style preparation (shorter side to S, centre crop) when no model is at hand."""
    return Preprocess(PreprocessConfig(image_size=image_size)).pixels_for_model


def decode_image(path: Path, config: DecodeConfig, prepare: Prepare | None = None) -> DecodedImage:
    """Read one file into a (3, S, S) uint8 tensor plus its metadata; raises on any bad file."""
    register_heif_opener()
    prepare = prepare or default_prepare(config.image_size)
    try:
        with Image.open(path) as image:
            return _decode_open_image(image, config, prepare)
    except Image.DecompressionBombError as error:
        raise DecodeError(f"image is too large to decode safely: {error}") from error
    except Image.UnidentifiedImageError as error:
        raise DecodeError("not an image Pillow can read (wrong extension or corrupt)") from error


def _decode_open_image(image: Image.Image, config: DecodeConfig, prepare: Prepare) -> DecodedImage:
    header = read_header(image, config)
    if config.use_draft and header.format == "JPEG":
        image.draft("RGB", _draft_request(image.size, config.image_size))
    image.load()  # truncated or corrupt data raises here
    # Orient before preparing: after draft the image is small, so the transpose is cheap.
    transpose = _ORIENTATION_TRANSPOSES.get(header.orientation)
    oriented = image.transpose(transpose) if transpose is not None else image
    square = prepare(oriented)
    pixels = square if isinstance(square, torch.Tensor) else channel_last_pixels(square)
    return DecodedImage(
        pixels, header.width, header.height, header.format, header.taken_at, header.camera
    )


def read_header(image: Image.Image, config: DecodeConfig) -> ImageHeader:
    """Size, orientation and EXIF of an opened image; raises DecodeError past the pixel limit.

    Only the header is read, so a decompression bomb is refused before any pixel is decoded.
    """
    width, height = image.size
    if width * height > config.max_pixels:
        raise DecodeError(
            f"image has {width}x{height} pixels, more than the limit of {config.max_pixels}"
        )
    if width < 1 or height < 1:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    exif = image.getexif()
    orientation = exif.get(_TAG_ORIENTATION, 1)
    if not isinstance(orientation, int) or orientation not in _ORIENTATION_TRANSPOSES:
        orientation = 1  # missing, upright or malformed: shown as stored
    if orientation in _ROTATED_ORIENTATIONS:
        width, height = height, width
    taken_at, camera = read_exif_metadata(exif)
    return ImageHeader(width, height, image.format, orientation, taken_at, camera)


def _draft_request(size: tuple[int, int], image_size: int) -> tuple[int, int]:
    """The smallest size JPEG draft may shrink to while the shorter side stays >= image_size."""
    width, height = size
    scale = image_size / min(width, height)
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def read_exif_metadata(exif: Image.Exif) -> tuple[datetime | None, str | None]:
    """(capture time, camera) from EXIF; missing or malformed fields become None."""
    try:
        sub_ifd = exif.get_ifd(_EXIF_IFD)
    except (KeyError, ValueError, TypeError, OSError):
        sub_ifd = {}
    taken_at = _parse_exif_datetime(sub_ifd.get(_TAG_DATETIME_ORIGINAL) or exif.get(_TAG_DATETIME))
    make = _clean_exif_text(exif.get(_TAG_MAKE))
    model = _clean_exif_text(exif.get(_TAG_MODEL))
    if make and model and not model.lower().startswith(make.lower()):
        camera: str | None = f"{make} {model}"
    else:
        camera = model or make
    return taken_at, camera


def _parse_exif_datetime(value: object) -> datetime | None:
    text = _clean_exif_text(value)
    if not text:
        return None
    try:
        return datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def _clean_exif_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()
    return text or None


def decode_or_error(
    path: Path, config: DecodeConfig, prepare: Prepare | None = None
) -> DecodeResult:
    """The one place where a bad file's exception becomes a recorded message."""
    digest = hash_if_asked(path, config)
    try:
        return DecodeResult(path, decode_image(path, config, prepare), None, digest)
    except MemoryError:
        error_text = "MemoryError: not enough memory to decode this image"
        return DecodeResult(path, None, error_text, digest)
    except Exception as error:  # noqa: BLE001 - any failure of one file must not stop the run
        logger.debug("cannot decode %s: %s", path, error)
        return DecodeResult(path, None, f"{type(error).__name__}: {error}", digest)


def hash_if_asked(path: Path, config: DecodeConfig, data: bytes | None = None) -> str | None:
    """The file's content hash when `config.hash_files` (from `data` when it was read already);
    None when not asked or unreadable (decoding then records why)."""
    if not config.hash_files:
        return None
    try:
        return content_hash(path) if data is None else content_hash_of_bytes(data)
    except OSError as error:
        logger.debug("cannot hash %s: %s", path, error)
        return None


def decode_all(
    paths: Iterable[Path], config: DecodeConfig, prepare: Prepare | None = None
) -> Generator[DecodeResult, None, None]:
    """Decode files in parallel, yielding results in input order.

    At most `prefetch` (and at least `workers`) files are in flight, so memory stays bounded however
    long the input is, and the consumer (the model) finds the next image already decoded.
    """
    prepare = prepare or default_prepare(config.image_size)
    return map_files(paths, config, prepare, decode_or_error)


FileResult = TypeVar("FileResult")
# The work done for one file by a decode worker: `decode_or_error`, or the GPU decoder's
# header read (`indexer.jpeg_files.read_jpeg_or_decode`). A module-level function, so that
# worker processes can receive it; it never raises for a bad file.
FileWork = Callable[[Path, DecodeConfig, Prepare], FileResult]


def map_files(
    paths: Iterable[Path], config: DecodeConfig, prepare: Prepare, work: FileWork
) -> Generator[FileResult, None, None]:
    """`work` over every path in the worker pool (threads or processes), in input order."""
    if config.uses_processes():
        from indexer.decode_processes import decode_in_processes

        yield from decode_in_processes(paths, config, prepare, work)
        return

    def one(path: Path) -> FileResult:
        return work(Path(path), config, prepare)

    yield from ordered_map(one, paths, config.workers, config.prefetch, "decode")
