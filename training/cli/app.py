"""The ``sbd-train`` typer app; ``training.cli`` registers the commands of ``sim``, ``train`` and
``evaluate`` on it, so none of them imports the package back."""

import typer

from sbd_stream.cli.app import OneLineUsageErrors
from training.cli.errors import TRACEBACK

app = typer.Typer(
    cls=OneLineUsageErrors,  # a usage error in one line `error: ...`, as `sbd-stream`'s
    help="Simulate training data, train large-field-of-view UNets, evaluate them and build engines.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _options(
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="show the full traceback of an error instead of its one line (also: SBD_TRACEBACK=1)",
    ),
) -> None:
    """Simulate training data, train large-field-of-view UNets, evaluate them and build engines.

    A bad file, option value or engine ends in one line `error: ...` and exit status 2; `--verbose` (or
    SBD_TRACEBACK=1) shows where it came from."""
    TRACEBACK["on"] = verbose
