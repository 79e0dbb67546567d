"""Partial descriptions of a scene, for the contrastive side of training: "a red car", "two cars",
"a yellow circle left of a green square on the beach".

Search queries name one or two things, while captions describe the whole picture. A text tower
trained only on whole captions ranks images by how completely a short query describes them, not by
whether it is true of them. So half of the contrastive texts are short true statements about the
scene, written with the caption grammar's own phrase tables; each is parsed back and checked
against the scene graph (`coca.world.description_matches`) before use. The caption decoder still
learns from whole captions only.
"""

from __future__ import annotations

import numpy as np

from coca.world.captions import description_of, noun_phrase
from coca.world.language import (
    BACKGROUND_PHRASES,
    PREFIXES,
    RELATION_PHRASES,
    ObjectTerm,
    SceneDescription,
)
from coca.world.parse import parse_description
from coca.world.queries import description_matches
from coca.world.scene import Scene

RELATION_SHARE = 0.4  # of partial texts stating a relation, when the scene has one
DROP_COLOR = 0.3  # "a car" instead of "a red car"
ADD_BACKGROUND = 0.4  # "... on the beach"
ADD_PREFIX = 0.15  # "a photo of ..."
_TRIES = 8


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _colorless(term: ObjectTerm, scene: Scene) -> ObjectTerm:
    """The term without its color; its count becomes that of the kind in the whole scene."""
    count = sum(obj.kind == term.kind for obj in scene.objects)
    return ObjectTerm(kind=term.kind, count=count, exact=count > 1)


def _term(term: ObjectTerm, scene: Scene, rng: np.random.Generator) -> str:
    if rng.random() < DROP_COLOR:
        term = _colorless(term, scene)
    return noun_phrase(term, rng)


def _draft(description: SceneDescription, scene: Scene, rng: np.random.Generator) -> str:
    terms = description.objects
    if description.relations and rng.random() < RELATION_SHARE:
        relation = description.relations[int(rng.integers(len(description.relations)))]
        said = _pick(rng, RELATION_PHRASES[relation.relation])
        subject, obj = terms[relation.subject], terms[relation.object]
        text = f"{_term(subject, scene, rng)} {said} {_term(obj, scene, rng)}"
    else:
        text = _term(terms[int(rng.integers(len(terms)))], scene, rng)
    if rng.random() < ADD_BACKGROUND:
        text = f"{text} {_pick(rng, BACKGROUND_PHRASES[scene.background])}"
    if rng.random() < ADD_PREFIX:
        text = f"{_pick(rng, PREFIXES)} {text}"
    return text


def is_true_of(text: str, scene: Scene) -> bool:
    """Whether `text` parses with the grammar and the scene graph satisfies it."""
    description = parse_description(text)
    return description is not None and description_matches(description, scene)


def partial_captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """`n` short true statements about `scene` (repeats allowed for tiny scenes)."""
    description = description_of(scene)
    texts: list[str] = []
    for _ in range(n * _TRIES):
        text = _draft(description, scene, rng)
        # Dropping a color can make a relation false ("a car left of a boat" when another car
        # is not): check every draft against the scene graph.
        if text not in texts and is_true_of(text, scene):
            texts.append(text)
        if len(texts) == n:
            return texts
    fallback = noun_phrase(description.objects[0], rng)  # always true: a group with its count
    while len(texts) < n:
        texts.append(texts[len(texts) % len(texts)] if texts else fallback)
    return texts
