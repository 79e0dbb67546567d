"""An uploaded photo for a search by image: opened upright, or a clear BadQueryError."""

from __future__ import annotations

import io
import re

from PIL import Image, ImageOps, UnidentifiedImageError

from search_app.errors import BadQueryError


def open_upload(data: bytes) -> Image.Image:
    """An uploaded file as an upright PIL image; anything unreadable is a BadQueryError."""
    if not data:
        raise BadQueryError("the uploaded file is empty; choose a photo (JPEG, PNG, WebP, ...)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise BadQueryError(
            f"the upload is too large to open ({image_pixels(error)}); use a smaller copy"
        ) from error
    except UnidentifiedImageError as error:
        raise BadQueryError(
            "the upload is not an image format this app reads; try a JPEG, PNG, WebP or HEIC"
        ) from error
    except (OSError, ValueError) as error:
        raise BadQueryError(f"the upload is not a readable image ({error})") from error


def image_pixels(error: Image.DecompressionBombError) -> str:
    """ "400,000,000 pixels" out of Pillow's message, else the message itself."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return f"{int(found.group(1)):,} pixels" if found else str(error)
