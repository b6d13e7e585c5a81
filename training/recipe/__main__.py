"""``python -m training.recipe train-worker CONFIG.json [--no-resume]``: one training rank under torchrun."""

from __future__ import annotations

import sys
from pathlib import Path


def _worker(argv: list[str]) -> None:
    """``python -m training.recipe train-worker CONFIG.json [--no-resume]``: one rank under torchrun."""
    from training.train.config import TrainConfig
    from training.train.loop import train

    if not argv or argv[0] != "train-worker" or len(argv) < 2:
        raise SystemExit("usage: python -m training.recipe train-worker CONFIG.json [--no-resume]")
    cfg = TrainConfig.model_validate_json(Path(argv[1]).read_text())
    train(cfg, resume="--no-resume" not in argv[2:])


if __name__ == "__main__":
    _worker(sys.argv[1:])
