"""The scene graph of the procedural photo world: what is in a picture, where, and how it is lit.

Positions are normalized (x as a fraction of the width, y of the height, y pointing down) so one
scene renders at any output size. Object radii are fractions of a reference length, min(H, 0.75 W),
so shapes stay round on any aspect ratio; the layout rules below are checked on the canonical 4:3
frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "house", "tree", "car", "boat")
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: tuple[str, ...] = ("sky", "grass", "beach", "snow", "night")
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left_of": "right_of",
    "right_of": "left_of",
    "above": "below",
    "below": "above",
}

# Object colors that would vanish on a background are never sampled there (white on snow, ...).
FORBIDDEN_COLORS: dict[str, frozenset[str]] = {
    "sky": frozenset({"blue"}),
    "grass": frozenset({"green"}),
    "beach": frozenset(),
    "snow": frozenset({"white"}),
    "night": frozenset({"black"}),
}

SIZE_RADIUS: dict[str, float] = {"small": 0.085, "large": 0.145}  # in units of min(H, 0.75 W)
EDGE_MARGIN = 0.05  # an object's extent stays this far (fraction of W or H) from the border
CLEAR_SHIFT = 0.18  # a relation holds when the centers differ by more than this along its axis
ALIGNED_SHIFT = (
    0.08  # below this the pair is "level" on that axis; between the two is never sampled
)
MIN_SEPARATION = 0.9  # along the separating axis, center distance >= this * (sum of radii)
CANONICAL_ASPECT = 4 / 3  # W / H used by the layout checks
OBJECT_COUNT_WEIGHTS = (0.25, 0.4, 0.35)  # P(1 object), P(2), P(3)
DUPLICATE_PROBABILITY = (
    0.4  # a later object copies an earlier one's kind and color ("two red cars")
)
MAX_LAYOUT_TRIES = 60
# Degrees of drawing rotation: shapes may tilt a lot, things that stand on the ground only a little.
ROTATION_JITTER: dict[str, float] = {"square": 20.0, "triangle": 20.0, "star": 20.0}


@dataclass(frozen=True)
class SceneObject:
    """One object: what it is and where its center lies (normalized coordinates)."""

    kind: str
    color: str
    size: str
    x: float
    y: float
    rotation: float = 0.0  # degrees of drawing jitter; never changes the object's identity
    mirrored: bool = False  # cars and boats face left or right
    style: int = 0  # a drawing variant (e.g. round or pine tree)

    @property
    def radius(self) -> float:
        return SIZE_RADIUS[self.size]


@dataclass(frozen=True)
class Lighting:
    """Global light: brightness factor, warm (+) or cool (-) tint, and the side it comes from."""

    brightness: float = 1.0
    warmth: float = 0.0
    from_left: bool = True


@dataclass(frozen=True)
class Relation:
    """`objects[subject]` is `relation` `objects[object]` (e.g. 0 left_of 1)."""

    subject: int
    relation: str
    object: int


@dataclass(frozen=True)
class Scene:
    """A whole picture: background kind, objects, lighting, and the seed of its pixel noise."""

    background: str
    objects: tuple[SceneObject, ...]
    lighting: Lighting = Lighting()
    horizon: float = 0.4  # y of the horizon for ground scenes
    seed: int = 0  # drives texture, clouds, grain and blur when rendering

    @property
    def relations(self) -> tuple[Relation, ...]:
        """Every clear pairwise relation, both directions (a left_of b and b right_of a)."""
        found = []
        for i, a in enumerate(self.objects):
            for j, b in enumerate(self.objects):
                if i != j:
                    found.extend(Relation(i, name, j) for name in relations_between(a, b))
        return tuple(found)

    def groups(self) -> dict[tuple[str, str], tuple[int, ...]]:
        """Object indices grouped by (color, kind), in first-appearance order."""
        groups: dict[tuple[str, str], list[int]] = {}
        for index, obj in enumerate(self.objects):
            groups.setdefault((obj.color, obj.kind), []).append(index)
        return {key: tuple(indices) for key, indices in groups.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the manifest's scene graph), relations included for readers."""
        data = asdict(self)
        data["objects"] = [asdict(obj) for obj in self.objects]
        data["relations"] = [asdict(rel) for rel in self.relations]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """Inverse of `to_dict` (derived `relations` are ignored)."""
        return cls(
            background=data["background"],
            objects=tuple(SceneObject(**obj) for obj in data["objects"]),
            lighting=Lighting(**data.get("lighting", {})),
            horizon=float(data.get("horizon", 0.4)),
            seed=int(data.get("seed", 0)),
        )


def relations_between(a: SceneObject, b: SceneObject) -> tuple[str, ...]:
    """The relations of `a` with respect to `b` that are clear (shift above CLEAR_SHIFT)."""
    found: list[str] = []
    if b.x - a.x > CLEAR_SHIFT:
        found.append("left_of")
    elif a.x - b.x > CLEAR_SHIFT:
        found.append("right_of")
    if b.y - a.y > CLEAR_SHIFT:
        found.append("above")
    elif a.y - b.y > CLEAR_SHIFT:
        found.append("below")
    return tuple(found)


def _placement_ok(a: SceneObject, b: SceneObject) -> bool:
    """No heavy overlap, and no shift in the ambiguous band between 'level' and 'clearly apart'."""
    dx, dy = abs(a.x - b.x), abs(a.y - b.y)
    if any(ALIGNED_SHIFT < d <= CLEAR_SHIFT for d in (dx, dy)):
        return False
    reach = MIN_SEPARATION * (a.radius + b.radius)  # in units of H on the canonical frame
    apart_x = dx > CLEAR_SHIFT and dx * CANONICAL_ASPECT >= reach
    apart_y = dy > CLEAR_SHIFT and dy >= reach
    return apart_x or apart_y


def _sample_position(rng: np.random.Generator, size: str) -> tuple[float, float]:
    radius = SIZE_RADIUS[size]
    half_w = radius * 0.75  # the radius is in units of H = 0.75 W on the canonical frame
    low_x, low_y = EDGE_MARGIN + half_w, EDGE_MARGIN + radius
    return float(rng.uniform(low_x, 1 - low_x)), float(rng.uniform(low_y, 1 - low_y))


def _sample_identity(
    rng: np.random.Generator, background: str, placed: list[SceneObject]
) -> tuple[str, str]:
    if placed and rng.random() < DUPLICATE_PROBABILITY:
        model = placed[int(rng.integers(len(placed)))]
        return model.kind, model.color
    colors = [c for c in COLORS if c not in FORBIDDEN_COLORS[background]]
    return KINDS[int(rng.integers(len(KINDS)))], colors[int(rng.integers(len(colors)))]


def _sample_object(
    rng: np.random.Generator, background: str, placed: list[SceneObject]
) -> SceneObject:
    kind, color = _sample_identity(rng, background, placed)
    size = SIZES[int(rng.integers(len(SIZES)))]
    x, y = _sample_position(rng, size)
    max_turn = ROTATION_JITTER.get(kind, 8.0)
    return SceneObject(
        kind=kind,
        color=color,
        size=size,
        x=round(x, 4),
        y=round(y, 4),
        rotation=round(float(rng.uniform(-max_turn, max_turn)), 2),
        mirrored=bool(rng.random() < 0.5),
        style=int(rng.integers(2)),
    )


def _sample_layout(rng: np.random.Generator, background: str, count: int) -> list[SceneObject]:
    placed: list[SceneObject] = []
    for _ in range(MAX_LAYOUT_TRIES):
        if len(placed) == count:
            break
        candidate = _sample_object(rng, background, placed)
        if all(_placement_ok(candidate, other) for other in placed):
            placed.append(candidate)
    return placed  # rarely fewer than asked when the frame is crowded; still a valid scene


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one random scene; every random choice comes from `rng`, so the scene is reproducible."""
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    count = int(rng.choice(len(OBJECT_COUNT_WEIGHTS), p=OBJECT_COUNT_WEIGHTS)) + 1
    objects = _sample_layout(rng, background, count)
    lighting = Lighting(
        brightness=round(float(rng.uniform(0.85, 1.15)), 3),
        warmth=round(float(rng.uniform(-1.0, 1.0)), 3),
        from_left=bool(rng.random() < 0.5),
    )
    return Scene(
        background=background,
        objects=tuple(objects),
        lighting=lighting,
        horizon=round(float(rng.uniform(0.3, 0.45)), 4),
        seed=int(rng.integers(2**31)),
    )


def scene_for_seed(seed: int) -> Scene:
    """The scene of an integer seed: same seed, same graph (and via `Scene.seed`, same pixels)."""
    return sample_scene(np.random.default_rng(seed))


def item_seed(split_seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for item `index` of a split, so splits never share scenes."""
    state = np.random.SeedSequence([split_seed, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def iter_scenes(split_seed: int, count: int, start: int = 0) -> Iterator[Scene]:
    """Scenes `start .. start+count-1` of the split named by `split_seed`."""
    for index in range(start, start + count):
        yield scene_for_seed(item_seed(split_seed, index))


def scenes(split_seed: int, count: int, start: int = 0) -> list[Scene]:
    """A list of `count` scenes of a split (e.g. `scenes(HELDOUT_SEED, 2000)` for evaluation)."""
    return list(iter_scenes(split_seed, count, start))
