"""On the default model, search results and captions agree with the photos' scene graphs.

Skipped while the default model is not installed (coca/default_model/ is filled by training).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coca.checkpoint import DEFAULT_MODEL_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (DEFAULT_MODEL_DIR / "config.json").is_file(),
        reason="the default model is not trained yet (coca/default_model/config.json is missing)",
    ),
]

LIBRARY_SIZE = 150
MIN_MATCHES = 5


@pytest.fixture(scope="module")
def indexed_world(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - (engine, manifest)
    import coca
    import storage
    from coca.world import HELDOUT_SEED, read_manifest, write_library
    from indexer.encode import EncodeConfig
    from indexer.pipeline import IndexConfig, register_model, run_index
    from search_app.search import DataLayout, open_engine

    root = tmp_path_factory.mktemp("world")
    photos = write_library(root / "photos", LIBRARY_SIZE, seed=HELDOUT_SEED)
    model = coca.load("default")
    layout = DataLayout(root / "data")
    catalog = storage.open_catalog(layout.catalog_path)
    config = IndexConfig(
        photos_dir=photos,
        index_path=layout.index_path(register_model(catalog, model)),
        encode=EncodeConfig(batch_size=32),
    )
    summary = run_index(config, model, catalog)
    assert summary.indexed == LIBRARY_SIZE and summary.errors == 0
    return open_engine(root / "data", model), read_manifest(photos), photos


def _queries(manifest) -> list[tuple[str, set[str]]]:  # noqa: ANN001 - list[LibraryEntry]
    """Held-out evaluation queries with enough matching photos in this library."""
    from coca.world import HELDOUT_SEED, eval_queries, parse_query

    chosen = []
    for texts in eval_queries(HELDOUT_SEED, n_per_category=4, n_images=LIBRARY_SIZE).values():
        for text in texts:
            query = parse_query(text)
            relevant = {entry.file for entry in manifest if query.matches(entry.scene)}
            if len(relevant) >= MIN_MATCHES:
                chosen.append((text, relevant))
    return chosen


def test_search_default_model_results_match_scene_graphs(indexed_world) -> None:  # noqa: ANN001
    engine, manifest, photos = indexed_world
    queries = _queries(manifest)
    assert len(queries) >= 3
    precisions, chance = [], []
    for text, relevant in queries:
        results = engine.search_text(text, k=5).results
        found = [Path(r.path).relative_to(photos.resolve()).as_posix() for r in results]
        precisions.append(sum(f in relevant for f in found) / len(found))
        chance.append(len(relevant) / len(manifest))
    mean_precision = sum(precisions) / len(precisions)
    assert mean_precision >= 0.5, (mean_precision, list(zip(queries, precisions, strict=True)))
    assert mean_precision > 2 * sum(chance) / len(chance)


def test_search_default_model_captions_describe_the_scenes(indexed_world) -> None:  # noqa: ANN001
    from coca.world import description_matches, parse_caption

    engine, manifest, photos = indexed_world
    by_file = {entry.file: entry.scene for entry in manifest}
    consistent = 0
    results = engine.search_text("a photo", k=LIBRARY_SIZE).results
    for result in results:
        scene = by_file[Path(result.path).relative_to(photos.resolve()).as_posix()]
        description = parse_caption(result.caption or "")
        consistent += description is not None and description_matches(description, scene)
    assert consistent / len(results) >= 0.5
