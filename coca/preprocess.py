"""Photos -> normalized model input tensors (3, S, S), as the CoCa checkpoints expect them.

Two paths share one `PreprocessConfig`:

* `Preprocess.__call__(pil_image)`: one PIL image, pixel for pixel what open_clip's evaluation
  transform produces (Pillow resize, centre crop, RGB, to float, normalize), for parity with the
  reference and for single images.
* `Preprocess.batch(uint8 tensors)`: the same steps written with torch ops, run on whatever device
  the pixels are on, so the indexer can resize and normalize a whole batch on the GPU. Torch's
  antialiased bicubic is not bit-identical to Pillow's, but close (about 0.5/255 per pixel).

Decode workers can call `resize_for_model` to shrink a photo to just the pixels the model will see,
and `to_uint8_tensor` to turn any Pillow mode into RGB uint8 (3, H, W).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "squash", "longest")
INTERPOLATIONS = ("bicubic", "bilinear")
_PIL_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_DEEP_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a photo becomes the model's square input."""

    image_size: int = 224  # side S of the square input the vision tower was trained on
    mean: tuple[float, float, float] = CLIP_MEAN  # per-channel mean of the training images (0..1)
    std: tuple[float, float, float] = CLIP_STD  # per-channel std of the training images (0..1)
    interpolation: str = "bicubic"  # "bicubic" | "bilinear": the resampling filter
    # "shortest": shorter side to S, centre crop (the public checkpoints); "squash": both sides to
    # S, aspect ratio ignored; "longest": longer side to S, centred, padded with fill_color.
    resize_mode: str = "shortest"
    fill_color: int = 0  # padding value (0..255) for "longest"

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if not 0 <= self.fill_color <= 255:
            raise ValueError(f"fill_color must be in 0..255, got {self.fill_color}")

    @classmethod
    def from_open_clip(cls, cfg: Mapping[str, Any]) -> PreprocessConfig:
        """From open_clip's `preprocess_cfg` (keys size, mode, mean, std, interpolation, ...)."""
        size = cfg.get("size", 224)
        if isinstance(size, Sequence):
            if len(size) != 2 or size[0] != size[1]:
                raise ValueError(f"only square inputs are supported, got size {list(size)}")
            size = size[0]
        if cfg.get("mode", "RGB") != "RGB":
            raise ValueError(f"only RGB input is supported, got mode {cfg.get('mode')!r}")
        # open_clip falls back to bicubic for "random" at inference time.
        interpolation = cfg.get("interpolation") or "bicubic"
        return cls(
            image_size=int(size),
            mean=_three(cfg.get("mean") or CLIP_MEAN),
            std=_three(cfg.get("std") or CLIP_STD),
            interpolation="bicubic" if interpolation == "random" else interpolation,
            resize_mode=cfg.get("resize_mode") or "shortest",
            fill_color=int(cfg.get("fill_color") or 0),
        )

    def to_dict(self) -> dict[str, Any]:
        """open_clip's `preprocess_cfg` layout (JSON-ready)."""
        return {
            "size": self.image_size,
            "mode": "RGB",
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "fill_color": self.fill_color,
        }


def _three(values: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    if len(values) != 3:
        raise ValueError(f"expected 3 values (RGB), got {list(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))


class Preprocess:
    """Callable preprocessing for one config: PIL path, tensor batch path and decode helpers."""

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        self.config = config or PreprocessConfig()

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def __repr__(self) -> str:
        return f"Preprocess({self.config})"

    # ---- PIL path (open_clip parity) --------------------------------------------------------

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Normalized float tensor (3, S, S) from one PIL image, exactly as open_clip evaluates.

        Like open_clip, the image is resized and cropped in its own mode and only then converted
        to RGB, so transparency is dropped rather than composited (see `to_uint8_tensor`).
        """
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"expected a PIL image, got {type(image).__name__}; use batch() for tensors"
            )
        _check_not_empty(image)
        cropped = self._crop_or_pad_pil(self._resize_pil(image))
        pixels = torch.from_numpy(np.array(cropped.convert("RGB"), dtype=np.uint8))  # (S, S, 3)
        return self._normalize(pixels.permute(2, 0, 1).unsqueeze(0))[0]  # (3, S, S)

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step, with torchvision's and open_clip's rounding."""
        size = self.config.image_size
        if self.config.resize_mode == "squash":
            return size, size
        if self.config.resize_mode == "shortest":
            short, long = min(height, width), max(height, width)
            new_long = int(size * long / short)  # torchvision truncates
            return (size, new_long) if height <= width else (new_long, size)
        ratio = max(height / size, width / size)  # "longest": open_clip rounds to nearest
        # At least one pixel: open_clip would fail on a 0-pixel side of an extreme panorama.
        return max(1, round(height / ratio)), max(1, round(width / ratio))

    def _resize_pil(self, image: Image.Image) -> Image.Image:
        height, width = self._resized_size(image.height, image.width)
        if (height, width) == (image.height, image.width):
            return image
        return image.resize((width, height), _PIL_RESAMPLE[self.config.interpolation])

    def _crop_or_pad_pil(self, image: Image.Image) -> Image.Image:
        size = self.config.image_size
        left, top, right, bottom = _padding(image.height, image.width, size)
        if left or top or right or bottom:
            bands = len(image.getbands())
            fill = self.config.fill_color if bands == 1 else (self.config.fill_color,) * bands
            palette = image.getpalette() if image.mode == "P" else None
            image = ImageOps.expand(image, border=(left, top, right, bottom), fill=fill)
            if palette is not None:
                image.putpalette(palette)
        top, left = _crop_origin(image.height, image.width, size)
        return image.crop((left, top, left + size, top + size))

    # ---- tensor path (GPU-friendly) ---------------------------------------------------------

    def batch(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Normalized float32 (B, 3, S, S) on the input's device.

        `images` is a uint8 tensor (B, 3, H, W) or a list of uint8 (3, H, W) tensors of any sizes
        (on one device). Images of equal size are resized together.
        """
        return self._normalize(self._resized(images))

    def resize_batch(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 (B, 3, S, S): `batch` before normalisation, the tensor twin of resize_for_model
        (a decoder that resizes on the GPU hands the model what Pillow's path would)."""
        return self._resized(images).round().clamp(0, 255).to(torch.uint8)

    def _resized(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Resized and cropped float32 (B, 3, S, S) of 0..255 values (see `batch`)."""
        if isinstance(images, torch.Tensor):
            _check_batch_tensor(images)
            return self._resize_crop(images)
        items = list(images)
        if not items:
            raise ValueError("empty batch: pass at least one image")
        for index, item in enumerate(items):
            _check_image_tensor(item, index)
        if len({item.device for item in items}) > 1:
            raise ValueError(
                "all images of a batch must be on one device; move them with .to(device)"
            )
        size = self.config.image_size
        out = torch.empty(len(items), 3, size, size, device=items[0].device)  # (B, 3, S, S)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(items):
            by_shape.setdefault((item.shape[1], item.shape[2]), []).append(index)
        for indices in by_shape.values():
            out[indices] = self._resize_crop(torch.stack([items[i] for i in indices]))
        return out

    def _resize_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float (B, 3, S, S) of 0..255 values, not yet normalised."""
        height, width = pixels.shape[-2:]
        new_height, new_width = self._resized_size(height, width)
        x = pixels.float()  # (B, 3, H, W), 0..255
        if (new_height, new_width) != (height, width):
            x = F.interpolate(
                x,
                size=(new_height, new_width),
                mode=self.config.interpolation,
                align_corners=False,
                antialias=True,
            )
            x = x.round().clamp(0, 255)  # Pillow stores the resized image as uint8
        return self._crop_or_pad_tensor(x)  # (B, 3, S, S)

    def _crop_or_pad_tensor(self, x: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        left, top, right, bottom = _padding(x.shape[-2], x.shape[-1], size)
        if left or top or right or bottom:
            x = F.pad(x, (left, right, top, bottom), value=float(self.config.fill_color))
        top, left = _crop_origin(x.shape[-2], x.shape[-1], size)
        return x[..., top : top + size, left : left + size]

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """0..255 values (B, 3, S, S) -> (x / 255 - mean) / std in float32, as torchvision does."""
        x = pixels.to(torch.float32).div(255)
        mean = torch.tensor(self.config.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return x.sub(mean).div(std)

    # ---- decode helpers ---------------------------------------------------------------------

    def resize_for_model(self, image: Image.Image) -> Image.Image:
        """An RGB image of exactly the pixels the model input will cover, for decode workers.

        Call it right after `Image.open` (before anything loads the pixels): JPEGs are then decoded
        at a reduced DCT scale when the model needs far fewer pixels. The result is RGB (alpha
        composited on white, see `to_rgb`) and S x S, so `batch` only has to normalize it. For
        "shortest", a photo is shrunk whole and cropped (`_shrink_and_crop`); when that would
        resample far more than the crop (panoramas) or enlarge, only the centre square is
        resampled, with Pillow.
        """
        square = self._square(image)
        if isinstance(square, Image.Image):
            return square
        return Image.fromarray(square.permute(1, 2, 0).numpy())  # (S, S, 3), no copy

    def pixels_for_model(self, image: Image.Image) -> torch.Tensor:
        """`resize_for_model`'s pixels as uint8 (3, S, S), the decode workers' form: the common
        case's tensor is not turned into a PIL image and back (two copies, ~6 % of a worker's
        time per photo). Channel-last in memory, Pillow's layout, which batching stacks with a
        plain copy (`indexer.encode`), and exactly S x S: nothing larger is kept alive."""
        square = self._square(image)
        return channel_last_pixels(square) if isinstance(square, Image.Image) else square

    def _square(self, image: Image.Image) -> Image.Image | torch.Tensor:
        """resize_for_model's S x S pixels: uint8 (3, S, S) from `_shrink_and_crop`, else RGB."""
        _check_not_empty(image)
        _draft(image, self._resized_size(image.height, image.width))
        rgb = to_rgb(image)
        size = self.config.image_size
        resample = _PIL_RESAMPLE[self.config.interpolation]
        if self.config.resize_mode != "shortest":
            return self._crop_or_pad_pil(self._resize_pil(rgb))
        height, width = self._resized_size(rgb.height, rgb.width)
        if height <= rgb.height and width <= rgb.width and max(height, width) <= 2 * size:
            return self._shrink_and_crop(rgb, (height, width))
        top, left = _crop_origin(height, width, size)
        scale_y, scale_x = rgb.height / height, rgb.width / width
        box = (left * scale_x, top * scale_y, (left + size) * scale_x, (top + size) * scale_y)
        return rgb.resize((size, size), resample, box=box)

    def _shrink_and_crop(self, rgb: Image.Image, resized: tuple[int, int]) -> torch.Tensor:
        """The common case (a photo shrunk to at most twice the crop): torch's antialiased uint8
        resize on channel-last pixels, then the centre crop: uint8 (3, S, S), channel-last in
        an exact-size copy (the crop alone would be a view keeping the whole shrunk photo).

        Deliberately not Pillow here: on a decode worker Pillow's resize of a draft-decoded
        1024x768 JPEG took 1.1 ms, a third of the photo's decode, and torch's vectorised uint8
        kernel 0.23 ms. Its pixels equal Pillow's box resize to within one level (mean 0.005).
        Decode processes run it on one torch thread (`indexer.decode_processes`).
        """
        channels_last = channel_last_pixels(rgb).unsqueeze(0)  # (1, 3, H, W)
        shrunk = F.interpolate(
            channels_last, size=resized, mode=self.config.interpolation, antialias=True
        )  # (1, 3, h, w) uint8, h and w >= S: the crop needs no padding
        square = self._crop_or_pad_tensor(shrunk)[0]  # (3, S, S) view, the tensor path's crop
        return square.permute(1, 2, 0).contiguous().permute(2, 0, 1)

    @staticmethod
    def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
        """RGB uint8 (3, H, W) from a PIL image of any mode; see the module function."""
        return to_uint8_tensor(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode; transparent pixels are composited onto white.

    16/32-bit greyscale is scaled down (65535 -> 255) instead of clipped, which would turn most
    16-bit photos white; float images are read as 0..1 when they fit, else as 0..255.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _DEEP_GREY_MODES:
        return Image.fromarray(_to_8bit(image)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"cannot convert a {image.mode!r} image to RGB: {error}") from error


def _to_8bit(image: Image.Image) -> np.ndarray:
    """(H, W) uint8 from a 16-bit, 32-bit integer or float greyscale image."""
    values = np.asarray(image).astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255.0):
        values = values / 257.0  # 16-bit range onto 8-bit (65535 / 257 = 255)
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def channel_last_pixels(image: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W) of an RGB image: a view of a writable (H, W, 3) copy, Pillow's layout."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB uint8 (3, H, W) from a PIL image of any mode (L, LA, P, RGBA, CMYK, I;16, ...)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    _check_not_empty(image)
    return channel_last_pixels(to_rgb(image)).contiguous()  # (3, H, W), channels first


def _padding(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) padding that makes both sides at least `size`, centred."""
    pad_w, pad_h = max(size - width, 0), max(size - height, 0)
    return pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2


def _crop_origin(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the centred size x size crop; Python's round() as torchvision uses it."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def _draft(image: Image.Image, needed: tuple[int, int]) -> None:
    """Let a not-yet-decoded JPEG decode at 1/2, 1/4 or 1/8 scale, keeping >= `needed` (h, w)."""
    if image.format != "JPEG" or not getattr(image, "tile", None):
        return
    height, width = needed
    image.draft(image.mode, (width, height))


def _check_not_empty(image: Image.Image) -> None:
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels (size {image.size})")


def _check_batch_tensor(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(
            f"expected a uint8 batch (B, 3, H, W), got shape {tuple(images.shape)}; "
            "for one image use image.unsqueeze(0)"
        )
    if images.shape[0] == 0:
        raise ValueError("empty batch: pass at least one image")
    _check_image_tensor(images[0], None)


def _check_image_tensor(image: torch.Tensor, index: int | None) -> None:
    where = "" if index is None else f" (image {index})"
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected a uint8 image tensor (3, H, W){where}, got {shape}")
    if image.shape[0] != 3:
        raise ValueError(
            f"expected 3 (RGB) channels{where}, got {image.shape[0]}; "
            "convert the image with coca.preprocess.to_uint8_tensor"
        )
    if image.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels (0..255){where}, got {image.dtype}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image has no pixels{where}: shape {tuple(image.shape)}")
