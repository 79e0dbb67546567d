"""Image bytes for the browser: thumbnails and full views, EXIF-rotated, re-encoded by Pillow.

The app never sends a file as it is on disk: every image is decoded and re-encoded here, so what
reaches the browser is always a plain JPEG/PNG of a catalogued photo (no metadata, no surprises).
Callers pass the path the catalog holds for an image id; nothing here takes a path from a request.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from indexer.heif import register_heif_opener

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 320  # px, longest side: sharp in a 4-column grid on a wide screen
FULL_SIDE = 1600  # px: the detail view never ships a 50-megapixel original
_JPEG_QUALITY = 85
_ORIENTATION = 0x0112  # EXIF tag


# The catalog holds the HEIC photos the indexer read, so the app must open them too: thumbnails
# here and uploads (uploads.open_upload). The plugin is process-wide and every page imports this
# module (through ui), so registering once at import covers both.
register_heif_opener()


class ImageUnavailableError(OSError):
    """The catalogued file is gone or no longer decodes."""


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    width: int  # after EXIF rotation and downscaling
    height: int
    mime: str


def _encode(image: Image.Image) -> RenderedImage:
    buffer = io.BytesIO()
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image.convert("RGBA").save(buffer, format="PNG", optimize=False)
        mime = "image/png"
    else:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        rgb.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
        mime = "image/jpeg"
    return RenderedImage(buffer.getvalue(), image.width, image.height, mime)


def render_image(path: Path, max_side: int) -> RenderedImage:
    """The image at `path`, upright (EXIF orientation applied), no side longer than `max_side`."""
    try:
        with Image.open(path) as image:
            # JPEG draft mode decodes at 1/2..1/8 scale straight away (5x faster thumbnails); it
            # needs the target box in the stored aspect ratio, or it keeps the full size.
            scale = max_side / max(image.size)
            if scale < 1:
                image.draft("RGB", (int(image.width * scale), int(image.height * scale)))
            # exif_transpose copies the image even when it has nothing to do: ask first.
            rotated = image.getexif().get(_ORIENTATION, 1) not in (0, 1)
            upright = ImageOps.exif_transpose(image) if rotated else image
            # reducing_gap=1: a fast box reduction by whole factors first (PNG has no draft
            # mode), then Lanczos for the rest; sharp enough at thumbnail size.
            upright.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=1.0)
            return _encode(upright)
    except FileNotFoundError as error:
        raise ImageUnavailableError(f"{path} is no longer on disk; re-run the indexer") from error
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise ImageUnavailableError(f"{path} cannot be decoded: {error}") from error


_ThumbKey = tuple[int, str, int, int]  # (image id, catalogued path, mtime_ns, max side)


class ThumbnailCache:
    """Rendered images shared by every session, bounded in bytes, filled in parallel.

    Keyed by (id, path, mtime, size): a photo that changes on disk gets a fresh thumbnail.
    Pillow releases the GIL while decoding and resizing, so a small pool renders a page of
    thumbnails on all cores. Thread-safe.
    """

    def __init__(self, max_bytes: int = 128 << 20, workers: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[_ThumbKey, RenderedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=workers or min(4, os.cpu_count() or 2), thread_name_prefix="thumbnail"
        )

    def get_many(
        self, items: Sequence[tuple[int, Path]], max_side: int
    ) -> dict[int, RenderedImage | None]:
        """Rendered images by id; None for files that are gone or no longer decode."""
        keys = {image_id: _key(image_id, path, max_side) for image_id, path in items}
        found: dict[int, RenderedImage | None] = {}
        with self._lock:
            for image_id, key in keys.items():
                if key is not None and key in self._items:
                    self._items.move_to_end(key)
                    found[image_id] = self._items[key]
        missing = [(i, k) for i, k in keys.items() if i not in found]
        rendered = self._pool.map(lambda item: _render_or_none(item[1]), missing)
        for (image_id, key), image in zip(missing, rendered, strict=True):
            found[image_id] = image
            if image is not None and key is not None:
                self._store(key, image)
        return found

    def get(self, image_id: int, path: Path, max_side: int) -> RenderedImage | None:
        return self.get_many([(image_id, path)], max_side)[image_id]

    def _store(self, key: _ThumbKey, image: RenderedImage) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = image
            self._bytes += len(image.data)
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped.data)


def _key(image_id: int, path: Path, max_side: int) -> _ThumbKey | None:
    try:
        return (image_id, str(path), os.stat(path).st_mtime_ns, max_side)
    except OSError:
        return None


def _render_or_none(key: _ThumbKey | None) -> RenderedImage | None:
    if key is None:
        return None
    try:
        return render_image(Path(key[1]), key[3])
    except ImageUnavailableError as error:
        logger.warning("image %d unavailable: %s", key[0], error)
        return None
