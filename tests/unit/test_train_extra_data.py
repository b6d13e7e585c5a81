"""Training on more than one simulated set: ``TrainConfig.extra_data`` adds the train split of another set
(the paper's models under another imaging model) to the training images; validation stays on ``data``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fake_sim_task

from training.train.config import TrainConfig
from training.train.data import TrainData


def _set(path: Path, offset: float, dose: float = 0.45, structures: int = 10) -> None:
    from training.sim.dataset import SimulatedDatasetWriter

    with SimulatedDatasetWriter(path, (16, 16), {"preset": "test", "pixel_size_A": 0.15, "dose": dose}) as w:
        for s in range(structures):
            task = fake_sim_task(f"t{s}", f"s{s:03d}", 2, shape=(16, 16))
            for j, im in enumerate(task.images):
                im.meta["dose"] = dose
                im.clean[:] = offset + s + j / 10  # which set, structure and image, readable from the pixels
            w.append_task(task)


def test_extra_sets_join_training_only(tmp_path: Path) -> None:
    _set(tmp_path / "a.h5", 0.0)
    _set(tmp_path / "b.h5", 100.0)
    base = TrainConfig(data=tmp_path / "a.h5", val_images=4)
    alone = TrainData(base)
    both = TrainData(base.model_copy(update={"extra_data": [tmp_path / "b.h5"]}))
    assert both.n_train == 2 * alone.n_train > 0  # same models, same split rule: as many again
    values = {float(both.images(np.array([k]), torch.device("cpu"))[0, 0, 0]) for k in range(both.n_train)}
    assert sum(v >= 100 for v in values) == alone.n_train  # half of them from the extra set
    # its structures are the main set's train structures: no validation or test model leaks in
    held_out = {float(s[1:]) for s in alone.structures["val"] + alone.structures["test"]}
    assert not {round(v - 100) for v in values if v >= 100} & {round(h) for h in held_out}
    # validation: the main set's images (same noise as alone), then as many of the extra set's
    n = len(alone.val_clean)
    assert len(both.val_clean) == 2 * n and both.n_val_total == 2 * alone.n_val_total
    assert all(np.array_equal(a, b) for a, b in zip(both.val_counts[:n], alone.val_counts, strict=True))
    assert all(c.min() >= 100 for c in both.val_clean[n:])
    streamed = TrainData(base.model_copy(update={"extra_data": [tmp_path / "b.h5"], "preload_max_gb": 0.0}))
    assert not streamed.preloaded
    idx = np.arange(both.n_train)
    dev = torch.device("cpu")
    assert torch.equal(streamed.images(idx, dev), both.images(idx, dev))  # read per batch = held in memory
    streamed.close()


def test_an_extra_set_at_another_dose_is_refused(tmp_path: Path) -> None:
    _set(tmp_path / "a.h5", 0.0)
    _set(tmp_path / "c.h5", 100.0, dose=7.2)
    with pytest.raises(ValueError, match="must match"):
        TrainData(TrainConfig(data=tmp_path / "a.h5", extra_data=[tmp_path / "c.h5"]))


def test_presets_train_on_worlds_of_the_same_models_dose_and_pixel() -> None:
    """Every preset that adds sets names worlds at the data world's dose and pixel that either image its
    models (same seed, so the same splits: no test model of one world is a training model of another) in
    another imaging model, or hold models of their own (no structure shared with the data world)."""
    from training.sim.worlds import WORLDS, plan
    from training.train.presets import TRAINING_PRESETS, preset_config

    mixed = [name for name in TRAINING_PRESETS if preset_config(name).extra_data]
    expected = {"paper-fast-mixed", "paper-live-mixed", "paper-fast-optics", "paper-live-optics"}
    assert expected | {"paper-fast-twins", "paper-live-twins"} <= set(mixed)
    for name in mixed:
        cfg = preset_config(name)
        base = WORLDS[cfg.data.stem]
        base_ids = {t.structure.structure_id for t in plan(base)}
        for extra in cfg.extra_data:
            w = WORLDS[extra.stem]
            assert (w.pixel_size_A(), w.dose) == (base.pixel_size_A(), base.dose), (name, extra)
            if (w.seed, w.n_structures) == (base.seed, base.n_structures):
                assert w.optics != base.optics  # another imaging model, else it is the same data twice
            else:  # models of its own: none may be one of the data world's (its test models above all)
                assert not base_ids & {t.structure.structure_id for t in plan(w)}, (name, extra)


def test_the_card_names_every_set_trained_on() -> None:
    from training.train.export import card_for_run

    cfg = TrainConfig(data=Path("data/paper.h5"), extra_data=[Path("data/paper-optics.h5")])
    card = card_for_run(cfg, {"dose": 7.2, "pixel_size_A": 0.24})
    assert card.training_data["file"] == "data/paper.h5"
    assert card.training_data["extra_files"] == ["data/paper-optics.h5"]
    assert "extra_files" not in card_for_run(TrainConfig(), {"dose": 7.2, "pixel_size_A": 0.24}).training_data
    assert "extra_weights" not in card.training_data
    weighted = cfg.model_copy(update={"extra_data_weights": [2.0]})
    assert card_for_run(weighted, {"dose": 7.2, "pixel_size_A": 0.24}).training_data["extra_weights"] == [2.0]


def test_extra_set_weights_set_how_often_its_images_are_drawn(tmp_path: Path) -> None:
    _set(tmp_path / "a.h5", 0.0)
    _set(tmp_path / "b.h5", 100.0)
    base = TrainConfig(data=tmp_path / "a.h5", extra_data=[tmp_path / "b.h5"])
    uniform = TrainData(base)
    assert uniform.draw_p is None  # no weights: drawn exactly as runs before weights existed
    rng = np.random.default_rng(0)
    assert np.array_equal(uniform.draw(rng, 5), np.random.default_rng(0).integers(uniform.n_train, size=5))
    heavy = TrainData(base.model_copy(update={"extra_data_weights": [3.0]}))
    which = heavy.draw(np.random.default_rng(1), 4000)
    from_b = (heavy.images(which, torch.device("cpu"))[:, 0, 0] >= 100).float().mean().item()
    n_a = sum(f == 0 for f, _ in heavy._sources)
    n_b = heavy.n_train - n_a
    expected = 3 * n_b / (n_a + 3 * n_b)
    assert abs(from_b - expected) < 0.03 and from_b > 0.6  # 3x as often per image as a's
    with pytest.raises(ValueError, match="extra_data_weights"):
        TrainData(base.model_copy(update={"extra_data_weights": [1.0, 2.0]}))
