"""Cheap pixel-level realism: texture and grain tiles (made once per process) and a fast box blur.

Per-image work is only cropping precomputed tiles at a random offset and adding them, so rendering
stays in the low milliseconds; the tiles are made from a fixed seed, so pixels stay deterministic.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

_TILE = 256  # texture tile side at the reference scale (120 px tall images)
_GRAIN_SHAPE = (512, 704)  # grain is per pixel, so its tile does not scale with the image
GRAIN_SIGMAS = (2.0, 3.5, 5.5)
_TEXTURE_SEED = 20240611


def _smooth(noise: np.ndarray, radius_x: float, radius_y: float) -> np.ndarray:
    """Periodic Gaussian low-pass of square noise (FFT, so tiles wrap seamlessly), unit std."""
    side = noise.shape[0]
    freq = np.fft.fftfreq(side)[:, None], np.fft.rfftfreq(side)[None, :]  # (S, 1), (1, S/2+1)
    gain = np.exp(-2 * np.pi**2 * ((freq[0] * radius_y) ** 2 + (freq[1] * radius_x) ** 2))
    out = np.fft.irfft2(np.fft.rfft2(noise) * gain, s=noise.shape).astype(np.float32)
    out = out - out.mean()
    return out / max(float(out.std()), 1e-6)


@lru_cache(maxsize=1)
def _base_textures() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(_TEXTURE_SEED)

    def noise() -> np.ndarray:
        return rng.standard_normal((_TILE, _TILE)).astype(np.float32)

    return {
        "smooth": 5.0 * _smooth(noise(), 14, 14),  # haze in skies
        "streaks": 9.0 * _smooth(noise(), 0.6, 3.0) + 4.0 * _smooth(noise(), 6, 6),  # grass blades
        "sand": 7.0 * _smooth(noise(), 0.5, 0.5) + 4.0 * _smooth(noise(), 8, 3),
        "drifts": 7.0 * _smooth(noise(), 18, 6) + 2.0 * _smooth(noise(), 0.5, 0.5),
        "ripples": 8.0 * _smooth(noise(), 10, 0.8),  # sea
        "flat": np.zeros((_TILE, _TILE), np.float32),
    }


@lru_cache(maxsize=8)
def texture_tiles(scale_bucket: int) -> dict[str, np.ndarray]:
    """Texture tiles (int16, H x W) scaled so features keep their size relative to the image."""
    scale = scale_bucket / 4
    side = max(32, round(_TILE * scale))
    tiles = {}
    for name, tile in _base_textures().items():
        image = Image.fromarray(tile, mode="F").resize((side, side), Image.Resampling.BILINEAR)
        tiles[name] = np.rint(np.asarray(image)).astype(np.int16)
    return tiles


@lru_cache(maxsize=1)
def grain_tiles() -> tuple[np.ndarray, ...]:
    """Per-pixel color grain (int8, H x W x 3), one tile per strength in GRAIN_SIGMAS."""
    rng = np.random.default_rng(_TEXTURE_SEED + 1)
    unit = rng.standard_normal((*_GRAIN_SHAPE, 3)).astype(np.float32)
    return tuple(np.clip(np.rint(unit * s), -127, 127).astype(np.int8) for s in GRAIN_SIGMAS)


def crop(tile: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width, ...) window of `tile` at a random offset, wrapping small tiles."""
    tile_h, tile_w = tile.shape[:2]
    if height > tile_h or width > tile_w:
        reps = (-(-height // tile_h) + 1, -(-width // tile_w) + 1) + (1,) * (tile.ndim - 2)
        tile = np.tile(tile, reps)
        tile_h, tile_w = tile.shape[:2]
    top = int(rng.integers(tile_h - height + 1))
    left = int(rng.integers(tile_w - width + 1))
    return tile[top : top + height, left : left + width]


def box_blur(pixels: np.ndarray, levels: int) -> np.ndarray:
    """Box blur of width 2**levels by repeated 2-tap sums with doubling strides.

    (H + p, W + p, 3) uint8 -> (H, W, 3) uint16 summed values, where p = 2**levels - 1; the caller
    shifts right by 2 * levels. Two slices and adds per level keep it about 1 ms at 640x480.
    """
    out = pixels.astype(np.uint16)
    for level in range(levels):
        step = 1 << level
        out = out[:-step] + out[step:]  # (h - step, w, 3)
        out = out[:, :-step] + out[:, step:]  # (h - step, w - step, 3)
    return out


def finish(pixels: np.ndarray, levels: int, grain: np.ndarray) -> np.ndarray:
    """Blur then add grain: (H + p, W + p, 3) uint8 -> (H, W, 3) uint8."""
    summed = box_blur(pixels, levels)
    if levels:
        summed >>= 2 * levels
    noisy = summed.view(np.int16) + grain  # values <= 255, so the int16 view is exact
    np.clip(noisy, 0, 255, out=noisy)
    return noisy.astype(np.uint8)
