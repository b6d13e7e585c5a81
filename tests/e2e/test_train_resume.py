"""Resuming a run: the same run or a one-line refusal; a run started from an engine stays frozen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_engine

from training.sim.dataset import EmptySplit
from training.sim.synthetic_data import write_synthetic
from training.train.export import load_run
from training.train.loop import train
from training.train.presets import preset_config
from training.train.resume import ResumeMismatch


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("data")
    a = write_synthetic(d / "a.h5", n_structures=6, per_structure=3, size=64)
    b = write_synthetic(d / "b.h5", n_structures=6, per_structure=3, size=64, seed=5)
    return a, b


def _cfg(data: Path, out: Path, **kw):
    return preset_config("tiny", data=str(data), out_dir=str(out), **{"threads": 1, "max_steps": 3, **kw})


def test_resuming_with_other_options_is_refused_naming_each_field(sets, tmp_path: Path) -> None:
    a, b = sets
    train(_cfg(a, tmp_path), resume=True)
    config = (tmp_path / "tiny" / "config.json").read_text()
    with pytest.raises(ResumeMismatch) as e:
        train(_cfg(b, tmp_path, batch=4, max_steps=6), resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "data: " in msg and "batch: 2 (run) vs 4 (now)" in msg
    assert str(a) in msg and str(b) in msg and "--name" in msg and "delete" in msg
    assert "max_steps" not in msg  # a budget may change
    assert (tmp_path / "tiny" / "config.json").read_text() == config  # not overwritten
    # budgets and operational fields may change: the run goes on
    summary = train(_cfg(a, tmp_path, max_steps=6, log_every=2, device="cpu"), resume=True)
    assert summary["steps"] == 6


def test_a_run_started_from_an_engine_stays_frozen_when_resumed_without_init_from(
    sets, tmp_path: Path
) -> None:
    """Leaving --init-from out on resume means "as the run was started": batch norm stays frozen (the
    running statistics never move) and the card keeps the freeze and the engine."""
    a, _ = sets
    engine = make_tiny_engine(tmp_path / "eng", pixel_size_A=0.155, dose_e_per_A2=0.45 / 0.155**2)
    train(_cfg(a, tmp_path / "runs", init_from=str(engine)), resume=True)
    first = torch.load(tmp_path / "runs" / "tiny" / "last.pt", weights_only=True)["model"]
    summary = train(_cfg(a, tmp_path / "runs", max_steps=6), resume=True)
    assert summary["steps"] == 6 and summary["freeze_norm_after"] == 0
    second = torch.load(tmp_path / "runs" / "tiny" / "last.pt", weights_only=True)["model"]
    stats = [k for k in first if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(first[k], second[k]) for k in stats)
    cfg, card_summary, _ = load_run(tmp_path / "runs" / "tiny")
    assert cfg.init_from == engine and card_summary["freeze_norm_after"] == 0
    with pytest.raises(ResumeMismatch, match="init_from"):
        train(_cfg(a, tmp_path / "runs", max_steps=9, init_from=str(tmp_path / "other")), resume=True)


def test_an_empty_split_is_refused_before_the_run_folder_exists(sets, tmp_path: Path) -> None:
    a, _ = sets
    cfg = _cfg(a, tmp_path, split={"val_fraction": 0.0, "test_fraction": 0.2})
    with pytest.raises(EmptySplit, match="val split holds no images"):
        train(cfg)
    assert not cfg.run_dir.exists()


def test_init_from_an_engine_of_another_pixel_warns_once(sets, tmp_path: Path, capfd) -> None:
    a, _ = sets
    engine = make_tiny_engine(tmp_path / "eng", pixel_size_A=0.24, dose_e_per_A2=7.2 / 0.24**2)
    train(_cfg(a, tmp_path / "runs", init_from=str(engine)))
    err = capfd.readouterr().err
    assert err.count("warning: --init-from eng was trained at pixel 0.24 A") == 1
    log = (tmp_path / "runs" / "tiny" / "log.jsonl").read_text().splitlines()
    assert json.loads(log[0])["event"] == "init_from"
