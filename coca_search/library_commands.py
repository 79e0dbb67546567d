"""The `forget` subcommand: drop a gone-for-good library folder's photos from the catalog."""

from __future__ import annotations

from pathlib import Path

import typer

from coca_search.index_commands import (
    DATA_HELP,
    _check_writable,
    _fail,
    _open_catalog,
    default_data_dir,
    parse_data_dir,
)


def forget_command(
    folder: Path = typer.Argument(
        ..., help="A library folder (or a folder inside one) whose photos the catalog should drop."
    ),
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP, parser=parse_data_dir),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Forget a folder's photos (captions, embeddings, index entries); files are not touched.

    For a library folder that was renamed, moved or deleted for good: `index` only compares the
    folder it is given with the disk, so the old folder's photos stay in the catalog until then.
    """
    from indexer.forget import forget_folder
    from indexer.pipeline import IndexerBusyError
    from indexer.scan import printable_path, storable_path
    from search_app.search import DataLayout
    from storage import ImageFilter

    layout = DataLayout((data or default_data_dir()).expanduser())
    if not layout.catalog_path.exists():
        raise _fail(f"no catalog in {layout.data_dir}: nothing to forget")
    # Resolved as `index` resolves its folder (links, "..", "~"), so the same path matches.
    target = str(folder.expanduser().resolve())
    if not storable_path(target):
        raise _fail(f"{printable_path(target)}: the catalog holds no path that is not UTF-8")
    _check_writable(layout.data_dir, "forget changes the catalog and vector index there")
    catalog = _open_catalog(layout.data_dir)
    count = int(catalog.filter_image_ids(ImageFilter(folder=target)).size)
    if count == 0:
        known = ", ".join(catalog.roots()) or "none"
        raise _fail(f"no catalogued photo under {target} (library folders: {known})", 1)
    if not yes and not typer.confirm(f"forget {count} photos under {target}?"):
        raise _fail("nothing forgotten", 1)
    try:
        forgotten = forget_folder(catalog, layout.index_path, target)
    except IndexerBusyError as error:
        raise _fail(str(error), 3) from error
    typer.echo(f"forgot {forgotten} photos under {target}; their files were not touched")


def register(app: typer.Typer) -> None:
    app.command("forget")(forget_command)
