"""Fact sets for scoring captions against scene graphs (used by `coca.metrics`).

A caption is turned into facts, each a hashable tuple:
- ("object", color, kind, count)   per noun phrase: "two red cars" -> ("object", "red", "car", 2)
- ("background", background)        "on the beach" -> ("background", "beach")
- ("relation", (color, kind), relation, (color, kind))   "a red car left of a blue boat"
- ("size", color, kind, size)       "a small red car" -> ("size", "red", "car", "small")

A scene has *required* facts, which every complete caption states (one object fact per (color, kind)
group with its exact count, and the background), and *true* facts: the required ones plus every
relation that holds between all members of two groups (in both directions) and the size of every
group whose members share it. Precision counts stated facts that are true; recall counts required
facts that are stated. Relations and sizes can only cost precision: no caption can state them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from coca.world.captions import description_of, group_relations
from coca.world.language import SceneDescription
from coca.world.scene import Scene

Fact = tuple


@dataclass(frozen=True)
class SceneFacts:
    required: frozenset[Fact]
    true: frozenset[Fact]


def description_facts(description: SceneDescription) -> frozenset[Fact]:
    """The facts a parsed caption states (terms without a color state facts that are never true)."""
    terms = description.objects
    facts: set[Fact] = {("object", t.color, t.kind, t.count) for t in terms}
    facts.update(("size", t.color, t.kind, t.size) for t in terms if t.size is not None)
    for rel in description.relations:
        subject, obj = terms[rel.subject], terms[rel.object]
        facts.add(("relation", (subject.color, subject.kind), rel.relation, (obj.color, obj.kind)))
    if description.background is not None:
        facts.add(("background", description.background))
    return frozenset(facts)


def scene_facts(scene: Scene) -> SceneFacts:
    """Required and true facts of a scene graph (see the module docstring)."""
    full = description_of(scene)
    terms = full.objects
    required: set[Fact] = {("object", t.color, t.kind, t.count) for t in terms}
    required.add(("background", scene.background))
    true = set(required)
    true.update(("size", t.color, t.kind, t.size) for t in terms if t.size is not None)
    for rel in group_relations(scene):  # already holds both directions (left_of and right_of)
        subject, obj = terms[rel.subject], terms[rel.object]
        true.add(("relation", (subject.color, subject.kind), rel.relation, (obj.color, obj.kind)))
    return SceneFacts(frozenset(required), frozenset(true))
