"""The indexer on the GPU decode path (run on the CPU) catalogs every file as the Pillow path does,
and `--decode gpu` where it cannot run is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import coca
import indexer.gpu_decode as gpu_decode
import indexer.pipeline
import storage
from coca_search import cli
from indexer.decode import DecodeConfig
from indexer.encode import EncodeConfig
from indexer.pipeline import IndexConfig, IndexSummary, register_model, run_index
from search_app.search import DataLayout
from tests.indexer_support import (
    fast_decoding,
    make_bad_corpus,
    rotated_jpeg_bytes,
    save_tiny_bundle,
    write_library,
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bundle(tmp_path_factory.mktemp("gpu_decode_bundle"))


def _index(
    photos: Path, data: Path, model: torch.nn.Module
) -> tuple[IndexSummary, dict[str, tuple], dict[str, np.ndarray]]:
    """Index `photos` into `data`; the catalog rows and the embeddings, by path."""
    catalog = storage.open_catalog(DataLayout(data).catalog_path)
    config = IndexConfig(
        photos_dir=photos,
        index_path=DataLayout(data).index_path(register_model(catalog, model)),
        decode=DecodeConfig(workers=2, gpu_batch_size=4),
        encode=EncodeConfig(batch_size=4, captions=False, decoding=fast_decoding()),
    )
    summary = run_index(config, model, catalog)
    root = photos.resolve().as_posix()
    known = catalog.known_files(root)
    details = catalog.get_images([row.id for row in known.values()])
    rows = {
        d.image.path: (d.image.status, d.image.error, d.image.width, d.image.height)
        + (d.image.format, d.image.taken_at, d.image.camera)
        for d in details
    }
    ids, vectors = catalog.load_embeddings(register_model(catalog, model))
    saved = storage.VectorIndex.load(config.index_path)
    assert sorted(saved.ids().tolist()) == sorted(ids.tolist())  # catalog and index in step
    paths = {row.id: path for path, row in known.items()}
    return summary, rows, {paths[i]: v for i, v in zip(ids.tolist(), vectors, strict=True)}


def test_pipeline_on_the_gpu_path_catalogs_files_as_the_pillow_path(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torchvision", reason="the GPU decode path needs torchvision")
    torch.set_num_threads(1)
    model = coca.load(bundle)
    photos = tmp_path / "photos"
    write_library(photos, 5)
    make_bad_corpus(photos / "bad")
    (photos / "rotated_copy.jpg").write_bytes(rotated_jpeg_bytes())
    cpu_summary, cpu_rows, cpu_vectors = _index(photos, tmp_path / "data_cpu", model)
    # The model is on the CPU, where "auto" picks Pillow: force the batched tensor path.
    monkeypatch.setattr(
        indexer.pipeline, "resolve_decoder", lambda choice, device, workers=1: "gpu"
    )
    decoded: list[Path] = []
    original = gpu_decode.decode_jpegs

    def decode_jpegs(files, device):  # noqa: ANN001, ANN202 - a spy with the same signature
        decoded.extend(file.path for file in files)
        return original(files, device)

    monkeypatch.setattr(gpu_decode, "decode_jpegs", decode_jpegs)
    gpu_summary, gpu_rows, gpu_vectors = _index(photos, tmp_path / "data_gpu", model)
    assert (cpu_summary.decoder, gpu_summary.decoder) == ("cpu", "gpu")
    assert len(decoded) == 7  # the library's 5 JPEGs and the two rotated ones
    assert (gpu_summary.indexed, gpu_summary.errors) == (cpu_summary.indexed, cpu_summary.errors)
    assert gpu_summary.errors >= 5
    assert gpu_rows == cpu_rows
    assert gpu_rows["rotated_copy.jpg"][2:4] == (20, 40)  # EXIF orientation applied
    assert gpu_vectors.keys() == cpu_vectors.keys()
    for path, vector in gpu_vectors.items():  # unit vectors of nearly the same pixels
        assert float(vector @ cpu_vectors[path]) > 0.99, path


def test_cli_decode_gpu_without_a_gpu_fails_clearly(bundle: Path, tmp_path: Path) -> None:
    cli._register_commands()
    write_library(tmp_path / "photos", 1)
    args = ["index", str(tmp_path / "photos"), "--data", str(tmp_path / "data")]
    args += ["--model", str(bundle), "--device", "cpu", "--workers", "1"]
    runner = CliRunner()
    result = runner.invoke(cli.app, [*args, "--decode", "gpu"])
    assert result.exit_code == 2
    assert "--decode gpu cannot run here" in result.output
    assert "--decode cpu" in result.output
    result = runner.invoke(cli.app, [*args, "--decode", "nvjpeg"])
    assert result.exit_code == 2
    assert "unknown --decode" in result.output
