"""``python -m training.cli ...``: the same app as the ``sbd-train`` console script."""

from training.cli import app

app()
