"""`coca-search index` and `coca-search search` end to end, including kill -9 in mid-run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import storage
from coca_search import cli
from search_app.search import DataLayout
from tests.indexer_support import make_bad_corpus, save_tiny_bundle, write_library

REPO = Path(__file__).resolve().parents[1]
# One torch thread per process: the machine's cores are shared, and spinning OpenMP threads
# slow a tiny model down by an order of magnitude when they have to wait for a core.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bundle(tmp_path_factory.mktemp("cli_bundle"))


def coca_search(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "coca_search", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{command} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def start_indexer(photos: Path, data: Path, bundle: Path) -> subprocess.Popen[bytes]:
    args = ["index", str(photos), "--data", str(data), "--model", str(bundle)]
    args += ["--batch-size", "4", "--workers", "1", "--no-captions", "--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-m", "coca_search", *args],
        env=ENV,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def catalog_rows(data: Path) -> int:
    path = DataLayout(data).catalog_path
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as connection:
            return int(connection.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not created yet
        return 0


def kill_when(process: subprocess.Popen[bytes], data: Path, rows: int, deadline_s: float) -> int:
    """SIGKILL the indexer once the catalog holds >= `rows` images (or at the deadline)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and process.poll() is None:
        if rows > 0 and catalog_rows(data) >= rows:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return catalog_rows(data)


def assert_catalog_matches_index(photos: Path, data: Path, expected_files: int) -> None:
    catalog = storage.open_catalog(DataLayout(data).catalog_path)
    known = catalog.known_files(photos.resolve().as_posix())
    assert len(known) == expected_files
    assert all(row.status == "ok" for row in known.values())
    (model,) = catalog.list_models()
    ids, _ = catalog.load_embeddings(model.id)
    assert len(np.unique(ids)) == len(ids) == expected_files
    assert set(ids.tolist()) == {row.id for row in known.values()}
    saved = storage.VectorIndex.load(DataLayout(data).index_path(model.id))
    assert sorted(saved.ids().tolist()) == sorted(ids.tolist())


@pytest.mark.slow
def test_cli_index_survives_kill_9_at_random_moments(tmp_path: Path, bundle: Path) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_library(photos, 240, folders=6)
    rng = np.random.default_rng(4)
    seen_mid_run = []
    # First a kill at a random early moment (start-up or scan), then kills once the catalog has
    # grown past random row counts: mid-batch, mid-commit or mid-save. Row targets, not times,
    # so a fast machine cannot finish the whole library before the first kill lands.
    early = rng.uniform(0.5, 2)
    seen_mid_run.append(kill_when(start_indexer(photos, data, bundle), data, 0, early))
    for target in sorted(rng.choice(np.arange(4, 220), size=3, replace=False)):
        extra = int(rng.integers(0, 4))
        seen_mid_run.append(
            kill_when(start_indexer(photos, data, bundle), data, target + extra, 90)
        )
    assert any(0 < rows < 240 for rows in seen_mid_run), seen_mid_run
    final = coca_search(
        "index", str(photos), "--data", str(data), "--model", str(bundle), "--json",
        "--batch-size", "8", "--no-captions", "--device", "cpu",
    )  # fmt: skip
    summary = json.loads(final.stdout)
    assert summary["indexed"] + summary["unchanged"] == 240
    assert summary["errors"] == 0
    assert_catalog_matches_index(photos, data, 240)


@pytest.mark.slow
def test_cli_index_then_search_end_to_end(tmp_path: Path, bundle: Path) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_library(photos, 10)
    corpus = make_bad_corpus(photos / "odd")
    base = ["--data", str(data), "--model", str(bundle), "--device", "cpu"]
    first = json.loads(
        coca_search("index", str(photos), *base, "--batch-size", "4", "--json").stdout
    )
    bad = sum(not item.decodes for item in corpus)
    assert first["indexed"] == 10 + len(corpus) - bad and first["errors"] == bad
    again = json.loads(coca_search("index", str(photos), *base, "--json").stdout)
    assert again["indexed"] == 0 and again["unchanged"] == 10 + len(corpus)
    found = json.loads(coca_search("search", "a noisy photo", *base, "-k", "5", "--json").stdout)
    assert len(found) == 5
    for item in found:
        assert {"id", "path", "score", "caption"} <= set(item)
        assert Path(item["path"]).is_absolute() and Path(item["path"]).is_file()
        assert isinstance(item["caption"], str) and item["caption"]
    plain = coca_search("search", "a noisy photo", *base, "-k", "2").stdout
    assert found[0]["path"] in plain
    # --folder as the library root itself (absolute, or relative to the command's folder) and as
    # a folder inside the library.
    everything = 10 + len(corpus) - bad
    for folder, expected in (
        (str(photos), everything),
        (os.path.relpath(photos, REPO), everything),
        ("odd", len(corpus) - bad),
    ):
        args = ["search", "a noisy photo", *base, "-k", "100", "--folder", folder, "--json"]
        assert len(json.loads(coca_search(*args).stdout)) == expected, folder


runner = CliRunner()
cli._register_commands()


@pytest.mark.parametrize(
    "args, message",
    [
        (["index", "/no/such/folder"], "is not a folder"),
        (["index", ".", "--batch-size", "0"], "batch-size"),
        (["index", ".", "--device", "tpu"], "unknown --device"),
        (["search", "cats", "--data", "/no/such/data"], "no catalog"),
        (["search", "cats", "-k", "0"], "-k"),
        (["search", "cats", "--from", "yesterday"], "--from expects a date"),
    ],
)
def test_cli_bad_input_fails_clearly(
    args: list[str], message: str, bundle: Path, tmp_path: Path
) -> None:
    result = runner.invoke(cli.app, [*args, "--model", str(bundle)])
    assert result.exit_code != 0
    assert message in result.output


def test_cli_search_on_an_empty_data_folder_says_what_to_do(bundle: Path, tmp_path: Path) -> None:
    storage.open_catalog(DataLayout(tmp_path).catalog_path)
    result = runner.invoke(
        cli.app, ["search", "cats", "--data", str(tmp_path), "--model", str(bundle)]
    )
    assert result.exit_code == 2
    assert "index your photos" in result.output


CORES = os.cpu_count() or 2


@pytest.mark.parametrize(
    "device, flags, batch_size, workers",
    [
        ("cpu", [], 32, CORES),
        ("cuda", [], 512, max(1, CORES - 2)),
        ("cuda", ["--batch-size", "7", "--workers", "3"], 7, 3),
    ],
)
def test_cli_index_batch_size_and_workers_default_to_the_device(
    device: str,
    flags: list[str],
    batch_size: int,
    workers: int,
    bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the flags a GPU gets big batches (its caption step is latency-bound) and leaves two
    cores to the indexing process, the CPU gets small batches and every core decoding; the device
    is faked so that the GPU defaults are checked on CPU-only CI."""
    import coca
    import indexer.pipeline
    from coca_search import index_commands

    seen: dict[str, int] = {}

    def fake_run_index(config, loaded, catalog, report):  # noqa: ANN001, ANN202
        seen.update(batch_size=config.encode.batch_size, workers=config.decode.workers)
        raise KeyboardInterrupt  # stop before any work; the command reports it cleanly

    monkeypatch.setattr(index_commands, "_device", lambda choice: device)
    monkeypatch.setattr(index_commands, "_load_model", lambda source, where: coca.load(source))
    monkeypatch.setattr(indexer.pipeline, "run_index", fake_run_index)
    photos = tmp_path / "photos"
    photos.mkdir()
    args = ["index", str(photos), "--data", str(tmp_path / "data"), "--model", str(bundle), *flags]
    threads = torch.get_num_threads()  # the command sets them for the device: put them back
    try:
        result = runner.invoke(cli.app, args)
    finally:
        torch.set_num_threads(threads)
    assert "interrupted" in result.output
    assert seen == {"batch_size": batch_size, "workers": workers}
