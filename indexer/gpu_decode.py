"""Decode JPEGs on the GPU with nvJPEG (torchvision), for indexing faster than the CPU decodes.

Why: on a 16-core H100 host, Pillow (draft mode, 14 worker processes) decodes about 1,400
1024x768 photos a second, less than the B-32 model indexes; nvJPEG alone decodes ~10,000. On this
path the decode workers (`indexer.decode.map_files`: threads or processes) only read each file's
header (size, EXIF orientation, time, camera; no pixels) and hash it (`indexer.jpeg_files`), and
`DecodeConfig.gpu_threads` decoding threads take the JPEG bytes (worker threads hand theirs over;
after worker processes the file is read again rather than piped), hand them in batches to
`torchvision.io.decode_jpeg(list, device=...)` (batched nvJPEG), turn each photo upright on the
tensor and shrink the batch to the model's S x S input with the model's own tensor preprocessing.
The photos stay on the GPU for the model.

Every other file takes the Pillow path of `indexer.decode`, one by one, so it ends exactly as on
the CPU path (the same image, or the same error message): non-JPEGs; CMYK and other modes nvJPEG
does not turn into RGB; files Pillow cannot open or whose header is past the pixel limit (refused
from the header, before any decode); JPEGs without an end-of-image marker after their first scan
(truncated: Pillow refuses them, nvJPEG might fill the gap); JPEGs that decode_jpeg rejects.

The code runs on any torch device; on the CPU torchvision decodes with libjpeg, which is how the
tests check it without a GPU. The pixels are close to, not equal to, the Pillow path's: the
photo is decoded at full size (no DCT-domain draft) and resized with torch's antialiased bicubic,
not Pillow's (tests/test_gpu_decode.py states the tolerance).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import queue
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image

from coca.preprocess import Preprocess
from indexer.decode import (
    DecodeConfig,
    DecodedImage,
    DecodeResult,
    decode_all,
    decode_or_error,
    map_files,
)
from indexer.jpeg_files import (
    DecodeItem,
    EncodedJpeg,
    read_jpeg_header_or_decode,
    read_jpeg_or_decode,
)
from indexer.ordered import ordered_map

logger = logging.getLogger(__name__)

# Photos resized per call: each is a float32 copy of the full-size photo (~9 MB at 1024x768).
# Few calls matter: every torch call on the decode thread releases and retakes the GIL, which the
# indexing thread holds while it launches the model's work.
_RESIZE_CHUNK = 64

T = TypeVar("T")


class DecoderUnavailableError(ValueError):
    """GPU decoding was asked for where it cannot run; the message says what to use instead."""


# From this many decode workers up, "auto" decodes with Pillow even where nvJPEG works. Measured
# on an H100 host (1024x768 JPEGs, BENCHMARKS.md section 4, run 8): with 14 Pillow processes on
# 16 cores the CPU path indexed faster (B-32 1,362 against 936 images/s; L-14 891 against 526,
# where the model and nvJPEG share the GPU); restricted to 8 cores with 6 workers, nvJPEG won for
# B-32 (902 against 622) and L-14 was even (516 against 542).
CPU_DECODE_WORKERS = 12


def resolve_decoder(choice: str, device: torch.device, workers: int = 1) -> str:
    """The decoder for a model on `device` with `workers` decode workers, "cpu" or "gpu";
    "gpu" where it cannot run raises. "auto" takes the GPU when nvJPEG works there and fewer
    than CPU_DECODE_WORKERS Pillow workers would decode."""
    if choice == "cpu":
        return "cpu"
    if choice == "auto" and workers >= CPU_DECODE_WORKERS:
        return "cpu"
    reason = _unavailable_reason(device)
    if choice == "auto":
        if reason is not None and device.type == "cuda":
            logger.info("decoding JPEGs on the CPU: %s", reason)
        return "cpu" if reason is not None else "gpu"
    if reason is not None:
        raise DecoderUnavailableError(
            f"--decode gpu cannot run here: {reason}; use --decode cpu or --decode auto"
        )
    return "gpu"


def _unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the model is on {device.type}, not a CUDA GPU"
    return probe_decode_jpeg(str(device))


@functools.cache
def probe_decode_jpeg(device: str) -> str | None:
    """None when torchvision decodes a small JPEG on `device`, else why not (tried once)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "no CUDA GPU is available"
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as error:
        return f"torchvision is not installed ({error})"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 30)).save(buffer, format="JPEG", quality=95)
    data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    try:
        (pixels,) = decode_jpeg([data], mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, ValueError, OSError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"torchvision.io.decode_jpeg fails on {device}: {first_line}"
    red = pixels[0].float().mean().item()
    if tuple(pixels.shape) != (3, 8, 16) or not 150 <= red <= 250:
        return f"torchvision.io.decode_jpeg on {device} returned a wrong image"
    return None


def decode_jpegs(files: Sequence[EncodedJpeg], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 (3, H, W) RGB per file on `device`, as stored (not yet oriented); None where
    decode_jpeg rejects the file. One batched call; when it fails, file by file."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(f.data, dtype=torch.uint8, count=f.length) for f in files]
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError as error:  # one bad file fails the whole call: find it
        logger.debug("batched JPEG decode failed (%s); decoding one by one", error)
    decoded: list[torch.Tensor | None] = []
    for one, file in zip(data, files, strict=True):
        try:
            decoded.append(decode_jpeg([one], mode=ImageReadMode.RGB, device=device)[0])
        except RuntimeError as error:
            logger.debug("%s: decode_jpeg rejects it (%s); Pillow decides", file.path, error)
            decoded.append(None)
    return decoded


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """(3, H, W) as stored -> upright, for EXIF orientation 1..8 (as ImageOps.exif_transpose)."""
    if orientation == 2:
        return pixels.flip(-1)  # mirrored left-right
    if orientation == 3:
        return pixels.flip(-2, -1)  # upside down
    if orientation == 4:
        return pixels.flip(-2)  # mirrored top-bottom
    if orientation == 5:
        return pixels.transpose(-2, -1)  # mirrored across the main diagonal
    if orientation == 6:
        return pixels.rot90(-1, (-2, -1))  # stored turned left: turn clockwise
    if orientation == 7:
        return pixels.flip(-2, -1).transpose(-2, -1)  # mirrored across the anti-diagonal
    if orientation == 8:
        return pixels.rot90(1, (-2, -1))  # stored turned right: turn counter-clockwise
    return pixels


def to_model_pixels(images: Sequence[torch.Tensor], preprocess: Preprocess) -> torch.Tensor:
    """uint8 (B, S, S, 3) on the photos' device: each (3, H, W) photo resized and cropped as the
    model's tensor preprocessing does, kept as uint8 like the Pillow path's output (channel-last,
    as Pillow lays it out, so the encoder's batching stays a plain copy). On a GPU the photos
    stay there: the encoder stacks them where the model runs, with no trip through the host."""
    parts = [
        preprocess.resize_batch(images[start : start + _RESIZE_CHUNK])  # uint8 (b, 3, S, S)
        for start in range(0, len(images), _RESIZE_CHUNK)
    ]
    return torch.cat(parts).permute(0, 2, 3, 1).contiguous()  # (B, S, S, 3)


class ChunkDecoder:
    """Turns a chunk of worker results into DecodeResults: JPEG bytes through decode_jpeg on
    the device, the rest (and what decode_jpeg rejects) through the Pillow path."""

    def __init__(self, config: DecodeConfig, preprocess: Preprocess, device: torch.device) -> None:
        self.config, self.preprocess, self.device = config, preprocess, device
        self._local = threading.local()  # each decoding thread's own CUDA stream

    @property
    def stream(self) -> torch.cuda.Stream | None:
        """This thread's side stream: decoding and resizing overlap with the model's work on the
        default stream, and with the other decoding threads' chunks."""
        if self.device.type != "cuda":
            return None
        if getattr(self._local, "stream", None) is None:
            # High priority: those streams come from their own pool, so a decoding stream is
            # never the pooled stream torch.cuda.graph captures the caption step on (with the
            # default priority the pool of 32 wraps around, and a decode launched on the capture
            # stream during a capture invalidates it).
            self._local.stream = torch.cuda.Stream(self.device, priority=-1)
        return self._local.stream

    def decode(self, items: Sequence[DecodeItem]) -> list[DecodeResult]:
        results: list[DecodeResult | None] = [
            item if isinstance(item, DecodeResult) else None for item in items
        ]
        jpegs = [i for i, item in enumerate(items) if isinstance(item, EncodedJpeg)]
        if jpegs:
            side = self.stream
            stream = torch.cuda.stream(side) if side is not None else contextlib.nullcontext()
            # no_grad, not inference_mode: the images leave as ordinary tensors, as Pillow's do.
            with torch.no_grad(), stream:
                self._decode_on_device([items[i] for i in jpegs], jpegs, results)
            if side is not None:
                # The photos are read on the model's stream next: wait here, on this thread,
                # until they are written (the GIL is released while waiting).
                side.synchronize()
        for index, result in enumerate(results):
            if result is None:  # decode_jpeg rejected it: the Pillow path decides
                prepare = self.preprocess.pixels_for_model
                results[index] = decode_or_error(items[index].path, self.config, prepare)
        return results  # type: ignore[return-value] - every slot is filled above

    def _decode_on_device(
        self, files: list[EncodedJpeg], slots: list[int], results: list[DecodeResult | None]
    ) -> None:
        read = [(slot, file.with_data()) for slot, file in zip(slots, files, strict=True)]
        slots = [slot for slot, file in read if file is not None]  # changed files go to Pillow
        files = [file for _, file in read if file is not None]
        if not files:
            return
        upright: list[tuple[int, EncodedJpeg, torch.Tensor]] = []
        for slot, file, pixels in zip(slots, files, decode_jpegs(files, self.device), strict=True):
            if pixels is None:
                continue
            pixels = orient(pixels, file.header.orientation)  # (3, H, W) upright
            if tuple(pixels.shape[1:]) == (file.header.height, file.header.width):
                upright.append((slot, file, pixels))
        if not upright:
            return
        squares = to_model_pixels([pixels for _, _, pixels in upright], self.preprocess)
        # (3, S, S) views of the channel-last memory, in one call rather than one per photo.
        views = squares.permute(0, 3, 1, 2).unbind(0)
        for (slot, file, _), pixels in zip(upright, views, strict=True):
            header = file.header
            image = DecodedImage(
                pixels,
                header.width,
                header.height,
                header.format,
                header.taken_at,
                header.camera,
            )
            results[slot] = DecodeResult(file.path, image, None, file.content_hash)


def decode_all_on_device(
    paths: Iterable[Path], config: DecodeConfig, preprocess: Preprocess, device: torch.device
) -> Generator[DecodeResult, None, None]:
    """`decode_all` with JPEG pixels decoded on `device`; results in input order.

    A background thread pulls the workers' results in chunks of `config.gpu_batch_size`, has
    `config.gpu_threads` threads decode them and keeps about `config.prefetch` images ready, so
    decoding goes on while the caller runs the model.
    """
    work = read_jpeg_header_or_decode if config.uses_processes() else read_jpeg_or_decode
    items = map_files(paths, config, preprocess.pixels_for_model, work)
    decoder = ChunkDecoder(config, preprocess, device)
    threads = config.gpu_threads
    chunks = ordered_map(
        decoder.decode, _chunked(items, config.gpu_batch_size), threads, threads, "gpu-decode"
    )
    capacity = max(1, -(-config.prefetch // config.gpu_batch_size))
    background = _in_background(chunks, items, capacity)
    try:
        for chunk in background:
            yield from chunk
    finally:
        background.close()  # stops the thread and the workers when the caller stops early


def decode_for_model(
    paths: Iterable[Path], config: DecodeConfig, preprocess: Preprocess, device: torch.device
) -> Generator[DecodeResult, None, None]:
    """The decode stage for a model on `device`: on the device when `config.decoder` is "gpu"
    (resolved by `resolve_decoder`), else in Pillow's worker pool."""
    if config.decoder == "gpu":
        return decode_all_on_device(paths, config, preprocess, device)
    return decode_all(paths, config, preprocess.pixels_for_model)


def _chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass(frozen=True)
class _Failure:
    error: BaseException


_DONE = object()


def _in_background(
    produce: Generator[T, None, None], source: Generator[object, None, None], capacity: int
) -> Generator[T, None, None]:
    """Run `produce` in a thread, at most `capacity` items ahead; its errors re-raise here.

    When the caller stops early, the thread stops and closes `source` (the worker pool).
    """
    ready: queue.Queue[object] = queue.Queue(maxsize=capacity)
    stop = threading.Event()

    def hand_over(item: object) -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                ready.put(item, timeout=0.1)
                return

    def run() -> None:
        try:
            for item in produce:
                hand_over(item)
                if stop.is_set():
                    return
            hand_over(_DONE)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            hand_over(_Failure(error))
        finally:
            produce.close()  # its own threads (the decoding threads) stop first
            source.close()

    thread = threading.Thread(target=run, name="gpu-decode", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc] - anything else came from `produce`
    finally:
        stop.set()
        thread.join()
