"""The renderer: determinism, any output size, recognisable colors."""

import math

import numpy as np
import pytest

from coca.world import COLORS, PALETTE, Lighting, Scene, SceneObject, render_scene, scene_for_seed
from coca.world.scene import BACKGROUNDS, FORBIDDEN_COLORS, ROTATION_JITTER
from coca.world.shapes import SHAPES


def test_render_is_deterministic() -> None:
    scene = scene_for_seed(3)
    first = np.asarray(render_scene(scene, 160, 120))
    render_scene(scene_for_seed(4), 160, 120)  # no hidden state carried between renders
    assert np.array_equal(first, np.asarray(render_scene(scene, 160, 120)))


def test_render_seed_changes_noise_not_layout() -> None:
    scene = scene_for_seed(3)
    a = np.asarray(render_scene(scene, 160, 120), dtype=np.int16)
    b = np.asarray(render_scene(scene, 160, 120, seed=999), dtype=np.int16)
    assert not np.array_equal(a, b)
    assert np.abs(a - b).mean() < 25  # same scene, different grain and clouds


@pytest.mark.parametrize("size", [(64, 48), (160, 120), (224, 224), (1024, 768), (90, 200)])
def test_render_any_size(size: tuple[int, int]) -> None:
    image = render_scene(scene_for_seed(8), *size)
    assert image.size == size and image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels.std() > 5  # not a flat color


def test_shapes_stay_within_their_radius() -> None:
    """Layout margins assume an object's box is its radius; allow 10% for rotated corners."""
    for (kind, style), parts in SHAPES.items():
        turn = ROTATION_JITTER.get(kind, 8.0)
        for degrees in (-turn, -turn / 2, 0, turn / 2, turn):
            cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
            for part in parts:
                for x, y in part.points:
                    rx, ry = x * cos - y * sin, x * sin + y * cos
                    reach = max(abs(rx), abs(ry)) + part.radius
                    assert reach <= 1.1, (kind, style, degrees, part.role, reach)


def test_render_rejects_tiny_sizes() -> None:
    with pytest.raises(ValueError, match="too small"):
        render_scene(scene_for_seed(1), 4, 4)


def _nearest_palette_color(pixel: np.ndarray) -> str:
    distances = {name: np.linalg.norm(pixel - np.asarray(rgb)) for name, rgb in PALETTE.items()}
    return min(distances, key=distances.get)


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_render_object_colors_stay_recognisable(background: str) -> None:
    for color in COLORS:
        if color in FORBIDDEN_COLORS[background]:
            continue
        for brightness in (0.85, 1.15):
            square = SceneObject("square", color, "large", 0.5, 0.55)
            scene = Scene(background, (square,), Lighting(brightness, warmth=1.0), seed=7)
            pixels = np.asarray(render_scene(scene, 160, 120), dtype=np.float32)
            center = pixels[62:70, 76:84].reshape(-1, 3).mean(axis=0)
            assert _nearest_palette_color(center) == color, (background, color, center)
