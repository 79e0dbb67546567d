"""Queries: parsing, matching semantics, and held-out evaluation query sets."""

import pytest

from coca.world import (
    CATEGORIES,
    QueryError,
    Scene,
    SceneObject,
    eval_queries,
    parse_query,
    scenes,
)

RED_CAR = SceneObject("car", "red", "small", 0.2, 0.3)
RED_CAR_2 = SceneObject("car", "red", "large", 0.25, 0.75)
BLUE_CAR = SceneObject("car", "blue", "large", 0.8, 0.3)
STAR = SceneObject("star", "yellow", "small", 0.8, 0.75)
TWO_RED_ONE_BLUE = Scene("beach", (RED_CAR, RED_CAR_2, BLUE_CAR))


def test_query_attribute_needs_at_least_one_match() -> None:
    assert parse_query("a red car").matches(TWO_RED_ONE_BLUE)
    assert parse_query("a blue car on the beach").matches(TWO_RED_ONE_BLUE)
    assert parse_query("a car on the beach").matches(TWO_RED_ONE_BLUE)
    assert not parse_query("a car in the snow").matches(TWO_RED_ONE_BLUE)
    assert not parse_query("a green car").matches(TWO_RED_ONE_BLUE)
    assert parse_query("a small red car").matches(TWO_RED_ONE_BLUE)
    assert not parse_query("a small blue car").matches(TWO_RED_ONE_BLUE)


def test_query_number_words_are_exact() -> None:
    assert parse_query("two red cars").matches(TWO_RED_ONE_BLUE)
    assert parse_query("three cars").matches(TWO_RED_ONE_BLUE)
    assert not parse_query("two cars").matches(TWO_RED_ONE_BLUE)
    assert not parse_query("one red car").matches(TWO_RED_ONE_BLUE)
    assert parse_query("one blue car").matches(TWO_RED_ONE_BLUE)


def test_query_relations() -> None:
    scene = Scene("snow", (RED_CAR, STAR))
    assert parse_query("a red car left of a yellow star").matches(scene)
    assert parse_query("a red car above a star").matches(scene)
    assert parse_query("a star to the right of a car in the snow").matches(scene)
    assert not parse_query("a red car right of a yellow star").matches(scene)
    assert not parse_query("a red car below a star").matches(scene)
    # with a number word every member must hold the relation: only one red car is above the star
    three = Scene("snow", (RED_CAR, RED_CAR_2, STAR))
    assert parse_query("a red car above a star").matches(three)
    assert not parse_query("two red cars above a star").matches(three)
    assert parse_query("two red cars left of a star").matches(three)


def test_parse_query_rejects_unknown_words() -> None:
    with pytest.raises(QueryError, match="cannot parse query"):
        parse_query("a sunset over the mountains")


def test_eval_queries_are_matched_by_enough_held_out_images() -> None:
    queries = eval_queries(seed=123, n_per_category=8, n_images=400, min_matches=5)
    held_out = scenes(123, 400)
    assert set(queries) == set(CATEGORIES)
    for category, texts in queries.items():
        assert len(texts) == 8 and len(set(texts)) == 8, category
        for text in texts:
            matched = sum(parse_query(text).matches(scene) for scene in held_out)
            assert matched >= 5, (category, text, matched)
    relational = [parse_query(t).description for t in queries["relational"]]
    assert all(len(d.relations) == 1 for d in relational)
    counts = [parse_query(t).description for t in queries["count"]]
    assert all(d.objects[0].exact and d.objects[0].count >= 2 for d in counts)
    assert queries == eval_queries(seed=123, n_per_category=8, n_images=400, min_matches=5)
