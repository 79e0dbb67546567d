"""The `index` and `search` subcommands: flags become configs here; the work is in `indexer`
and `search_app.search`.

Both commands share a data folder (`--data`, default `$COCA_SEARCH_DATA` or `./coca-data`) holding
the catalog (`catalog.db`) and one FAISS file per model. It lives outside the photo folder so that
`search` finds it without being told where the photos are, and so that the photo folder is never
written to. Expected failures print one line to stderr and exit non-zero; nothing already committed
is lost (a rerun of `index` resumes).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

logger = logging.getLogger(__name__)

DEFAULT_DATA_ENV = "COCA_SEARCH_DATA"


def default_data_dir() -> Path:
    """`$COCA_SEARCH_DATA` when set, else ./coca-data."""
    return Path(os.environ.get(DEFAULT_DATA_ENV) or "coca-data")


def parse_data_dir(text: str | Path) -> Path:
    """The `--data` folder. An empty value is refused: Path("") is the current folder, so a blank
    variable in a script would silently put the catalog among the user's own files."""
    if not str(text).strip():
        raise typer.BadParameter(
            "is empty: pass a folder (. for the current one), or leave --data out for the default"
        )
    return Path(text).expanduser()


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _device(choice: str) -> str:
    from indexer.encode import resolve_device

    if choice not in ("auto", "cpu", "cuda") and not choice.startswith("cuda:"):
        raise _fail(f"unknown --device {choice!r}: use auto, cpu or cuda")
    try:
        return str(resolve_device(choice))
    except ValueError as error:
        raise _fail(str(error)) from error


def _load_model(source: str, device: str) -> Any:
    import coca

    try:
        return coca.load(source, device=device)
    except (coca.CheckpointError, OSError, ValueError, RuntimeError) as error:
        raise _fail(f"cannot load model {source!r}: {error}") from error


def _open_catalog(data_dir: Path) -> Any:
    import storage
    from search_app.search import DataLayout

    try:
        return storage.open_catalog(DataLayout(data_dir).catalog_path)
    except storage.CatalogOpenError as error:  # not a catalog, too new, read-only and too old
        raise _fail(str(error)) from error
    except OSError as error:
        raise _fail(f"cannot open the catalog in {data_dir}: {error}") from error


def _check_writable(
    data_dir: Path, purpose: str = "indexing writes the catalog and vector index there"
) -> None:
    """Refuse before loading the model when a command could not write its catalog and vector
    index into `data_dir` (a read-only mount, a folder of someone else's): SQLite would only say
    "unable to open database file" once the work had started. `purpose` says what writes."""
    from search_app.search import DataLayout

    folder = data_dir.absolute()
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        raise _fail(f"cannot use {data_dir} as the data folder: {existing} is not a folder")
    catalog = DataLayout(folder).catalog_path
    folder_ok = os.access(existing, os.W_OK | os.X_OK)
    if folder_ok and (not catalog.exists() or os.access(catalog, os.W_OK)):
        return
    if existing != folder:
        raise _fail(f"cannot create the data folder {data_dir}: {existing} is not writable")
    raise _fail(
        f"the data folder {data_dir} is not writable: {purpose}; make it writable or pass "
        "another --data folder (search works read-only)"
    )


def _check_decoder(decode: str, device: str) -> None:
    # Only an explicit --decode gpu can fail; checked before the catalog or the data folder exist.
    if decode != "gpu":
        return
    import torch

    from indexer.gpu_decode import DecoderUnavailableError, resolve_decoder

    try:
        resolve_decoder(decode, torch.device(device))
    except DecoderUnavailableError as error:
        raise _fail(str(error)) from error


DATA_HELP = (
    f"Data folder for the catalog and index (default: ${DEFAULT_DATA_ENV} or ./coca-data; "
    "an empty value is an error, . is the current folder)."
)


def index_command(
    photos_dir: Path = typer.Argument(
        ..., help="Folder of photos to index (searched recursively)."
    ),
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP, parser=parse_data_dir),
    model: str = typer.Option("default", "--model", help="Model: default, a folder or a hub id."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        max=4096,
        help="Images per batch (default: 512 on a GPU, 32 on the CPU).",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        max=256,
        help="Decode workers (default: one per CPU core; with a GPU, all cores but two).",
    ),
    no_captions: bool = typer.Option(False, "--no-captions", help="Embeddings only, no captions."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    # Annotated, so that callers of this function (coca-search demo) may leave it out.
    threads: Annotated[
        int,
        typer.Option(
            "--threads", min=0, max=256, help="torch threads (0: CPUs - 1 on a CPU, 2 with a GPU)."
        ),
    ] = 0,
    decode: Annotated[
        str,
        typer.Option(
            "--decode",
            help="Where JPEGs are decoded: auto (the GPU with nvJPEG when the model is on "
            "CUDA, torchvision can, and fewer than 12 decode workers run: with more, Pillow "
            "keeps up), cpu or gpu.",
        ),
    ] = "auto",
) -> None:
    """Index a photo folder: captions + embeddings into the catalog, vectors into the index."""
    from indexer.decode import DECODERS, DecodeConfig
    from indexer.encode import EncodeConfig
    from indexer.gpu_decode import DecoderUnavailableError
    from indexer.pipeline import IndexConfig, IndexerBusyError, register_model, run_index
    from search_app.search import DataLayout

    if not photos_dir.is_dir():
        raise _fail(f"{photos_dir} is not a folder; pass the folder that holds your photos")
    if decode not in DECODERS:
        raise _fail(f"unknown --decode {decode!r}: use {', '.join(DECODERS)}")
    layout = DataLayout((data or default_data_dir()).expanduser())
    _check_writable(layout.data_dir)
    resolved = _device(device)
    _check_decoder(decode, resolved)
    import torch

    from indexer.encode import default_batch_size, default_decode_workers, default_threads

    torch.set_num_threads(threads or default_threads(torch.device(resolved)))
    batch_size = batch_size or default_batch_size(torch.device(resolved))
    workers = workers or default_decode_workers(torch.device(resolved))
    loaded = _load_model(model, resolved)
    catalog = _open_catalog(layout.data_dir)
    config = IndexConfig(
        photos_dir=photos_dir,
        index_path=layout.index_path(register_model(catalog, loaded)),
        decode=DecodeConfig(workers=workers, decoder=decode),
        encode=EncodeConfig(batch_size=batch_size, captions=not no_captions),
    )
    try:
        with _ProgressBar() as report:
            summary = run_index(config, loaded, catalog, report)
    except IndexerBusyError as error:
        raise _fail(str(error), 3) from error
    except (NotADirectoryError, DecoderUnavailableError) as error:
        raise _fail(str(error)) from error
    except RuntimeError as error:
        if "out of memory" not in str(error).lower():
            raise
        message = f"the model ran out of memory at --batch-size {batch_size}; use a smaller one"
        raise _fail(f"{message} (committed batches are kept)", 4) from error
    except KeyboardInterrupt:
        message = "interrupted; committed batches are kept, run the same command to resume"
        raise _fail(message, 130) from None
    if as_json:
        typer.echo(json.dumps(summary.to_dict()))
    else:
        typer.echo(
            f"indexed {summary.indexed}, unchanged {summary.unchanged}, moved {summary.moved}, "
            f"removed {summary.removed}, errors {summary.errors} in {summary.seconds:.1f} s "
            f"({summary.images_per_second:.1f} images/s); data in {layout.data_dir}"
        )
        if summary.still_unreadable:
            typer.echo(
                f"{summary.still_unreadable} unchanged files could not be read in an earlier run "
                "(they are tried again when they change)"
            )


class _ProgressBar:
    """A rich progress bar on stderr fed by the pipeline's progress callback."""

    def __enter__(self) -> Any:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.1f} images/s, {task.fields[errors]} errors"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.progress.add_task("index", total=None, rate=0.0, errors=0)
        self.progress.start()
        return self.update

    def update(self, event: Any) -> None:
        self.progress.update(
            self.task,
            completed=event.done,
            total=event.total,
            rate=event.images_per_second,
            errors=event.errors,
        )

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def search_command(
    query: str = typer.Argument(..., help="What to look for, e.g. 'two red cars on a beach'."),
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP, parser=parse_data_dir),
    k: int = typer.Option(10, "-k", "--top-k", min=1, max=1000, help="Number of results."),
    model: str = typer.Option("default", "--model", help="The model the catalog was indexed with."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    hybrid: bool = typer.Option(False, "--hybrid", help="Fuse with caption full-text matches."),
    min_score: float | None = typer.Option(None, "--min-score", help="Drop cosine below this."),
    folder: str | None = typer.Option(
        None,
        "--folder",
        help="Only photos under this folder: a path (absolute or from here) or one inside the "
        "library, such as 2024/summer.",
    ),
    date_from: str | None = typer.Option(None, "--from", help="Only photos on/after YYYY-MM-DD."),
    date_to: str | None = typer.Option(None, "--to", help="Only photos on/before YYYY-MM-DD."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of results."),
) -> None:
    """Search the catalog by text: top-k photos with path, score and caption."""
    from search_app.search import SearchError, SearchFilters, open_engine
    from storage import CatalogOpenError

    filters = SearchFilters(_folder(folder), _date(date_from, "--from"), _date(date_to, "--to"))
    data_dir = (data or default_data_dir()).expanduser()
    loaded = _load_model(model, _device(device))
    try:
        engine = open_engine(data_dir, loaded)
        response = engine.search_text(query, k, filters, hybrid, min_score)
    except (SearchError, CatalogOpenError) as error:
        raise _fail(str(error)) from error
    if as_json:
        typer.echo(json.dumps([result.to_dict() for result in response.results]))
        return
    if not response.results:
        typer.echo("no results", err=True)
    for result in response.results:
        typer.echo(f"{result.score:.4f}  {result.path}\n        {result.caption or ''}")
    logger.info("%d results in %.1f ms", len(response.results), response.latency_ms)


def _folder(text: str | None) -> str | None:
    """A folder that exists from here (`.`, `../photos/2024`) becomes absolute, so it is matched
    against the library roots; anything else is a folder inside the library."""
    from indexer.scan import printable_path, storable_path

    if text and not storable_path(text):
        raise _fail(f"--folder {printable_path(text)}: the catalog holds no path that is not UTF-8")
    if not text or Path(text).is_absolute():
        return text
    here = Path(text).expanduser()
    return str(here.resolve()) if here.is_dir() else text


def _date(text: str | None, flag: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _fail(f"{flag} expects a date like 2024-05-31, got {text!r}") from None


def register(app: typer.Typer) -> None:
    app.command("index")(index_command)
    app.command("search")(search_command)
