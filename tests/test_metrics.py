"""Evaluation metrics on hand-made cases with known answers."""

import math

import numpy as np
import pytest

from coca.metrics import (
    bleu4,
    caption_attribute_scores,
    cider_d,
    precision_at_k,
    ranked_relevance,
    recall_at_1,
    recall_at_k,
)
from coca.world import Scene, SceneObject

T, F = True, False


def test_precision_at_k_perfect_wrong_and_partial() -> None:
    assert precision_at_k([[T] * 10, [T] * 12], 10).value == 1.0
    assert precision_at_k([[F] * 10], 10).value == 0.0
    score = precision_at_k([[T, F, T, F], [F, F, F, T]], 4)
    assert score.per_query == (0.5, 0.25) and score.value == pytest.approx(0.375)
    assert precision_at_k([[T, T]], 4).value == 0.5  # too few results count as misses
    with pytest.raises(ValueError, match="k must be"):
        precision_at_k([[T]], 0)


def test_recall_at_k_and_at_1() -> None:
    assert recall_at_1([[T, F], [F, T], [T, T]]).value == pytest.approx(2 / 3)
    assert recall_at_k([[F, T], [F, F]], 2).per_query == (1.0, 0.0)


def test_ranked_relevance_orders_by_score_with_stable_ties() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [0.0, 0.0, 0.0, 1.0]])
    relevant = np.array([[F, T, F, T], [T, F, F, F]])
    assert ranked_relevance(scores, relevant, 3) == [[T, F, T], [F, T, F]]


def test_caption_attribute_scores_perfect_wrong_and_unparsed() -> None:
    scene = Scene(
        "beach",
        (
            SceneObject("car", "red", "small", 0.2, 0.5),
            SceneObject("boat", "blue", "large", 0.7, 0.5),
        ),
    )
    perfect = caption_attribute_scores(["a red car left of a blue boat on the beach"], [scene])
    assert (perfect.precision, perfect.recall, perfect.f1) == (1.0, 1.0, 1.0)
    # required: red car, blue boat, beach; stated: green car (wrong), blue boat, beach, bad relation
    wrong = caption_attribute_scores(["a green car right of a blue boat on the beach"], [scene])
    assert wrong.precision == pytest.approx(2 / 4) and wrong.recall == pytest.approx(2 / 3)
    assert wrong.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    unparsed = caption_attribute_scores(
        ["a purple elephant", "a red car on the beach"], [scene] * 2
    )
    assert unparsed.parsed_fraction == 0.5
    assert unparsed.precision == 1.0 and unparsed.recall == pytest.approx(2 / 6)


def test_bleu4_identical_captions_score_one() -> None:
    captions = ["a red car on the beach", "two blue stars above a green tree"]
    score = bleu4(captions, [[c] for c in captions])
    assert score.bleu == pytest.approx(1.0) and score.brevity_penalty == 1.0


def test_bleu4_known_example() -> None:
    # p1 = 5/6 (one "the" clipped), p2 = 3/5, p3 = 2/4, p4 = 1/3, equal lengths
    score = bleu4(["the cat sat on the mat"], [["the cat sat on a mat", "a dog"]])
    assert score.precisions == pytest.approx((5 / 6, 3 / 5, 2 / 4, 1 / 3))
    assert score.bleu == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)


def test_bleu4_brevity_penalty_and_no_match() -> None:
    short = bleu4(["a red car on"], [["a red car on the beach"]])
    assert short.brevity_penalty == pytest.approx(math.exp(1 - 6 / 4))
    assert short.bleu == pytest.approx(math.exp(1 - 6 / 4))  # all n-gram precisions are 1
    assert bleu4(["w x y z"], [["a b c d"]]).bleu == 0.0


def test_cider_d_identical_captions_score_ten() -> None:
    refs = ["a red car on the beach", "two blue stars in the snow", "a green tree at night"]
    score = cider_d(refs, [[r] for r in refs])
    assert score.per_image == pytest.approx((10.0, 10.0, 10.0))


def test_cider_d_hand_computed_case() -> None:
    # idf(x) = idf(y) = log 2 - log 1; "z" is in no reference: idf = log 2 - log(max(1, 0)).
    # image 1: unigram cosine 1, no bigrams..4-grams -> 10 * (1 + 0 + 0 + 0) / 4 = 2.5; image 2: 0.
    score = cider_d(["x", "z"], [["x"], ["y"]])
    assert score.per_image == pytest.approx((2.5, 0.0)) and score.score == pytest.approx(1.25)


def test_cider_d_length_penalty_and_clipping() -> None:
    refs = [["a red car"], ["a blue boat"], ["a green tree"]]
    longer = cider_d(["a red car car car", "a blue boat", "a green tree"], refs).per_image[0]
    assert 0 < longer < 10.0 * math.exp(-4 / 72) + 1e-9  # gap of 2 tokens, sigma 6


def test_metrics_reject_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="reference"):
        bleu4(["a"], [])
    with pytest.raises(ValueError, match="captions for"):
        caption_attribute_scores(["a red car"], [])
