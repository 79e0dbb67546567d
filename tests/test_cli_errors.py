"""User-facing failures of `coca-search`: one clear line and a non-zero exit, never a traceback,
and never a write to a file the user did not ask us to write (read-only folders, a file that is not
a catalog, `--data ""`, `--decode gpu` without a GPU).

A read-only data folder is made with chmod for a normal user; root ignores file modes, so there a
read-only bind mount stands in (skipped where `mount` is not allowed). The storage tests fake an
unwritable folder with a patched `os.access`, which is what the code consults.
"""

from __future__ import annotations

import gc
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

import storage
from coca_search import cli
from search_app.search import DataLayout
from tests.indexer_support import save_tiny_bundle, write_library

runner = CliRunner()
cli._register_commands()

NOT_A_DB = b"not a db\n"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bundle(tmp_path_factory.mktemp("errors_bundle"))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> tuple[Path, Path]:
    """A small library indexed into a data folder: (photos, data)."""
    root = tmp_path_factory.mktemp("errors_library")
    write_library(root / "photos", 4)
    args = ["index", str(root / "photos"), "--data", str(root / "data"), "--model", str(bundle)]
    result = runner.invoke(cli.app, [*args, "--device", "cpu", "--no-captions", "--workers", "1"])
    assert result.exit_code == 0, result.output
    gc.collect()  # closes the in-process indexer's connections: SQLite then removes -wal, -shm
    return root / "photos", root / "data"


def _invoke(bundle: Path, *args: str) -> Result:
    return runner.invoke(cli.app, [*args, "--model", str(bundle), "--device", "cpu"])


def _assert_clean_failure(result: Result, *needles: str) -> None:
    """Exit code 2 through typer.Exit (a SystemExit), the message in the output, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output


@pytest.fixture
def read_only_view(indexed: tuple[Path, Path], tmp_path: Path) -> Iterator[Path]:
    """The indexed data folder as this process sees a read-only one."""
    data = indexed[1]
    assert not list(data.glob("*-shm"))  # so a reader can open it only with `immutable`
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in [data, *data.iterdir()]}
        for path in modes:
            path.chmod(modes[path] & ~0o222)
        yield data
        for path, mode in modes.items():
            path.chmod(mode)
        return
    view = tmp_path / "read-only-view"
    view.mkdir()
    bind = subprocess.run(["mount", "--bind", str(data), str(view)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"running as root and `mount --bind` is not allowed here: {bind.stderr!r}")
    try:
        remount = ["mount", "-o", "remount,bind,ro", str(view)]
        if subprocess.run(remount, capture_output=True).returncode != 0:
            pytest.skip("running as root and a read-only remount is not allowed here")
        yield view
    finally:
        gc.collect()  # the command's catalog connections (files under the mount) close
        subprocess.run(["umount", "--lazy", str(view)], check=True)


# -- read-only data folders -------------------------------------------------------------------


def test_cli_search_works_in_a_read_only_data_folder(read_only_view: Path, bundle: Path) -> None:
    result = _invoke(bundle, "search", "a photo", "--data", str(read_only_view), "-k", "3")
    assert result.exit_code == 0, result.output
    assert result.output.count("img_") == 3


def test_cli_index_into_a_read_only_data_folder_fails_in_one_line(
    read_only_view: Path, indexed: tuple[Path, Path], bundle: Path
) -> None:
    result = _invoke(bundle, "index", str(indexed[0]), "--data", str(read_only_view))
    _assert_clean_failure(result, str(read_only_view), "not writable")


def test_cli_index_cannot_create_a_data_folder_under_a_read_only_one(
    read_only_view: Path, indexed: tuple[Path, Path], bundle: Path
) -> None:
    result = _invoke(bundle, "index", str(indexed[0]), "--data", str(read_only_view / "new"))
    _assert_clean_failure(result, "cannot create the data folder", "not writable")


def _deny_writes(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make os.access report `folder` and its files unwritable, as on a read-only mount."""
    real_access = os.access

    def access(path: str | os.PathLike[str], mode: int, **kwargs: object) -> bool:
        inside = Path(path).absolute().is_relative_to(folder)
        return False if inside and mode & os.W_OK else real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)


def _make_catalog(path: Path, version: int = storage.LATEST_VERSION) -> None:
    db = storage.Database(path)
    storage.apply_migrations(db, target=version)
    db.dispose()


def test_storage_opens_an_unwritable_catalog_read_only_without_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "catalog.db"
    _make_catalog(path)
    _deny_writes(tmp_path, monkeypatch)
    before = sorted(tmp_path.iterdir())
    catalog = storage.open_catalog(path)
    assert catalog.db.read_only
    assert catalog.list_models() == []
    catalog.db.dispose()
    assert sorted(tmp_path.iterdir()) == before  # no -wal or -shm file made


def test_storage_refuses_to_migrate_a_read_only_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "catalog.db"
    _make_catalog(path, version=1)
    _deny_writes(tmp_path, monkeypatch)
    with pytest.raises(storage.CatalogOpenError, match="read-only .* older than"):
        storage.open_catalog(path)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT max(version) FROM schema_version").fetchone() == (1,)


# -- a file that is not a catalog ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["search", "index"])
def test_cli_refuses_a_file_that_is_not_a_catalog_and_leaves_it_alone(
    command: str, indexed: tuple[Path, Path], bundle: Path, tmp_path: Path
) -> None:
    catalog = DataLayout(tmp_path).catalog_path
    catalog.write_bytes(NOT_A_DB)
    args = ["red"] if command == "search" else [str(indexed[0])]
    result = _invoke(bundle, command, *args, "--data", str(tmp_path))
    _assert_clean_failure(result, "is not a coca-search catalog", "move it aside")
    assert catalog.read_bytes() == NOT_A_DB


def test_storage_refuses_someone_elses_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE recipes (name TEXT)")
    with pytest.raises(storage.CatalogOpenError, match="other tables: recipes"):
        storage.open_catalog(path)
    with sqlite3.connect(path) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        assert [row[0] for row in tables] == ["recipes"]


def test_cli_serve_refuses_a_file_that_is_not_a_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
    DataLayout(tmp_path).catalog_path.write_bytes(NOT_A_DB)
    result = runner.invoke(cli.app, ["serve", "--data", str(tmp_path)])
    _assert_clean_failure(result, "is not a coca-search catalog")
    assert calls == []


# -- flags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["index", "photos"], ["search", "red"], ["serve"]])
def test_cli_empty_data_flag_is_an_error_not_the_current_folder(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    write_library(tmp_path / "photos", 1)
    monkeypatch.setattr(os, "execve", lambda *args: None)
    result = runner.invoke(cli.app, [*command, "--data", "", "--model", str(bundle)])
    assert result.exit_code == 2
    assert "--data" in result.output and "is empty" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["photos"]


def test_cli_decode_gpu_without_a_gpu_fails_before_creating_anything(
    indexed: tuple[Path, Path], bundle: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    result = _invoke(bundle, "index", str(indexed[0]), "--data", str(data), "--decode", "gpu")
    _assert_clean_failure(result, "--decode gpu cannot run here")
    assert not data.exists()
    assert "indexing" not in result.output  # no progress bar was started


# -- logging -------------------------------------------------------------------------------------


def test_storage_new_data_folder_rebuilds_its_index_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = storage.open_catalog(tmp_path / "catalog.db")
    model_id = catalog.get_or_create_model("default", "cfg", 4)
    with caplog.at_level(logging.INFO, logger="storage.vectors"):
        storage.open_or_rebuild(catalog, model_id, tmp_path / "index.faiss")
    rebuilds = [r for r in caplog.records if "rebuilding vector index" in r.getMessage()]
    assert [r.levelno for r in rebuilds] == [logging.INFO]


def test_storage_replacing_a_mismatched_index_file_still_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = storage.open_catalog(tmp_path / "catalog.db")
    model_id = catalog.get_or_create_model("default", "cfg", 4)
    other_id = catalog.get_or_create_model("other", "cfg", 4)
    storage.open_or_rebuild(catalog, other_id, tmp_path / "index.faiss")  # saved for model 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="storage.vectors"):
        storage.open_or_rebuild(catalog, model_id, tmp_path / "index.faiss")
    rebuilds = [r for r in caplog.records if "rebuilding vector index" in r.getMessage()]
    assert [r.levelno for r in rebuilds] == [logging.WARNING]
