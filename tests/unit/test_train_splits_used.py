"""Which split training validates on, and what the run's record says it validated on (audit 27: DA1).

Why: the best checkpoint, the LR plateau and early stopping all follow the validation images; taken from
the test split, they would tune the run on the images its card's test metrics are then measured on, and
``summary.json``'s ``structures["val"]`` (then the split's list) would still name the val split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.sim.dataset import SimulatedDataset
from training.sim.synthetic_data import write_synthetic
from training.train.config import TrainConfig
from training.train.data import TrainData


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("data")
    # 14 structures: 2 val, 2 test (15 % each), 3 images each
    main = write_synthetic(d / "main.h5", n_structures=14, per_structure=3, size=32)
    extra = write_synthetic(d / "extra.h5", n_structures=14, per_structure=3, size=32, seed=1)
    return main, extra


def _indices(path: Path, images: list[np.ndarray]) -> list[int]:
    """The file's image index of each of ``images`` (by content: synthetic images are all different)."""
    with SimulatedDataset(path) as ds:
        stack = np.stack([ds.clean(i) for i in range(len(ds))])
    found = [[i for i in range(len(stack)) if np.array_equal(stack[i], im)] for im in images]
    assert all(len(f) == 1 for f in found), found
    return [f[0] for f in found]


def _split(path: Path, cfg: TrainConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with SimulatedDataset(path) as ds:
        return ds.split(cfg.split), ds.structure_ids()


def test_validation_images_come_from_the_val_split_only(sets: tuple[Path, Path]) -> None:
    main, extra = sets
    cfg = TrainConfig(data=main, extra_data=[extra], val_images=100)  # all of each val split
    data = TrainData(cfg)
    data.close()
    split, _ = _split(main, cfg)
    extra_split, _ = _split(extra, cfg)
    n = len(split["val"])
    assert n > 0 and len(data.val_clean) == n + len(extra_split["val"]) == data.n_val_total
    assert sorted(_indices(main, data.val_clean[:n])) == sorted(split["val"].tolist())
    assert sorted(_indices(extra, data.val_clean[n:])) == sorted(extra_split["val"].tolist())
    # fewer than the split holds: still val images only, evenly spread
    few = TrainData(cfg.model_copy(update={"val_images": 3, "extra_data": []}))
    few.close()
    picked = _indices(main, few.val_clean)
    assert len(picked) == 3 and set(picked) <= set(split["val"].tolist())


def test_the_recorded_val_structures_are_those_of_the_images_validated_on(sets: tuple[Path, Path]) -> None:
    main, _ = sets
    cfg = TrainConfig(data=main, val_images=1)
    split, ids = _split(main, cfg)
    val_structures = sorted({str(ids[i]) for i in split["val"]})
    assert len(val_structures) == 2
    data = TrainData(cfg)
    data.close()
    (only,) = _indices(main, data.val_clean)
    assert data.structures["val"] == [str(ids[only])]  # one image validated on: its structure, no other
    assert set(data.structures["val"]) <= set(val_structures)
    assert not set(data.structures["val"]) & set(data.structures["test"])
    # every image of the split: every val structure; and under DDP each rank records the whole pick
    every = cfg.model_copy(update={"val_images": 100})
    for rank in (0, 1):
        shard = TrainData(every, rank=rank, world=2)
        shard.close()
        assert shard.structures["val"] == val_structures and shard.n_val_total == len(split["val"])
        assert len(shard.val_clean) < len(split["val"])  # its share only
