"""The ``sbd-train`` typer app; ``training.cli`` registers the commands of ``sim``, ``train`` and
``evaluate`` on it, so none of them imports the package back."""

import typer

app = typer.Typer(
    help="Simulate training data, train large-field-of-view UNets, evaluate them and build engines.",
    no_args_is_help=True,
    add_completion=False,
)
