"""`coca-search serve` / `demo` flag handling, the app's settings and its image rendering."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from coca_search import app_commands
from coca_search.cli import _register_commands, app
from search_app.settings import AppSettings
from search_app.thumbnails import ImageUnavailableError, ThumbnailCache, render_image
from tests.indexer_support import RED, rotated_jpeg_bytes

runner = CliRunner()
_register_commands()


@pytest.fixture()
def exec_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], dict[str, str]]]:
    """Record the exec that would replace the process with Streamlit."""
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    return calls


def test_app_commands_serve_binds_loopback_headless_by_default(
    tmp_path: Path, exec_calls: list
) -> None:
    result = runner.invoke(app, ["serve", "--data", str(tmp_path), "--port", "8765"])
    assert result.exit_code == 0, result.output
    ((_, argv, env),) = exec_calls
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4].endswith("search_app/app.py")
    for flag in (
        "--server.address=127.0.0.1",
        "--server.port=8765",
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
        "--server.fileWatcherType=none",
        "--server.enableStaticServing=false",
    ):
        assert flag in argv
    settings = AppSettings.from_env(env)
    assert settings == AppSettings(tmp_path.resolve(), "default", "auto")
    assert "no catalog" in result.output  # told how to index


def test_app_commands_serve_passes_model_and_device(tmp_path: Path, exec_calls: list) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    args = ["serve", "--data", str(tmp_path), "--model", str(model_dir), "--device", "cpu"]
    assert runner.invoke(app, args).exit_code == 0
    settings = AppSettings.from_env(exec_calls[0][2])
    assert settings.model_source == str(model_dir.resolve()) and settings.device == "cpu"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "--port"),
        (["--host", "not an address"], "--host"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_app_commands_serve_rejects_bad_flags(
    tmp_path: Path, exec_calls: list, args: list[str], message: str
) -> None:
    result = runner.invoke(app, ["serve", "--data", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output
    assert not exec_calls


def test_app_commands_serve_warns_when_not_loopback(tmp_path: Path, exec_calls: list) -> None:
    result = runner.invoke(app, ["serve", "--data", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 0
    assert "anyone who can reach this machine" in result.output
    assert "--server.address=0.0.0.0" in exec_calls[0][1]


def test_app_commands_demo_writes_indexes_then_serves(
    tmp_path: Path, exec_calls: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    indexed: list[dict] = []
    monkeypatch.setattr(
        "coca_search.index_commands.index_command", lambda **kwargs: indexed.append(kwargs)
    )
    result = runner.invoke(app, ["demo", "--data", str(tmp_path), "--count", "3", "--port", "9"])
    assert result.exit_code == 0, result.output
    photos = tmp_path.resolve() / "photos"
    assert len([p for p in photos.rglob("photo_*")]) == 3
    assert indexed[0]["photos_dir"] == photos and indexed[0]["model"] == "default"
    assert "--server.port=9" in exec_calls[0][1]
    again = runner.invoke(app, ["demo", "--data", str(tmp_path), "--count", "3", "--no-serve"])
    assert "already in" in again.output and len(exec_calls) == 1  # kept, not rewritten
    fewer = runner.invoke(app, ["demo", "--data", str(tmp_path), "--count", "2", "--no-serve"])
    assert fewer.exit_code == 0, fewer.output
    assert len([p for p in photos.rglob("photo_*")]) == 2  # the earlier sample's extras went


def test_app_settings_default_to_coca_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = AppSettings.from_env({})
    assert settings.data_dir == tmp_path.resolve() / "coca-data"
    assert settings.catalog_path.name == "catalog.db"


def test_app_thumbnail_is_upright_and_small(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    path.write_bytes(rotated_jpeg_bytes())  # 40x20 stored, tagged rotate-90: 20x40 upright
    rendered = render_image(path, max_side=16)
    image = Image.open(io.BytesIO(rendered.data))
    assert (rendered.width, rendered.height) == image.size == (8, 16)
    top = image.convert("RGB").getpixel((4, 2))
    assert top[0] > 150 and top[2] < 100, top  # red on top once upright
    assert rendered.mime == "image/jpeg" and not image.getexif()  # no metadata sent on


def test_app_thumbnail_keeps_transparency_as_png(tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (30, 30), (*RED, 0)).save(path)
    rendered = render_image(path, max_side=320)
    assert rendered.mime == "image/png" and rendered.width == 30


@pytest.mark.parametrize("content", [None, b"", b"not an image at all"])
def test_app_thumbnail_of_missing_or_broken_file_raises(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "photo.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageUnavailableError):
        render_image(path, max_side=64)


def test_app_commands_streamlit_argv_has_no_static_serving() -> None:
    argv = app_commands.streamlit_argv("127.0.0.1", 8501)
    assert "--server.enableStaticServing=false" in argv
    assert "--client.showErrorDetails=type" in argv


def test_app_thumbnail_cache_renders_once_and_follows_file_changes(tmp_path: Path) -> None:
    cache = ThumbnailCache(max_bytes=1 << 20, workers=2)
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"p{index}.jpg")
        Image.new("RGB", (64, 48), (index * 80, 0, 0)).save(paths[-1])
    first = cache.get_many([(i, p) for i, p in enumerate(paths)], max_side=32)
    assert [first[i].width for i in range(3)] == [32, 32, 32]
    assert cache.get(0, paths[0], 32) is first[0]  # served from the cache
    Image.new("RGB", (48, 64), (0, 0, 255)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))  # a different mtime: the photo changed on disk
    assert cache.get(0, paths[0], 32).height == 32  # re-rendered, upright portrait
    paths[1].unlink()
    assert cache.get(1, paths[1], 32) is None


def test_app_thumbnail_cache_stays_within_its_byte_budget(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    Image.effect_noise((64, 64), 80).convert("RGB").save(path)
    size = len(render_image(path, 64).data)
    cache = ThumbnailCache(max_bytes=int(size * 2.5), workers=1)
    for image_id in range(6):
        assert cache.get(image_id, path, 64) is not None
    assert cache._bytes <= cache.max_bytes and len(cache._items) == 2
