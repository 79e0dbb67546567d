"""coca.evaluate: metric plumbing on hand-made embeddings, and a full run on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coca.evaluate import (
    EvalConfig,
    distinct_references,
    evaluate,
    format_report,
    image_to_text_recall,
    query_relevance,
    text_to_image_precision,
)
from coca.generate import DecodingConfig
from coca.recipe import build_model
from coca.world import parse_query, scenes


def one_hot(indices: list[int], size: int) -> np.ndarray:
    return np.eye(size, dtype=np.float32)[indices]


def test_text_to_image_precision_perfect_and_wrong_rankings() -> None:
    # 2 queries over 12 images; query 0 matches images 0..9, query 1 matches images 10..11.
    relevant = np.zeros((2, 12), dtype=bool)
    relevant[0, :10] = True
    relevant[1, 10:] = True
    images = np.zeros((12, 2), dtype=np.float32)
    images[:10, 0] = 1.0
    images[10:, 1] = 1.0
    perfect = text_to_image_precision(one_hot([0, 1], 2), images, relevant, k=10)
    # query 1 can only find 2 relevant images: P@10 = 0.2 at best; query 0 gets 1.0
    assert perfect == pytest.approx((1.0 + 0.2) / 2)
    swapped = text_to_image_precision(one_hot([1, 0], 2), images, relevant, k=10)
    # query 0 now ranks images 10, 11 first (irrelevant) then 8 of its own: 0.8; query 1 ranks
    # images 0..9 (all irrelevant to it) first: 0.0
    assert swapped == pytest.approx((0.8 + 0.0) / 2)
    k1 = text_to_image_precision(one_hot([1, 0], 2), images, relevant, k=1)
    assert k1 == 0.0


def test_image_to_text_recall_counts_identical_sentences_as_hits() -> None:
    references = [["a red car", "a red car on the beach"], ["a blue star"], ["a red car"]]
    texts, owns = distinct_references(references)
    assert texts == ["a blue star", "a red car", "a red car on the beach"]
    assert owns.tolist() == [[False, True, True], [True, False, False], [False, True, False]]
    text_features = np.eye(3, dtype=np.float32)
    perfect = one_hot([2, 0, 1], 3)  # each image's best text is its own
    assert image_to_text_recall(perfect, text_features, owns) == 1.0
    wrong = one_hot([0, 1, 0], 3)  # every image's best text belongs to another image
    assert image_to_text_recall(wrong, text_features, owns) == 0.0
    half = one_hot([1, 1, 1], 3)  # "a red car": right for images 0 and 2
    assert image_to_text_recall(half, text_features, owns) == pytest.approx(2 / 3)


def test_query_relevance_uses_the_scene_graph() -> None:
    held_out = scenes(123, 40)
    relevant = query_relevance(["a red car", "two blue stars"], held_out)
    assert relevant.shape == (2, 40)
    for q, text in enumerate(["a red car", "two blue stars"]):
        assert relevant[q].tolist() == [parse_query(text).matches(s) for s in held_out]
    expected = [any(o.kind == "car" and o.color == "red" for o in s.objects) for s in held_out]
    assert relevant[0].tolist() == expected


def test_evaluate_runs_end_to_end_on_a_tiny_model() -> None:
    torch.manual_seed(0)
    model = build_model("coca_tiny").eval()
    config = EvalConfig(
        count=24,
        seed=77,
        width=64,
        height=48,
        queries_per_category=3,
        min_matches=2,
        batch_size=8,
        decoding=DecodingConfig(generation_type="greedy", seq_len=8, min_seq_len=2),
        workers=1,
    )
    report = evaluate(model, config)
    assert report.images == 24
    assert {s.category for s in report.text_to_image} <= {"attribute", "relational", "count"}
    assert report.text_to_image and all(0 <= s.precision <= 1 for s in report.text_to_image)
    assert 0 <= report.image_to_text_recall_at_1 <= 1
    assert report.caption.captions == 24 and 0 <= report.caption.f1 <= 1
    assert len(report.examples) == 5
    json.dumps(report.to_dict())  # --json must serialise
    table = format_report(report)
    assert "caption attribute F1" in table and "text->image P@10" in table
    assert not model.training
