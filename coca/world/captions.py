"""Captions from a small grammar: every object group, at most one relation, and the background.

A caption names each (color, kind) group once with its count ("two red cars"), may add the size when
the whole group shares it, may state one relation that holds between every member of two groups, and
always says the background, either as an opening ("a beach with ...") or after the objects ("... on
the beach").
"""

from __future__ import annotations

import numpy as np

from coca.world.language import (
    BACKGROUND_PHRASES,
    EXISTENTIALS,
    NUMBER_WORDS,
    PLURALS,
    PREFIXES,
    RELATION_PHRASES,
    SCENE_OPENINGS,
    SIZE_PHRASES,
    ObjectTerm,
    RelationTerm,
    SceneDescription,
    article_for,
)
from coca.world.scene import RELATIONS, Scene, relations_between

RELATION_PROBABILITY = 0.8  # how often a caption states a relation when one holds
SIZE_PROBABILITY = 0.4  # how often a noun phrase says its (shared) size
NUMBER_ONE_PROBABILITY = 0.1  # "one red car" instead of "a red car"


def group_relations(scene: Scene) -> list[RelationTerm]:
    """Relations between (color, kind) groups holding for every pair of members (group indices)."""
    members = list(scene.groups().values())
    found = []
    for a, group_a in enumerate(members):
        for b, group_b in enumerate(members):
            if a == b:
                continue
            for relation in RELATIONS:
                pairs = (
                    relation in relations_between(scene.objects[i], scene.objects[j])
                    for i in group_a
                    for j in group_b
                )
                if all(pairs):
                    found.append(RelationTerm(a, relation, b))
    return found


def description_of(scene: Scene) -> SceneDescription:
    """The complete description of a scene: every group, every group relation, the background."""
    terms = []
    for (color, kind), indices in scene.groups().items():
        sizes = {scene.objects[i].size for i in indices}
        size = sizes.pop() if len(sizes) == 1 else None
        count = len(indices)
        terms.append(ObjectTerm(kind=kind, color=color, count=count, exact=count > 1, size=size))
    return SceneDescription(tuple(terms), tuple(group_relations(scene)), scene.background)


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def noun_phrase(term: ObjectTerm, rng: np.random.Generator) -> str:
    """'two red cars', 'a small blue star', 'an orange boat'."""
    words = []
    if term.size is not None and rng.random() < SIZE_PROBABILITY:
        words.append(_pick(rng, SIZE_PHRASES[term.size]))
    if term.color is not None:
        words.append(term.color)
    words.append(PLURALS[term.kind] if term.count > 1 else term.kind)
    if term.count > 1 or rng.random() < NUMBER_ONE_PROBABILITY:
        determiner = NUMBER_WORDS[term.count]
    else:
        determiner = article_for(words[0])
    return " ".join([determiner, *words])


def _join(clauses: list[str]) -> str:
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + " and " + clauses[-1]


def _body(description: SceneDescription, rng: np.random.Generator) -> tuple[str, bool]:
    """The objects part of a caption, and whether its first noun phrase is plural."""
    terms = description.objects
    order = [int(i) for i in rng.permutation(len(terms))]
    if description.relations and rng.random() < RELATION_PROBABILITY:
        relation = description.relations[int(rng.integers(len(description.relations)))]
        said = _pick(rng, RELATION_PHRASES[relation.relation])
        first = terms[relation.subject]
        clause = f"{noun_phrase(first, rng)} {said} {noun_phrase(terms[relation.object], rng)}"
        rest = [i for i in order if i not in (relation.subject, relation.object)]
        return _join([clause, *(noun_phrase(terms[i], rng) for i in rest)]), first.count > 1
    clauses = [noun_phrase(terms[i], rng) for i in order]
    return _join(clauses), terms[order[0]].count > 1


def write_caption(scene: Scene, rng: np.random.Generator) -> str:
    """One caption of `scene`, drawn from the grammar with `rng`."""
    description = description_of(scene)
    body, plural = _body(description, rng)
    background = _pick(rng, BACKGROUND_PHRASES[scene.background])
    style = int(rng.integers(4))
    if style == 0:
        return f"{body} {background}"
    if style == 1:
        return f"{_pick(rng, PREFIXES)} {body} {background}"
    if style == 2:
        return f"{_pick(rng, SCENE_OPENINGS[scene.background])} {body}"
    return f"{EXISTENTIALS[1] if plural else EXISTENTIALS[0]} {body} {background}"


def captions_for(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """`n` captions of `scene`, distinct where the grammar allows (it may not for tiny scenes)."""
    if scene.objects == ():
        raise ValueError("cannot caption a scene without objects; sample scenes with sample_scene")
    captions: list[str] = []
    for _ in range(8 * n):
        caption = write_caption(scene, rng)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == n:
            return captions
    distinct = len(captions)  # the grammar ran out of distinct sentences: repeat them in turn
    return [captions[i % distinct] for i in range(n)]
