"""The `serve` and `demo` subcommands: flags become `search_app.settings.AppSettings` here.

`serve` replaces this process with `python -m streamlit run search_app/app.py` (so stopping the
command stops the server), handing the data folder and model over through environment variables.
`demo` writes a sample library from the procedural world, indexes it and then serves it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from pathlib import Path

import typer

from coca_search.index_commands import default_data_dir, parse_data_dir

logger = logging.getLogger(__name__)

APP_SCRIPT = Path(__file__).resolve().parent.parent / "search_app" / "app.py"
DEMO_DIR = Path("coca-demo")
MAX_UPLOAD_MB = 25  # search-by-photo uploads; a phone photo is a few MB


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def streamlit_argv(host: str, port: int) -> list[str]:
    """The Streamlit command line: headless, private, no file watching, no static file serving."""
    options = {
        "server.address": host,
        "server.port": str(port),
        "server.headless": "true",
        "server.fileWatcherType": "none",
        "server.runOnSave": "false",
        "server.enableStaticServing": "false",
        "server.maxUploadSize": str(MAX_UPLOAD_MB),
        "browser.gatherUsageStats": "false",
        "browser.serverAddress": host,
        "client.toolbarMode": "minimal",
        "client.showErrorDetails": "type",  # no tracebacks (with file paths) in the browser
        "global.developmentMode": "false",
        "runner.magicEnabled": "false",  # the pages never rely on magic; skips an AST pass
        # A full gc.collect() after every run takes ~0.4 s with torch loaded, holding the GIL;
        # the normal generational collector is enough.
        "runner.postScriptGC": "false",
    }
    flags = [f"--{name}={value}" for name, value in options.items()]
    return [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT), *flags]


def _check_address(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise _fail(f"--port must be between 1 and 65535, got {port}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise _fail(f"--host must be an IP address such as 127.0.0.1, got {host!r}") from None
    if not loopback:
        typer.echo(
            f"warning: serving on {host}: anyone who can reach this machine can see your photos",
            err=True,
        )


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise _fail(f"unknown --device {device!r}: use auto, cpu or cuda")


def _model_source(model: str) -> str:
    # A relative model folder must still resolve if Streamlit runs from another directory.
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def _check_catalog(path: Path) -> None:
    """Open the catalog once before starting the server, as the app will: a file that is not a
    catalog, or one too new (or read-only and too old) to use, is one line here instead of an
    error page in the browser."""
    import storage

    try:
        storage.open_catalog(path).db.dispose()
    except storage.CatalogOpenError as error:
        raise _fail(str(error)) from error


def serve(data_dir: Path, host: str, port: int, model: str, device: str) -> None:
    """Replace this process with the Streamlit server for `data_dir`."""
    from search_app.settings import AppSettings

    _check_address(host, port)
    _check_device(device)
    settings = AppSettings(data_dir.expanduser().resolve(), _model_source(model), device)
    if settings.catalog_path.is_file():
        _check_catalog(settings.catalog_path)
    else:
        typer.echo(
            f"note: no catalog in {settings.data_dir} yet; the app will show an empty library "
            f"until you run: coca-search index PHOTOS_DIR --data {settings.data_dir}",
            err=True,
        )
    typer.echo(f"coca-search: serving {settings.data_dir} on http://{host}:{port}", err=True)
    # OpenMP threads (torch, faiss) spin for a while after each query by default, burning the
    # CPU that thumbnails and the browser need on a small machine; let them sleep instead.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, **settings.to_env()}
    argv = streamlit_argv(host, port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


def serve_command(
    data: Path | None = typer.Option(
        None, "--data", help="Data folder written by `index`.", parser=parse_data_dir
    ),
    port: int = typer.Option(8501, "--port", help="Port to listen on."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind (loopback unless you mean to share)."
    ),
    model: str = typer.Option("default", "--model", help="The model the catalog was indexed with."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Serve the search app in the browser (http://127.0.0.1:8501 by default)."""
    serve(data or default_data_dir(), host, port, model, device)


def _write_sample_library(photos: Path, count: int) -> None:
    from coca.world import HELDOUT_SEED, MANIFEST_NAME, read_manifest, write_library

    if (photos / MANIFEST_NAME).is_file():
        earlier = read_manifest(photos)
        if len(earlier) == count:
            typer.echo(f"sample library of {count} photos already in {photos}", err=True)
            return
        # Another --count: the earlier sample's photos go, so the demo shows `count` of them
        # (only files the demo wrote itself, by its manifest).
        for entry in earlier:
            (photos / entry.file).unlink(missing_ok=True)
    typer.echo(f"writing {count} sample photos to {photos} ...", err=True)
    # The held-out split: the default model never saw these scenes in training.
    write_library(photos, count, seed=HELDOUT_SEED)


def demo_command(
    data: Path = typer.Option(
        DEMO_DIR, "--data", help="Demo folder: photos/ and the catalog.", parser=parse_data_dir
    ),
    count: int = typer.Option(500, "--count", min=1, max=100_000, help="Sample photos to write."),
    port: int = typer.Option(8501, "--port", help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    model: str = typer.Option("default", "--model", help="Model to index with."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Write and index only."),
) -> None:
    """Write a sample photo library, index it with the default model and serve the app."""
    from coca_search.index_commands import index_command

    _check_address(host, port)
    data_dir = data.expanduser().resolve()
    photos = data_dir / "photos"
    _write_sample_library(photos, count)
    index_command(
        photos_dir=photos,
        data=data_dir,
        model=model,
        device=device,
        batch_size=None,  # the index command's default for the device
        workers=None,
        no_captions=False,
        as_json=False,
    )
    if no_serve:
        typer.echo(f"demo library indexed; serve it with: coca-search serve --data {data_dir}")
        return
    serve(data_dir, host, port, model, device)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
    app.command("demo")(demo_command)
