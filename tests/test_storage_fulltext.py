"""Caption full-text search: ranking, filters, hostile input."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from storage import (
    Catalog,
    ImageFilter,
    ImageMeta,
    ImageResult,
    IndexedFile,
    NewCaption,
    open_catalog,
)
from storage.fulltext import fts5_expression, query_tokens

CAPTIONS = [
    "a red car parked on a street",
    "a dog running on the beach",
    "two dogs and a red ball on the beach",
    "a café in Paris at night",
    "a lighthouse by the sea",
]


@pytest.fixture
def indexed(tmp_path: Path) -> tuple[Catalog, int, list[int]]:
    catalog = open_catalog(tmp_path / "c.db")
    model_id = catalog.get_or_create_model("m", "c", 2)
    files = [
        IndexedFile(
            ImageMeta(
                "/p",
                f"{'city' if i in (0, 3) else 'nature'}/{i}.jpg",
                1,
                1,
                f"h{i}",
                taken_at=datetime(2020 + i, 1, 1),
            ),
            np.array([1.0, 0.0], np.float32),
            NewCaption(text),
        )
        for i, text in enumerate(CAPTIONS)
    ]
    return catalog, model_id, catalog.store_indexed(model_id, files)


@pytest.mark.parametrize(
    "query",
    [
        '"',
        "AND (",
        "OR",
        "NOT",
        "*",
        "dog*",
        "NEAR(a b)",
        "col:text",
        "^start",
        "'; DROP TABLE x;--",
        "(((",
        '"unbalanced',
        "a AND OR b",
        "-",
        "+",
        "{}",
        "",
        "   ",
        "\x00",
        "🙂",
        "%_%",
        "\\",
    ],
)
def test_storage_fulltext_hostile_queries_never_raise(indexed, query: str) -> None:
    catalog, model_id, _ = indexed
    hits = catalog.search_captions(query, model_id)
    assert isinstance(hits, list)


def test_storage_fulltext_tokens_are_quoted() -> None:
    assert query_tokens('Red "car" AND (') == ["red", "car", "and"]
    assert fts5_expression(["red", "and"], match_all=True) == '"red" AND "and"'


def test_storage_fulltext_ranks_matches_best_first(indexed) -> None:
    catalog, model_id, ids = indexed
    hits = catalog.search_captions("red beach", model_id)
    assert [h.image_id for h in hits] == [ids[2]]  # the only caption with both words
    any_hits = catalog.search_captions("red beach", model_id, match_all=False)
    assert any_hits[0].image_id == ids[2] and {h.image_id for h in any_hits} == {
        ids[0],
        ids[1],
        ids[2],
    }
    assert all(a.score >= b.score for a, b in zip(any_hits, any_hits[1:], strict=False))


def test_storage_fulltext_stems_and_folds_case_and_accents(indexed) -> None:
    catalog, model_id, ids = indexed
    assert {h.image_id for h in catalog.search_captions("DOGS", model_id)} == {ids[1], ids[2]}
    assert [h.image_id for h in catalog.search_captions("cafe", model_id)] == [ids[3]]


def test_storage_fulltext_respects_filters_model_and_limit(indexed) -> None:
    catalog, model_id, ids = indexed
    city = ImageFilter(folder="city")
    assert [h.image_id for h in catalog.search_captions("red", model_id, spec=city)] == [ids[0]]
    recent = ImageFilter(date_from=datetime(2022, 1, 1))
    assert [h.image_id for h in catalog.search_captions("red", model_id, spec=recent)] == [ids[2]]
    assert len(catalog.search_captions("a", model_id, limit=2)) == 2
    other = catalog.get_or_create_model("other", "c", 2)
    assert catalog.search_captions("red", other) == []


def test_storage_fulltext_follows_caption_replacement(indexed) -> None:
    catalog, model_id, ids = indexed
    catalog.store_results(
        model_id,
        [ImageResult(ids[4], np.array([0, 1], np.float32), NewCaption("a windmill in a field"))],
    )
    assert catalog.search_captions("lighthouse", model_id) == []
    assert [h.image_id for h in catalog.search_captions("windmill", model_id)] == [ids[4]]


def test_storage_fulltext_like_fallback_for_other_backends(indexed, monkeypatch) -> None:
    catalog, model_id, ids = indexed
    monkeypatch.setattr("storage.fulltext.uses_fts5", lambda session: False)
    assert [h.image_id for h in catalog.search_captions("RED beach", model_id)] == [ids[2]]
    any_hits = catalog.search_captions("red beach", model_id, match_all=False)
    assert any_hits[0].image_id == ids[2] and any_hits[0].score == 2
    assert catalog.search_captions('100% "_', model_id) == []
