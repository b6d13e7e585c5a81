"""Which split each consumer of the paper world's models draws from: the emulator's scenes take held-out
(test-split), untilted models only, and every split holds at least one structure or the split is refused.

Why: a scene built from a training model would show an engine a specimen it was trained on and flatter it
silently (training/sim/scenes.py); an empty val or test split would only surface later as a confusing
error in training or evaluation.
"""

from __future__ import annotations

import numpy as np
import pytest

from training.sim.scenes import test_tasks as scene_tasks
from training.sim.splits import SplitSpec, split_structures
from training.sim.worlds import WORLDS, plan


def test_scene_tasks_are_untilted_test_split_models() -> None:
    world = WORLDS["paper"]
    ids = np.array([t.structure.structure_id for t in plan(world)])
    splits = split_structures(ids, world.split)
    tasks = scene_tasks(world, 4)
    assert len(tasks) == 4
    picked = [t.structure.structure_id for t in tasks]
    assert len(set(picked)) == 4  # four models, not one model's tilts
    assert set(picked) <= set(splits["test"])
    assert not set(picked) & (set(splits["train"]) | set(splits["val"]))
    assert all(t.test_view for t in tasks)  # the plan marks them test-split as well
    assert all(t.tilt_deg == (0.0, 0.0) for t in tasks)
    # small particles first, as the docstring says
    order = [t.structure.particle_class.value for t in tasks]
    assert order == sorted(order, key=("PtNp1", "PtNp2", "PtNp3").index)


def test_every_split_gets_at_least_one_structure() -> None:
    ids = np.array(["a", "b", "c"])
    assert {k: len(v) for k, v in split_structures(ids).items()} == {"train": 1, "val": 1, "test": 1}
    # 10 % of 4 rounds to 0: still one each
    got = split_structures(np.array(list("abcd")), SplitSpec(val_fraction=0.1, test_fraction=0.1))
    assert (len(got["val"]), len(got["test"]), len(got["train"])) == (1, 1, 2)
    # a zero fraction means no such split
    assert split_structures(np.array(list("abcd")), SplitSpec(val_fraction=0.0))["val"] == []


def test_fractions_that_leave_no_training_structure_are_refused() -> None:
    with pytest.raises(ValueError, match="leave none for training"):
        split_structures(np.array(list("abcd")), SplitSpec(val_fraction=0.5, test_fraction=0.5))
    got = split_structures(np.array(list("abcde")), SplitSpec(val_fraction=0.4, test_fraction=0.4))
    assert (len(got["train"]), len(got["val"]), len(got["test"])) == (1, 2, 2)
