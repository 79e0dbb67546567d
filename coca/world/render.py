"""Draw a scene graph as a photo-like image of any size with Pillow and NumPy.

Per image: a gradient background with texture (NumPy), sky and ground details, objects with drop
shadows, outlines and color jitter (Pillow, alpha-blended), then a box blur and sensor grain. All
randomness comes from the scene's seed, so the same scene and size give identical pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from coca.world import textures
from coca.world.scene import Scene, SceneObject
from coca.world.shapes import Part, parts_for

RGB = tuple[int, int, int]
Color = tuple[int, ...]  # RGB or RGBA (alpha-blended by ImageDraw in "RGBA" mode)
Points = list[tuple[float, float]]
Draw = ImageDraw.ImageDraw
Generator = np.random.Generator

PALETTE: dict[str, RGB] = {
    "red": (205, 35, 35),
    "orange": (242, 128, 20),
    "yellow": (245, 215, 35),
    "green": (40, 160, 60),
    "blue": (35, 75, 215),
    "purple": (135, 55, 185),
    "white": (246, 246, 246),
    "black": (24, 24, 28),
}
MATERIALS: dict[str, RGB] = {"dark": (38, 38, 44), "wood": (104, 72, 44), "glass": (200, 224, 240)}

# (sky top, sky bottom, ground top, ground bottom, sky texture, ground texture); None: no ground.
_BACKDROPS: dict[str, tuple[RGB, RGB, RGB | None, RGB | None, str, str]] = {
    "sky": ((60, 120, 205), (165, 205, 240), None, None, "smooth", "flat"),
    "grass": ((95, 150, 215), (190, 215, 235), (120, 170, 75), (50, 125, 40), "smooth", "streaks"),
    "beach": ((95, 150, 215), (195, 218, 238), (232, 212, 162), (208, 184, 134), "smooth", "sand"),
    "snow": (
        (170, 180, 198),
        (212, 217, 226),
        (238, 241, 247),
        (203, 213, 233),
        "smooth",
        "drifts",
    ),
    "night": ((6, 10, 32), (32, 38, 80), (18, 20, 30), (8, 8, 12), "flat", "smooth"),
}
_SEA = ((40, 112, 168), (70, 145, 185))
_NIGHT_GROUND = 0.84  # night scenes have a dark strip of land at the bottom
_REFERENCE_HEIGHT = 120


def _lit(color: RGB | np.ndarray, brightness: float, warmth: float) -> np.ndarray:
    tint = np.array([12.0, 4.0, -12.0], np.float32) * warmth
    return np.asarray(color, np.float32) * brightness + tint


def _ramp(top: RGB, bottom: RGB, rows: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, max(rows, 1), dtype=np.float32)[:rows, None]  # (rows, 1)
    return np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t  # (rows, 3)


def _row_colors(scene: Scene, height: int) -> tuple[np.ndarray, int]:
    """Per-row background colors (H, 3) and the first ground row."""
    sky_top, sky_bottom, ground_top, ground_bottom, _, _ = _BACKDROPS[scene.background]
    if ground_top is None:
        return _ramp(sky_top, sky_bottom, height), height
    horizon = _NIGHT_GROUND if scene.background == "night" else scene.horizon
    split = int(round(horizon * height))
    parts = [_ramp(sky_top, sky_bottom, split)]
    if scene.background == "beach":  # sea band between the horizon and the shore
        shore = min(height, split + int(round(0.14 * height)))
        parts.append(_ramp(*_SEA, shore - split))
        split = shore
    parts.append(_ramp(ground_top, ground_bottom, height - split))
    return np.concatenate(parts, axis=0), split


def _background(scene: Scene, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """An RGB image: lit vertical gradients, a sideways light ramp and region textures."""
    light = scene.lighting
    rows, ground_row = _row_colors(scene, height)
    rows = np.rint(_lit(rows, light.brightness, light.warmth)).astype(np.int16)  # (H, 3)
    tiles = textures.texture_tiles(max(1, round(4 * height / _REFERENCE_HEIGHT)))
    _, _, _, _, sky_texture, ground_texture = _BACKDROPS[scene.background]
    field = np.empty((height, width), np.int16)  # luminance offsets: texture + side light
    field[:ground_row] = textures.crop(tiles[sky_texture], ground_row, width, rng)
    field[ground_row:] = textures.crop(tiles[ground_texture], height - ground_row, width, rng)
    side = np.linspace(8, -8, width).astype(np.int16)  # brighter toward the light
    field += side if light.from_left else side[::-1]
    # Channel by channel: a broadcast over a trailing axis of 3 runs NumPy's slowest inner loop.
    channels = []
    for c in range(3):
        channel = field + rows[:, c, None]  # (H, W) int16
        np.clip(channel, 0, 255, out=channel)
        channels.append(Image.fromarray(channel.astype(np.uint8)))
    return Image.merge("RGB", channels)


def _draw_clouds(draw: Draw, scene: Scene, size: tuple[int, int], rng: Generator) -> None:
    width, height = size
    sky_bottom = 0.85 if scene.background == "sky" else scene.horizon
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, 1) * width, rng.uniform(0.05, sky_bottom * 0.8) * height
        puff = rng.uniform(0.04, 0.08) * height
        alpha = int(rng.integers(70, 140))
        for _ in range(int(rng.integers(3, 6))):
            dx, dy = rng.uniform(-2.2, 2.2) * puff, rng.uniform(-0.5, 0.5) * puff
            rx, ry = puff * rng.uniform(1.0, 1.8), puff * rng.uniform(0.6, 1.0)
            box = (cx + dx - rx, cy + dy - ry, cx + dx + rx, cy + dy + ry)
            draw.ellipse(box, fill=(255, 255, 255, alpha))


def _draw_details(draw: Draw, scene: Scene, size: tuple[int, int], rng: Generator) -> None:
    """Clouds, hills, waves, stars and snowflakes: clutter that is not an object."""
    width, height = size
    kind = scene.background
    if kind in ("sky", "grass", "beach"):
        _draw_clouds(draw, scene, size, rng)
    if kind == "grass":  # far hills along the horizon
        base = scene.horizon * height
        xs = np.linspace(-0.1, 1.1, 7) * width
        tops = base - rng.uniform(0.02, 0.08, size=7) * height
        points = [(float(x), float(y)) for x, y in zip(xs, tops, strict=True)]
        draw.polygon([*points, (xs[-1], base + 2), (xs[0], base + 2)], fill=(70, 120, 60, 120))
    if kind == "beach":
        top = scene.horizon * height
        for _ in range(int(rng.integers(2, 5))):
            y = top + rng.uniform(0.02, 0.13) * height
            x0 = rng.uniform(0, 0.7) * width
            draw.line([(x0, y), (x0 + rng.uniform(0.1, 0.3) * width, y)], fill=(235, 245, 250, 110))
    if kind in ("night", "snow"):
        count = int(rng.integers(15, 60))
        xs, ys = rng.uniform(0, width, count), rng.uniform(0, height, count)
        if kind == "night":
            ys *= _NIGHT_GROUND * 0.95
        color = (255, 250, 225, 210) if kind == "night" else (255, 255, 255, 170)
        draw.point([(float(x), float(y)) for x, y in zip(xs, ys, strict=True)], fill=color)


def _object_colors(obj: SceneObject, scene: Scene, rng: Generator) -> dict[str, Color]:
    light = scene.lighting
    base = np.asarray(PALETTE[obj.color], np.float32) * rng.normal(1.0, 0.035, 3)
    exposure = 0.92 if scene.background == "night" else 0.93 + 0.07 * light.brightness
    main = np.clip(_lit(base, exposure, 0.5 * light.warmth), 0, 255)
    outline = (118, 118, 124) if obj.color == "black" else tuple(int(v) for v in main * 0.45)
    colors = {
        "main": tuple(int(v) for v in main),
        "shade": tuple(int(v) for v in main * 0.72),
        "tint": tuple(int(v) for v in main + (255 - main) * 0.5),
        "highlight": (255, 255, 255, 90),
        "outline": outline,
    }
    colors.update(MATERIALS)
    return colors


def _place(
    part: Part, obj: SceneObject, center: tuple[float, float], radius: float, light_left: bool
) -> Points:
    """Local part coordinates -> pixel coordinates (mirror, rotate, scale, translate)."""
    angle = math.radians(obj.rotation)
    cos, sin = math.cos(angle) * radius, math.sin(angle) * radius
    flip = -1.0 if obj.mirrored else 1.0
    if part.role == "highlight":  # highlights sit on the lit side, whatever the mirroring
        flip = 1.0 if light_left else -1.0
    cx, cy = center
    return [(cx + flip * x * cos - y * sin, cy + flip * x * sin + y * cos) for x, y in part.points]


def _draw_part(
    draw: Draw,
    points: Points,
    part: Part,
    radius: float,
    fill: Color,
    outline: Color | None,
    width: int,
) -> None:
    if part.is_disc:
        (x, y), r = points[0], part.radius * radius
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=outline, width=width)
    else:
        draw.polygon(points, fill=fill, outline=outline, width=width)


@dataclass(frozen=True)
class _Frame:
    """Where normalized scene coordinates land on the (padded) canvas."""

    offset: float  # canvas pixels before the visible image starts (the blur's padding / 2)
    width: int
    height: int
    unit: float  # pixels per unit of object radius: min(H, 0.75 W)


def _draw_object(draw: Draw, obj: SceneObject, scene: Scene, frame: _Frame, rng: Generator) -> None:
    """Drop shadow, then each part with an outline."""
    radius = obj.radius * frame.unit
    center = (frame.offset + obj.x * frame.width, frame.offset + obj.y * frame.height)
    colors = _object_colors(obj, scene, rng)
    light_left = scene.lighting.from_left
    parts = parts_for(obj.kind, obj.style)
    shift = (0.14 if light_left else -0.14) * radius, 0.12 * radius
    shadow_center = (center[0] + shift[0], center[1] + shift[1])
    for part in parts:
        if part.role != "highlight":
            points = _place(part, obj, shadow_center, radius, light_left)
            _draw_part(draw, points, part, radius, (0, 0, 0, 70), None, 0)
    line = max(1, round(radius * 0.07))
    for part in parts:
        points = _place(part, obj, center, radius, light_left)
        edge = None if part.role == "highlight" else colors["outline"]
        _draw_part(draw, points, part, radius, colors[part.role], edge, line)


def render_scene(scene: Scene, width: int, height: int, seed: int | None = None) -> Image.Image:
    """The scene as an RGB image of `width` x `height`; `seed` overrides `scene.seed` (noise)."""
    if width < 8 or height < 8:
        raise ValueError(f"render size {width}x{height} is too small; use at least 8x8 pixels")
    rng = np.random.default_rng(scene.seed if seed is None else seed)
    unit = min(height, 0.75 * width)  # object radii are fractions of this length
    blur_px = unit / _REFERENCE_HEIGHT * rng.uniform(0.4, 1.2)  # a slight, size-relative blur
    levels = int(min(3, max(0, round(math.log2(max(blur_px, 1.0)) + rng.uniform(-0.3, 0.5)))))
    pad = (1 << levels) - 1  # the box blur eats `pad` pixels, so draw on a larger canvas
    canvas = _background(scene, width + pad, height + pad, rng)
    draw = ImageDraw.Draw(canvas, "RGBA")
    _draw_details(draw, scene, (width + pad, height + pad), rng)
    frame = _Frame(pad / 2, width, height, unit)
    for obj in sorted(scene.objects, key=lambda o: o.y):
        _draw_object(draw, obj, scene, frame, rng)
    grain = textures.grain_tiles()[int(rng.integers(len(textures.GRAIN_SIGMAS)))]
    pixels = textures.finish(np.asarray(canvas), levels, textures.crop(grain, height, width, rng))
    return Image.fromarray(pixels)
