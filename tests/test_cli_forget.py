"""`coca-search forget`: a deleted library folder's photos leave the catalog and the index."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import storage
from coca_search import cli
from search_app.search import DataLayout
from tests.indexer_support import save_tiny_bundle, write_library

runner = CliRunner()
cli._register_commands()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bundle(tmp_path_factory.mktemp("forget_bundle"))


def invoke(*args: str, answer: str | None = None) -> tuple[int, str]:
    threads = torch.get_num_threads()  # the index command sets them for its device
    try:
        result = runner.invoke(cli.app, list(args), input=answer)
    finally:
        torch.set_num_threads(threads)
    return result.exit_code, result.output


def test_cli_forget_drops_a_deleted_library_folder(bundle: Path, tmp_path: Path) -> None:
    old, new, data = tmp_path / "photos", tmp_path / "photos-2024", tmp_path / "data"
    write_library(old, 4)
    write_library(new, 4, seed=3)  # other photos: none of them is a moved one
    base = ["--data", str(data), "--model", str(bundle), "--device", "cpu", "--batch-size", "2"]
    assert invoke("index", str(old), *base, "--workers", "1")[0] == 0
    shutil.rmtree(old)
    assert invoke("index", str(new), *base, "--workers", "1")[0] == 0
    catalog = storage.open_catalog(DataLayout(data).catalog_path)
    assert len(catalog.roots()) == 2  # the old folder's rows stay: index only looks at `new`

    code, output = invoke("forget", str(old), "--data", str(data), "--yes")
    assert code == 0 and "forgot 4 photos" in output
    assert catalog.roots() == [new.resolve().as_posix()]
    index_path = DataLayout(data).index_path(catalog.list_models()[0].id)
    saved = storage.VectorIndex.load(index_path)
    assert sorted(saved.ids().tolist()) == sorted(catalog.filter_image_ids(storage.ImageFilter()))
    assert saved.ntotal == 4
    code, output = invoke("search", "noise", "--data", str(data), "--model", str(bundle), "--json")
    assert code == 0 and all(item["path"].startswith(str(new)) for item in json.loads(output))


def test_cli_forget_a_folder_the_catalog_does_not_hold_says_so(
    bundle: Path, tmp_path: Path
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_library(photos, 2)
    base = ["--data", str(data), "--model", str(bundle), "--device", "cpu", "--workers", "1"]
    assert invoke("index", str(photos), *base)[0] == 0
    code, output = invoke("forget", str(tmp_path / "elsewhere"), "--data", str(data), "--yes")
    assert code == 1 and "no catalogued photo" in output and photos.resolve().as_posix() in output
    code, output = invoke("forget", str(photos), "--data", str(data), answer="n\n")
    assert code == 1 and "nothing forgotten" in output


def test_cli_forget_resolves_links_and_refuses_bad_input(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    write_library(photos, 4, folders=2)
    base = ["--data", str(data), "--model", str(bundle), "--device", "cpu", "--workers", "1"]
    assert invoke("index", str(photos), *base)[0] == 0
    (tmp_path / "link").symlink_to(photos)
    code, output = invoke("forget", str(tmp_path / "link" / "album0"), "--data", str(data), "-y")
    assert code == 0 and "forgot 2 photos" in output  # the folder through a link, as index sees it
    code, output = invoke("forget", os.fsdecode(b"caf\xe9"), "--data", str(data), "-y")
    assert code == 2 and "not UTF-8" in output and "Traceback" not in output
    code, output = invoke("forget", str(photos), "--data", "", "-y")
    assert code == 2 and "is empty" in output
    from coca_search import index_commands

    read_only = SimpleNamespace(access=lambda *args, **kwargs: False, W_OK=os.W_OK, X_OK=os.X_OK)
    monkeypatch.setattr(index_commands, "os", read_only)  # as a read-only mount answers
    code, output = invoke("forget", str(photos), "--data", str(data), "-y")
    assert code == 2 and "not writable" in output
