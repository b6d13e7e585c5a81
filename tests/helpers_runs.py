"""A real, tiny training run for the tests of ``sbd-train export`` and engine folders (imported by name,
as ``helpers_procs``): 3 steps of the ``tiny`` preset on a synthetic 64 px data set, a few seconds."""

from __future__ import annotations

from pathlib import Path

from training.sim.synthetic_data import write_synthetic
from training.train.loop import train
from training.train.presets import preset_config


def tiny_run(root: Path) -> Path:
    """Train the run under ``root`` (its data set ``root/a.h5``) and return its run folder."""
    data = write_synthetic(root / "a.h5", n_structures=6, per_structure=3, size=64)
    cfg = preset_config("tiny", data=str(data), out_dir=str(root / "runs"), threads=1, max_steps=3)
    train(cfg, resume=True)
    return cfg.run_dir
