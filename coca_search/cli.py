"""Entry point of the `coca-search` command.

Each area registers its subcommands from its own module so that flag parsing stays in this package
while the work happens in `coca`, `storage`, `indexer` and `search_app`.
"""

from __future__ import annotations

import logging
import warnings

import typer

app = typer.Typer(
    name="coca-search",
    help="Index a photo library with a CoCa model and search it by text in the browser.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def configure(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    """Set up logging once for every subcommand."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # faiss reports at INFO that its AVX2 build is missing before loading the generic one,
        # with a ModuleNotFoundError in the message: alarming and not actionable for a user.
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    # Pillow warns (raw, to stderr) about any image between its pixel limit and twice it; the
    # decoders enforce their own limit (DecodeConfig.max_pixels) and report refusals per file.
    warnings.filterwarnings("ignore", message=r".*decompression bomb", category=Warning)


def _register_commands() -> None:
    # Imported here so that `coca-search --help` does not pay for torch unless a command needs it.
    from coca_search import app_commands, index_commands, library_commands, model_commands

    model_commands.register(app)
    index_commands.register(app)
    library_commands.register(app)
    app_commands.register(app)


def main() -> None:
    _register_commands()
    app()
