"""The GPU recipe calls its data complete only when every set is: the main set and each extra world's
(audit 27, mutant RC7: the last file's state alone decided, so an incomplete main set beside a complete
extra set was reported complete, and ``simulate`` would have been skipped)."""

from __future__ import annotations

from pathlib import Path

from conftest import fake_sim_task

from training.recipe.config import RecipeConfig
from training.recipe.parts import extra_data_path, simulation_status
from training.sim.dataset import SimulatedDatasetWriter
from training.sim.worlds import WORLDS, file_attrs, plan


def _write(path: Path, drop: int = 0) -> None:
    """The tiny world's set, less its last ``drop`` tasks (fake images: no abTEM), written anew (the
    writer resumes an existing file)."""
    path.unlink(missing_ok=True)
    preset = WORLDS["tiny"]
    tasks = plan(preset)
    with SimulatedDatasetWriter(path, (96, 96), file_attrs(preset)) as w:
        for t in tasks[: len(tasks) - drop]:
            w.append_task(fake_sim_task(t.key, t.structure.structure_id, 1, shape=(96, 96)))


def test_the_data_is_complete_only_when_every_set_is(tmp_path: Path) -> None:
    cfg = RecipeConfig(sim_preset="tiny", data=tmp_path / "t.h5", extra_worlds=["tiny"])
    extra = extra_data_path(cfg, "tiny")
    _write(cfg.data, drop=1)
    _write(extra)
    status = simulation_status(cfg)
    assert list(status["files"]) == [str(cfg.data), str(extra)]
    n = len(plan(WORLDS["tiny"]))
    assert status["files"][str(cfg.data)].endswith(f"{n - 1}/{n} tasks")
    assert status["files"][str(extra)].endswith(f"{n}/{n} tasks")
    assert status["complete"] is False  # the main set lacks a task, whatever the last file says
    _write(cfg.data)
    assert simulation_status(cfg)["complete"] is True
    _write(extra, drop=2)
    assert simulation_status(cfg)["complete"] is False
