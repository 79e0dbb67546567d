"""Image bytes for the browser: thumbnails and full views, EXIF-rotated, re-encoded by Pillow.

The app never sends a file as it is on disk: every image is decoded and re-encoded here, so what
reaches the browser is always a plain JPEG/PNG of a catalogued photo (no metadata, no surprises).
Callers pass the path the catalog holds for an image id; nothing here takes a path from a request.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 320  # px, longest side: sharp in a 4-column grid on a wide screen
FULL_SIDE = 1600  # px: the detail view never ships a 50-megapixel original
_JPEG_QUALITY = 85


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
        image.convert("RGB").save(buffer, format="JPEG", quality=_JPEG_QUALITY)
        mime = "image/jpeg"
    return RenderedImage(buffer.getvalue(), image.width, image.height, mime)


def render_image(path: Path, max_side: int) -> RenderedImage:
    """The image at `path`, upright (EXIF orientation applied), no side longer than `max_side`."""
    try:
        with Image.open(path) as image:
            # JPEG draft mode decodes at 1/2..1/8 scale straight away: thumbnails cost a few ms.
            image.draft("RGB", (max_side, max_side))
            upright = ImageOps.exif_transpose(image)
            upright.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return _encode(upright)
    except FileNotFoundError as error:
        raise ImageUnavailableError(f"{path} is no longer on disk; re-run the indexer") from error
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise ImageUnavailableError(f"{path} cannot be decoded: {error}") from error
