"""Search queries over the world: parse them, decide which scenes they match, and build eval sets.

Matching semantics (documented because precision@k depends on it):
- a noun phrase selects the objects of its kind (and color, size when said); "a"/"an" needs at least
  one such object, a number word needs exactly that many ("two cars": exactly two cars, any colors);
- a relation "A rel B" holds when, with A's and B's selected objects, every A (if A has a number
  word, otherwise some A) is clearly `rel` every B (number word) or some B (article);
- a background phrase must equal the scene's background.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from coca.world.language import (
    BACKGROUND_PHRASES,
    NUMBER_WORDS,
    PLURALS,
    ObjectTerm,
    SceneDescription,
    article_for,
)
from coca.world.parse import parse_description
from coca.world.scene import Scene, SceneObject, iter_scenes, relations_between

CATEGORIES: tuple[str, ...] = ("attribute", "relational", "count")
HELDOUT_SEED = 9_100_003  # the evaluation split; training must use other split seeds
TRAIN_SEED = 0


class QueryError(ValueError):
    """A query outside the world's grammar."""


def _selects(term: ObjectTerm, obj: SceneObject) -> bool:
    return (
        obj.kind == term.kind
        and (term.color is None or obj.color == term.color)
        and (term.size is None or obj.size == term.size)
    )


def _selected(term: ObjectTerm, scene: Scene) -> list[SceneObject]:
    return [obj for obj in scene.objects if _selects(term, obj)]


def _count_ok(term: ObjectTerm, found: int) -> bool:
    return found == term.count if term.exact else found >= term.count


def description_matches(description: SceneDescription, scene: Scene) -> bool:
    """Whether `scene` satisfies everything `description` says (see the module docstring)."""
    if description.background is not None and description.background != scene.background:
        return False
    chosen = [_selected(term, scene) for term in description.objects]
    if not all(
        _count_ok(t, len(found)) for t, found in zip(description.objects, chosen, strict=True)
    ):
        return False
    for rel in description.relations:
        subjects, objects = chosen[rel.subject], chosen[rel.object]
        outer = all if description.objects[rel.subject].exact else any
        inner = all if description.objects[rel.object].exact else any
        if not outer(
            inner(a is not b and rel.relation in relations_between(a, b) for b in objects)
            for a in subjects
        ):
            return False
    return True


@dataclass(frozen=True)
class Query:
    """A parsed query; `matches(scene)` is the ground truth for retrieval metrics."""

    text: str
    description: SceneDescription

    def matches(self, scene: Scene) -> bool:
        return description_matches(self.description, scene)


def parse_query(text: str) -> Query:
    """Parse a query such as 'two blue stars' or 'a yellow circle left of a green square'."""
    description = parse_description(text)
    if description is None:
        raise QueryError(
            f"cannot parse query {text!r}: use phrases like 'a red car', 'two blue stars', "
            "'a tree on the beach' or 'a yellow circle left of a green square' "
            "(see coca.world.vocabulary() for the words)"
        )
    return Query(text, description)


def _np(kind: str, color: str | None = None, count: int = 0) -> str:
    """Canonical noun phrase: count 0 means the article ('a red car')."""
    words = ([color] if color else []) + [PLURALS[kind] if count > 1 else kind]
    determiner = NUMBER_WORDS[count] if count else article_for(words[0])
    return " ".join([determiner, *words])


def _attribute_candidates(scene: Scene) -> dict[str, set[str]]:
    where = BACKGROUND_PHRASES[scene.background][0]
    found: dict[str, set[str]] = defaultdict(set)
    for obj in scene.objects:
        found["color_kind"].add(_np(obj.kind, obj.color))
        found["kind_background"].add(f"{_np(obj.kind)} {where}")
        found["color_kind_background"].add(f"{_np(obj.kind, obj.color)} {where}")
        found["size_color_kind"].add(f"a {obj.size} {obj.color} {obj.kind}")
    return found


def _count_candidates(scene: Scene) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for (color, kind), members in scene.groups().items():
        if len(members) > 1:
            found["count_color_kind"].add(_np(kind, color, len(members)))
    kinds = [obj.kind for obj in scene.objects]
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            found["count_kind"].add(_np(kind, None, kinds.count(kind)))
    return found


_CANONICAL_RELATION = {
    "left_of": "left of",
    "right_of": "right of",
    "above": "above",
    "below": "below",
}


def _relational_candidates(scene: Scene) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for rel in scene.relations:
        a, b = scene.objects[rel.subject], scene.objects[rel.object]
        if (a.kind, a.color) == (b.kind, b.color):
            continue  # captions relate different groups only; "a red car left of a red car" is odd
        said = _CANONICAL_RELATION[rel.relation]
        if a.kind != b.kind:
            found["kind_kind"].add(f"{_np(a.kind)} {said} {_np(b.kind)}")
        found["color_kind_kind"].add(f"{_np(a.kind, a.color)} {said} {_np(b.kind)}")
        found["kind_color_kind"].add(f"{_np(a.kind)} {said} {_np(b.kind, b.color)}")
        found["color_kind_color_kind"].add(f"{_np(a.kind, a.color)} {said} {_np(b.kind, b.color)}")
    return found


_GENERATORS = {
    "attribute": _attribute_candidates,
    "relational": _relational_candidates,
    "count": _count_candidates,
}


def _candidate_support(scenes: list[Scene], category: str) -> dict[str, dict[str, int]]:
    """template -> query -> number of scenes that produced it (= the scenes it matches)."""
    support: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for scene in scenes:
        for template, queries in _GENERATORS[category](scene).items():
            for query in queries:
                support[template][query] += 1
    return support


def _choose(
    support: dict[str, dict[str, int]], n: int, min_matches: int, rng: np.random.Generator
) -> list[str]:
    """Up to `n` queries with enough support, taken round-robin over templates (specific first)."""
    pools = []
    for template in sorted(support, key=lambda t: -t.count("_")):
        eligible = sorted(q for q, count in support[template].items() if count >= min_matches)
        pools.append([eligible[i] for i in rng.permutation(len(eligible))])
    chosen: list[str] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop())
    return chosen


def eval_queries(
    seed: int = HELDOUT_SEED, n_per_category: int = 30, n_images: int = 2000, min_matches: int = 10
) -> dict[str, list[str]]:
    """Queries for text->image evaluation on the split `scenes(seed, n_images)`.

    Candidates come from the held-out scenes themselves and are kept only when at least
    `min_matches` scenes match them, so precision@10 can reach 1.0. Categories: attribute,
    relational, count. Each candidate is produced by exactly the scenes it matches, so counting
    producers counts matches.
    """
    held_out = list(iter_scenes(seed, n_images))
    rng = np.random.default_rng(seed)
    return {
        category: _choose(_candidate_support(held_out, category), n_per_category, min_matches, rng)
        for category in CATEGORIES
    }
