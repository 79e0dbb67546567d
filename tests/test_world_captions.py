"""The caption grammar: round trip through the parser, vocabulary, hand-checked parses."""

import numpy as np

from coca.world import (
    ObjectTerm,
    RelationTerm,
    Scene,
    SceneObject,
    captions_for,
    description_facts,
    description_matches,
    parse_caption,
    scene_facts,
    scenes,
    vocabulary,
)
from coca.world.language import MAX_CAPTION_TOKENS
from coca.world.parse import tokenize


def test_captions_round_trip_through_the_parser() -> None:
    rng = np.random.default_rng(0)
    for scene in scenes(split_seed=21, count=2500):
        for caption in captions_for(scene, rng, 2):
            description = parse_caption(caption)
            assert description is not None, caption
            facts, truth = description_facts(description), scene_facts(scene)
            assert truth.required <= facts, (caption, truth.required - facts)  # complete
            assert facts <= truth.true, (caption, facts - truth.true)  # and true
            assert description_matches(description, scene), caption


def test_captions_use_only_vocabulary_words() -> None:
    words = set(vocabulary())
    rng = np.random.default_rng(1)
    seen: set[str] = set()
    for scene in scenes(split_seed=22, count=600):
        for caption in captions_for(scene, rng, 3):
            seen.update(tokenize(caption))
    assert seen <= words
    assert len(seen) > 0.9 * len(words)  # the grammar actually uses its vocabulary


def test_captions_fit_the_token_budget() -> None:
    rng = np.random.default_rng(3)
    longest = max(
        len(tokenize(caption))
        for scene in scenes(split_seed=25, count=1500)
        for caption in captions_for(scene, rng, 3)
    )
    assert 15 < longest <= MAX_CAPTION_TOKENS


def test_captions_for_gives_distinct_captions() -> None:
    rng = np.random.default_rng(2)
    scene = scenes(split_seed=23, count=1)[0]
    captions = captions_for(scene, rng, 5)
    assert len(captions) == 5 and len(set(captions)) == 5


def test_captions_for_is_deterministic_per_rng_seed() -> None:
    scene = scenes(split_seed=24, count=1)[0]
    first = captions_for(scene, np.random.default_rng(9), 4)
    assert first == captions_for(scene, np.random.default_rng(9), 4)


def test_parse_caption_reads_counts_relations_and_background() -> None:
    description = parse_caption("Two blue stars above a green tree in the snow.")
    assert description is not None
    assert description.objects == (
        ObjectTerm("star", "blue", 2, exact=True),
        ObjectTerm("tree", "green", 1, exact=False),
    )
    assert description.relations == (RelationTerm(0, "above", 1),)
    assert description.background == "snow"


def test_parse_caption_reads_openings_lists_and_sizes() -> None:
    description = parse_caption(
        "a beach with a small red car, an orange boat and three white stars"
    )
    assert description is not None
    assert description.background == "beach"
    assert [t.kind for t in description.objects] == ["car", "boat", "star"]
    assert description.objects[0].size == "small" and description.objects[2].count == 3


def test_parse_caption_rejects_text_outside_the_grammar() -> None:
    for text in ("", "a purple elephant", "red car red car", "a red car and", "at night"):
        assert parse_caption(text) is None, text


def test_description_of_two_red_cars_left_of_a_tree() -> None:
    cars = (
        SceneObject("car", "red", "small", 0.2, 0.5),
        SceneObject("car", "red", "large", 0.25, 0.8),
    )
    scene = Scene("beach", (*cars, SceneObject("tree", "green", "large", 0.75, 0.6)))
    truth = scene_facts(scene)
    assert ("object", "red", "car", 2) in truth.required
    assert ("relation", ("red", "car"), "left_of", ("green", "tree")) in truth.true
    assert ("relation", ("green", "tree"), "right_of", ("red", "car")) in truth.true
    assert ("size", "red", "car", "small") not in truth.true  # the group's sizes differ
