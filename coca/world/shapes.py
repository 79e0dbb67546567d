"""Object silhouettes as parts in a local frame: unit radius, origin at the center, y pointing down.

Each part names a color role instead of a color, so one drawing serves every object color; the
renderer maps roles to colors (main, shade, tint) or to fixed materials (wheels, wood, glass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Point = tuple[float, float]


@dataclass(frozen=True)
class Part:
    """A polygon (`points`) or a disc (`points[0]` center, `radius`), filled with a color role."""

    role: str
    points: tuple[Point, ...]
    radius: float = 0.0  # > 0 marks a disc

    @property
    def is_disc(self) -> bool:
        return self.radius > 0


def _box(x0: float, y0: float, x1: float, y1: float, role: str) -> Part:
    return Part(role, ((x0, y0), (x1, y0), (x1, y1), (x0, y1)))


def _star_points(outer: float, inner: float) -> tuple[Point, ...]:
    points = []
    for i in range(10):
        angle = -math.pi / 2 + i * math.pi / 5
        r = outer if i % 2 == 0 else inner
        points.append((r * math.cos(angle), r * math.sin(angle)))
    return tuple(points)


_CIRCLE = (Part("main", ((0.0, 0.0),), 0.9), Part("highlight", ((-0.35, -0.35),), 0.22))
_SQUARE = (_box(-0.78, -0.78, 0.78, 0.78, "main"),)
_TRIANGLE = (Part("main", ((0.0, -1.0), (0.93, 0.62), (-0.93, 0.62))),)
_STAR = (Part("main", _star_points(1.0, 0.42)),)
_HOUSE = (
    _box(-0.72, -0.12, 0.72, 0.85, "main"),
    Part("shade", ((-0.95, -0.08), (0.0, -0.92), (0.95, -0.08))),
    _box(-0.42, 0.35, -0.12, 0.85, "dark"),
    _box(0.22, 0.08, 0.52, 0.38, "glass"),
)
_HOUSE_WIDE = (
    _box(-0.85, -0.02, 0.85, 0.8, "main"),
    Part("shade", ((-1.0, 0.02), (-0.55, -0.7), (0.55, -0.7), (1.0, 0.02))),
    _box(-0.15, 0.32, 0.15, 0.8, "dark"),
    _box(-0.65, 0.15, -0.35, 0.45, "glass"),
    _box(0.35, 0.15, 0.65, 0.45, "glass"),
)
_TREE_ROUND = (
    _box(-0.12, 0.1, 0.12, 0.95, "wood"),
    Part("main", ((-0.36, -0.05),), 0.45),
    Part("main", ((0.36, -0.05),), 0.45),
    Part("main", ((0.0, -0.4),), 0.55),
)
_TREE_PINE = (
    _box(-0.1, 0.55, 0.1, 0.97, "wood"),
    Part("main", ((0.0, -0.3), (0.8, 0.6), (-0.8, 0.6))),
    Part("main", ((0.0, -0.97), (0.6, -0.05), (-0.6, -0.05))),
)
_CAR = (
    Part("main", ((-0.62, 0.02), (-0.4, -0.45), (0.35, -0.45), (0.62, 0.02))),
    Part("main", ((-1.0, 0.0), (0.92, 0.0), (1.0, 0.18), (1.0, 0.52), (-1.0, 0.52))),
    Part("glass", ((-0.48, -0.04), (-0.33, -0.36), (0.27, -0.36), (0.47, -0.04))),
    Part("dark", ((-0.55, 0.52),), 0.24),
    Part("dark", ((0.55, 0.52),), 0.24),
)
_BOAT = (
    _box(-0.04, -0.95, 0.04, 0.32, "wood"),
    Part("tint", ((0.1, -0.9), (0.1, 0.22), (0.82, 0.22))),
    Part("tint", ((-0.1, -0.7), (-0.1, 0.22), (-0.62, 0.22))),
    Part("main", ((-1.0, 0.3), (1.0, 0.3), (0.7, 0.75), (-0.7, 0.75))),
)

# (kind, style) -> parts; kinds with one drawing ignore the style.
SHAPES: dict[tuple[str, int], tuple[Part, ...]] = {
    ("circle", 0): _CIRCLE,
    ("square", 0): _SQUARE,
    ("triangle", 0): _TRIANGLE,
    ("star", 0): _STAR,
    ("house", 0): _HOUSE,
    ("house", 1): _HOUSE_WIDE,
    ("tree", 0): _TREE_ROUND,
    ("tree", 1): _TREE_PINE,
    ("car", 0): _CAR,
    ("boat", 0): _BOAT,
}


def parts_for(kind: str, style: int) -> tuple[Part, ...]:
    """The drawing of `kind`; unknown styles fall back to style 0."""
    return SHAPES.get((kind, style)) or SHAPES[(kind, 0)]
