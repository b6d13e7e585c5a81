"""The training loop's bookkeeping on the tiny preset (audit 27, mutation round 4: LP1-LP8, RS1, NW2).

Batch seeding, validation of the last step, the dose each extra validation set is normalised with, the
plateau schedule, early stopping, the seed on resume and the record of the engine a run started from.
Each run is a few steps of the ``tiny`` preset on a synthetic set: seconds.

Early stopping and the plateau schedule follow the validation score; a real tiny run's score only falls,
so the tests that need a rise after a fall script it (``_scripted``): the loop's own code decides, only
the numbers it decides on are given.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import training.train.loop as loop
from sbd_stream.compute.normalisation import Normalisation
from sbd_stream.engines.card import WEIGHTS_FILE, load_card
from training.evaluate.metrics import psnr
from training.sim.synthetic_data import write_synthetic
from training.train.data import TrainData
from training.train.export import card_for_run, load_run
from training.train.presets import preset_config
from training.train.resume import ResumeMismatch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        tmp_path_factory.mktemp("data") / "syn.h5", n_structures=6, per_structure=4, size=64
    )


def _cfg(data: Path, out: Path, **kw: Any):
    return preset_config("tiny", data=str(data), out_dir=str(out), **{"threads": 1, **kw})


def _log(cfg) -> list[dict[str, Any]]:
    return [json.loads(r) for r in (cfg.run_dir / "log.jsonl").read_text().splitlines()]


def _validations(cfg) -> list[dict[str, Any]]:
    return [r for r in _log(cfg) if "val_psnr" in r]


def _early_stops(cfg) -> list[int]:
    return [r["step"] for r in _log(cfg) if r.get("event") == "early_stop"]


def _scripted(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    """The loop's validations score ``scores`` in turn (the extra doses: the same as the nominal)."""
    it = iter(scores)
    last: list[float] = []

    def validate(model, data, norm, device, factor=None) -> float:
        if factor is None:
            last[:] = [next(it)]
        return last[0]

    monkeypatch.setattr(loop, "validate", validate)


def test_every_step_draws_its_own_batch_and_noise(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeded by seed, rank and step: two steps never train on the same batch with the same noise."""
    drawn: list[tuple[str, str]] = []
    real = loop.draw_batch

    def spy(images, rng, spec, dose, norm):
        x, y = real(images, rng, spec, dose, norm)
        drawn.append(tuple(hashlib.sha256(t.numpy().tobytes()).hexdigest() for t in (x, y)))
        return x, y

    monkeypatch.setattr(loop, "draw_batch", spy)
    cfg = _cfg(synthetic, tmp_path, max_steps=6)
    assert loop.train(cfg, resume=False)["steps"] == 6
    assert len(drawn) == 6
    assert len({x for x, _ in drawn}) == 6  # noisy inputs: all different
    assert len({y for _, y in drawn}) == 6  # clean targets too (other images or windows, not only noise)


def test_the_last_step_is_validated_when_max_steps_is_not_a_multiple_of_val_every(
    synthetic: Path, tmp_path: Path
) -> None:
    cfg = _cfg(synthetic, tmp_path, max_steps=7, val_every=3, early_stop_patience=10)
    summary = loop.train(cfg, resume=False)
    assert [r["step"] for r in _validations(cfg)] == [3, 6, 7]
    assert summary["steps"] == 7 and summary["last_val"]["step"] == 7
    ck = torch.load(cfg.run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert ck["state"]["step"] == 7  # the checkpoint a resume or an export reads holds the last step


def test_early_stop_fires_at_validation_patience_plus_one(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A best, then ``patience`` validations without gain: the stop comes at the last of those."""
    _scripted(monkeypatch, [3.0, 2.0, 1.0, 0.0, -1.0, -2.0])
    cfg = _cfg(synthetic, tmp_path, max_steps=6, val_every=1, early_stop_patience=2)
    summary = loop.train(cfg, resume=False)
    assert _early_stops(cfg) == [3] and summary["steps"] == 3 and summary["best_step"] == 1


def test_an_improvement_restarts_the_early_stop_count(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Early stopping counts consecutive validations without gain, not all of the run's."""
    _scripted(monkeypatch, [1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    cfg = _cfg(synthetic, tmp_path, max_steps=10, val_every=1, early_stop_patience=3)
    summary = loop.train(cfg, resume=False)
    assert summary["best_step"] == 4 and summary["best_val_psnr"] == 2.0
    assert _early_stops(cfg) == [7] and summary["steps"] == 7  # 3 without gain after step 4's best


def test_the_plateau_schedule_halves_the_rate_on_a_falling_validation(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scripted(monkeypatch, [3.0, 2.0, 1.0, 0.0])
    cfg = _cfg(
        synthetic, tmp_path, max_steps=4, val_every=1, lr=3e-3, plateau_patience=0, early_stop_patience=10
    )
    loop.train(cfg, resume=False)
    rates = [r["lr"] for r in _validations(cfg)]
    assert rates == pytest.approx([3e-3, 1.5e-3, 7.5e-4, 3.75e-4])
    # and a rising one keeps it
    _scripted(monkeypatch, [0.0, 1.0, 2.0, 3.0])
    cfg = _cfg(
        synthetic,
        tmp_path,
        name="rising",
        max_steps=4,
        val_every=1,
        lr=3e-3,
        plateau_patience=0,
        early_stop_patience=10,
    )
    loop.train(cfg, resume=False)
    assert [r["lr"] for r in _validations(cfg)] == pytest.approx([3e-3] * 4)


def test_extra_validation_doses_are_normalised_by_their_own_dose(synthetic: Path, tmp_path: Path) -> None:
    """Through an identity network the score is the noisy frame's own PSNR, counts / (dose x factor): at
    twice the dose, less noise and a higher PSNR; normalised by the nominal dose it would read 2x bright."""
    cfg = _cfg(synthetic, tmp_path, val_dose_factors=[2.0], val_images=4)
    data = TrainData(cfg)
    data.close()
    norm, cpu = Normalisation(dose=data.dose), torch.device("cpu")
    by_hand = {
        f: float(
            np.mean(
                [
                    psnr(clean, counts / (data.dose * f))
                    for counts, clean in zip(
                        data.val_counts if f == 1 else data.val_counts_at[f], data.val_clean, strict=True
                    )
                ]
            )
        )
        for f in (1, 2.0)
    }
    at1 = loop.validate(nn.Identity(), data, norm, cpu)
    at2 = loop.validate(nn.Identity(), data, norm, cpu, 2.0)
    assert at1 == pytest.approx(by_hand[1], abs=1e-4) and at2 == pytest.approx(by_hand[2.0], abs=1e-4)
    assert at2 > at1 + 1.0  # half the relative noise variance: ~3 dB


def test_resuming_with_another_seed_is_refused_naming_seed(synthetic: Path, tmp_path: Path) -> None:
    """Another seed draws other batches from the resume on, while the card describes one run."""
    loop.train(_cfg(synthetic, tmp_path, max_steps=3, seed=0), resume=True)
    with pytest.raises(ResumeMismatch, match=r"seed: 0 \(run\) vs 1 \(now\)"):
        loop.train(_cfg(synthetic, tmp_path, max_steps=6, seed=1), resume=True)
    assert loop.train(_cfg(synthetic, tmp_path, max_steps=6, seed=0), resume=True)["steps"] == 6


def test_a_run_started_from_an_engine_records_its_weights_checksum(
    synthetic: Path, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    engine = tiny_engine_dir  # conftest's tiny real engine: the tiny preset's network
    card = load_card(engine)
    sha = hashlib.sha256((engine / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert card.checksums[WEIGHTS_FILE] == sha
    cfg = _cfg(synthetic, tmp_path / "runs", max_steps=1, init_from=str(engine))
    summary = loop.train(cfg, resume=False)
    assert summary["init_from"]["weights_sha256"] == sha and summary["init_from"]["path"] == str(engine)
    (event,) = [r for r in _log(cfg) if r.get("event") == "init_from"]
    assert event["weights_sha256"] == sha
    # and the card of the engine exported from the run says where it began (the card, without the ONNX)
    assert card_for_run(*load_run(cfg.run_dir)[:2], "next").training["init_from"]["weights_sha256"] == sha
