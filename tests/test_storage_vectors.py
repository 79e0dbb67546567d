"""The FAISS vector index: parity with brute force, id updates, the approximate switch, files."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from storage import (
    Catalog,
    ImageMeta,
    ImageResult,
    IndexedFile,
    IndexFileError,
    VectorIndex,
    VectorIndexConfig,
    open_catalog,
    open_or_rebuild,
)
from storage.vector_files import sidecar_path

DIM = 16


def _unit(rows: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(rows: int, seed: int, dim: int = DIM, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = _unit(clusters, seed + 1, dim)
    x = centers[rng.integers(0, clusters, rows)] + 0.3 * rng.standard_normal((rows, dim)) / dim**0.5
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(ids: np.ndarray, x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]  # (Q, k)
    return ids[order]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def test_storage_vectors_flat_search_matches_numpy() -> None:
    ids = np.arange(500, dtype=np.int64) * 3 + 7
    x, q = _unit(500, 0), _unit(20, 1)
    index = VectorIndex.from_vectors(ids, x * 5.0, model_id=1)  # un-normalised input is normalised
    hits = index.search(q, 10)
    assert index.kind == "flat"
    assert np.array_equal(hits.ids, _brute_force(ids, x, q, 10))
    assert np.allclose(hits.scores, np.sort(q @ x.T, axis=1)[:, ::-1][:, :10], atol=1e-5)


def test_storage_vectors_add_replaces_and_remove_by_id() -> None:
    index = VectorIndex(DIM, model_id=1)
    x = _unit(100, 0)
    index.add(np.arange(100), x)
    index.add([5], -x[5:6])  # same id, new vector: replaced, not duplicated
    assert index.ntotal == 100
    assert index.search(-x[5:6], 1).ids[0, 0] == 5
    assert index.search(x[5:6], 1).ids[0, 0] != 5
    assert index.remove([5, 6, 1000]) == 2 and index.ntotal == 98
    assert not {5, 6} & set(index.ids().tolist())
    with pytest.raises(ValueError, match="dimension"):
        index.add([1], np.zeros((1, DIM + 1)))
    with pytest.raises(ValueError, match="duplicate"):
        index.add([1, 1], x[:2])


def test_storage_vectors_search_pads_when_fewer_than_k() -> None:
    index = VectorIndex.from_vectors(np.array([4, 9]), _unit(2, 0), model_id=1)
    hits = index.search(_unit(1, 1), 5)
    assert sorted(hits.ids[0, :2].tolist()) == [4, 9] and hits.ids[0, 2:].tolist() == [-1] * 3
    assert np.isneginf(hits.scores[0, 2:]).all() and len(hits.row(0)) == 2
    assert VectorIndex(DIM, 1).search(_unit(1, 1), 3).row(0) == []


def test_storage_vectors_filtered_search_returns_only_allowed_ids() -> None:
    ids = np.arange(1000, dtype=np.int64)
    x, q = _unit(1000, 0), _unit(5, 1)
    allowed = ids[ids % 7 == 0]
    index = VectorIndex.from_vectors(ids, x, model_id=1)
    hits = index.search(q, 5, allowed_ids=allowed)
    assert np.array_equal(hits.ids, _brute_force(allowed, x[allowed], q, 5))
    assert index.search(q, 5, allowed_ids=np.array([], np.int64)).row(0) == []


def test_storage_vectors_switch_to_ivf_past_threshold_keeps_recall() -> None:
    config = VectorIndexConfig(approx_threshold=2000, nprobe=8)
    x, q = _clustered(6000, 0), _clustered(100, 99)
    ids = np.arange(6000, dtype=np.int64) + 1
    index = VectorIndex(DIM, model_id=1, config=config)
    for start in range(0, 6000, 1000):  # grows through the threshold, as the indexer adds batches
        index.add(ids[start : start + 1000], x[start : start + 1000])
    assert index.kind == "ivf_sq8" and index.ntotal == 6000
    truth = _brute_force(ids, x, q, 10)
    assert _recall(index.search(q, 10).ids, truth) >= 0.9
    # A narrow filter still fills k from the allowed ids (more lists probed).
    allowed = ids[::50]
    filtered = index.search(q, 10, allowed_ids=allowed)
    assert set(filtered.ids.ravel()) <= set(allowed.tolist())
    assert _recall(filtered.ids, _brute_force(allowed, x[allowed - 1], q, 10)) >= 0.9
    # Shrinking well below the threshold goes back to exact search.
    index.remove(ids[:5500])
    assert index.kind == "flat" and np.array_equal(index.ids(), ids[5500:])
    remaining = index.search(q, 10).ids
    assert _recall(remaining, _brute_force(ids[5500:], x[5500:], q, 10)) >= 0.98  # SQ8 round trip


def test_storage_vectors_from_vectors_picks_ivf_for_large_sets_and_saves_it(tmp_path) -> None:
    config = VectorIndexConfig(approx_threshold=1000, nprobe=16)
    x = _clustered(3000, 0)
    index = VectorIndex.from_vectors(np.arange(3000), x, model_id=2, config=config)
    assert index.kind == "ivf_sq8" and index.trained_rows == 3000
    assert index.serialized_size() < x.nbytes  # 8-bit codes: a quarter of float32 plus lists
    index.save(tmp_path / "i.faiss", "fp")
    loaded = VectorIndex.load(tmp_path / "i.faiss", config)
    assert loaded.kind == "ivf_sq8" and loaded.ntotal == 3000 and loaded.fingerprint == "fp"
    q = _clustered(20, 5)
    assert np.array_equal(loaded.search(q, 5).ids, index.search(q, 5).ids)


def test_storage_vectors_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "i.faiss"
    index = VectorIndex.from_vectors(np.arange(10), _unit(10, 0), model_id=1)
    first = index.save(path, "a")
    index.add([10], _unit(1, 3))
    second = index.save(path, "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.faiss", "i.faiss.json"]
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["ntotal"] == 11 and meta["fingerprint"] == "b" and meta["crc32"] == second.crc32
    assert first.crc32 != second.crc32 and first.ntotal == 10


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sidecar", "bad_sidecar"])
def test_storage_vectors_load_rejects_damaged_files(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "i.faiss"
    VectorIndex.from_vectors(np.arange(50), _unit(50, 0), model_id=1).save(path, "x")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "no_sidecar":
        sidecar_path(path).unlink()
    else:
        sidecar_path(path).write_text("{not json")
    with pytest.raises(IndexFileError):
        VectorIndex.load(path)


def test_storage_vectors_concurrent_search_and_writes_are_safe() -> None:
    index = VectorIndex.from_vectors(np.arange(2000), _unit(2000, 0), model_id=1)
    q = _unit(4, 1)
    errors: list[BaseException] = []

    def search() -> None:
        try:
            for _ in range(200):
                assert index.search(q, 5).ids.shape == (4, 5)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    for step in range(50):
        index.add([10_000 + step], _unit(1, step))
        index.remove([step])
    for thread in threads:
        thread.join()
    assert errors == [] and index.ntotal == 2000


# -- open_or_rebuild against a catalog --------------------------------------------------------


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Catalog, int, Path]:
    catalog = open_catalog(tmp_path / "c.db")
    model_id = catalog.get_or_create_model("m", "c", DIM)
    x = _unit(60, 0)
    files = [IndexedFile(ImageMeta("/r", f"{i}.jpg", 1, 1, f"h{i}"), x[i]) for i in range(60)]
    catalog.store_indexed(model_id, files)
    return catalog, model_id, tmp_path / "index.faiss"


def test_storage_vectors_open_or_rebuild_builds_then_loads(filled, caplog) -> None:
    catalog, model_id, path = filled
    with caplog.at_level(logging.INFO, logger="storage.vectors"):
        built = open_or_rebuild(catalog, model_id, path)
        assert "no index file yet" in caplog.text
        caplog.clear()
        loaded = open_or_rebuild(catalog, model_id, path)
        assert "rebuilding" not in caplog.text
    assert built.ntotal == loaded.ntotal == 60
    ids, vectors = catalog.load_embeddings(model_id)
    assert np.array_equal(loaded.search(vectors[:3], 1).ids[:, 0], ids[:3])


@pytest.mark.parametrize("damage", ["deleted", "truncated", "corrupt", "stale_rows", "other_model"])
def test_storage_vectors_open_or_rebuild_recovers(filled, caplog, damage: str) -> None:
    catalog, model_id, path = filled
    open_or_rebuild(catalog, model_id, path)
    if damage == "deleted":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "corrupt":
        path.write_bytes(b"\x00" * path.stat().st_size)
    elif damage == "stale_rows":  # the catalog moved on without the index (e.g. a crash)
        catalog.delete_images([1, 2])
    else:
        other = catalog.get_or_create_model("other", "c", DIM)
        VectorIndex.from_vectors(np.arange(60), _unit(60, 0), other).save(path, "x")
    with caplog.at_level(logging.WARNING, logger="storage.vectors"):
        index = open_or_rebuild(catalog, model_id, path)
    assert "rebuilding" in caplog.text
    expected = catalog.load_embeddings(model_id)[0]
    assert np.array_equal(index.ids(), expected)
    assert VectorIndex.load(path).fingerprint == catalog.embedding_fingerprint(model_id).token


def test_storage_vectors_open_or_rebuild_sees_a_replaced_vector(filled) -> None:
    catalog, model_id, path = filled
    open_or_rebuild(catalog, model_id, path)
    new_vector = -_unit(1, 0)[0]
    catalog.store_results(model_id, [ImageResult(1, new_vector)])  # same ids, new content
    index = open_or_rebuild(catalog, model_id, path)
    assert index.search(new_vector[None], 1).ids[0, 0] == 1


def test_storage_vectors_open_or_rebuild_unknown_model_raises(filled) -> None:
    catalog, _, path = filled
    with pytest.raises(KeyError, match="not in the catalog"):
        open_or_rebuild(catalog, 999, path)


@pytest.mark.parametrize("offset", [0, 1 << 40])  # dense ids use a bitmap, huge ids a hash set
def test_storage_vectors_filter_works_for_dense_and_sparse_ids(offset: int) -> None:
    ids = np.arange(300, dtype=np.int64) * 11 + offset
    x, q = _unit(300, 0), _unit(3, 1)
    allowed = ids[5::9]
    hits = VectorIndex.from_vectors(ids, x, model_id=1).search(q, 4, allowed_ids=allowed)
    assert np.array_equal(hits.ids, _brute_force(allowed, x[5::9], q, 4))


def test_storage_vectors_gpu_failure_falls_back_to_cpu(monkeypatch, caplog) -> None:
    import faiss

    def no_gpu(index):
        raise RuntimeError("no CUDA device")

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", no_gpu)
    x = _unit(50, 0)
    index = VectorIndex.from_vectors(np.arange(50), x, model_id=1)
    with caplog.at_level(logging.WARNING, logger="storage.vector_support"):
        hits = index.search(x[:3], 1)
    assert hits.ids[:, 0].tolist() == [0, 1, 2] and "GPU search failed" in caplog.text


def test_storage_vectors_normalize_copies_unless_told_not_to() -> None:
    from storage.vector_support import normalize

    x = np.full((3, DIM), 2.0, np.float32)
    assert np.allclose(np.linalg.norm(normalize(x, DIM), axis=1), 1) and x[0, 0] == 2.0
    same = normalize(x, DIM, copy=False)
    assert same is x and np.allclose(np.linalg.norm(x, axis=1), 1)
    frozen = np.frombuffer(np.ones(DIM, np.float32).tobytes(), np.float32).reshape(1, DIM)
    assert normalize(frozen, DIM, copy=False)[0, 0] == pytest.approx(DIM**-0.5)
    assert normalize(np.zeros((1, DIM)), DIM).sum() == 0  # zero rows stay zero, no NaN
