"""`sbd-train`: simulate training data, train, evaluate and export engines.

Thin by design: each command parses options and calls into the stage that does the work. ``app`` holds
the typer app, ``common`` what several commands share, and one module per command group holds the
commands: ``sim``, ``train`` (with the GPU recipe) and ``evaluate``. This ``__init__`` registers them
on the app in the order ``sbd-train --help`` lists them, each wrapped by ``errors.friendly_errors`` (a bad
input ends in one line ``error: ...``); no command module imports the package back.
"""

from collections.abc import Callable
from typing import Any

from training.cli import evaluate, sim, train
from training.cli.app import app
from training.cli.errors import friendly_errors

COMMANDS: list[tuple[str, Callable[..., Any]]] = [
    ("simulate", sim.simulate),
    ("contact-sheet", sim.contact_sheet),
    ("likelihood-study", evaluate.likelihood_study),
    ("train", train.train),
    ("export", train.export),
    ("evaluate", evaluate.evaluate),
    ("evaluate-detector", evaluate.evaluate_detector),
    ("evaluate-images", evaluate.evaluate_images_cmd),
    ("dose-curve", evaluate.dose_curve),
    ("fov-study", evaluate.fov_study),
    ("fov-study-detector", evaluate.fov_study_detector),
    ("build-engine", train.build_engine),
    ("install-quality", train.install_quality),
    ("gpu-recipe", train.gpu_recipe),
    ("demo-samples", sim.demo_samples),
    ("scenes", sim.scenes),
]
"""(name, function) in the order of ``sbd-train --help``."""

for _name, _command in COMMANDS:
    app.command(_name)(friendly_errors(_command))

__all__ = ["COMMANDS", "app"]
