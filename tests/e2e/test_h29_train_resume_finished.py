"""Rerunning a finished training run with its own budget takes no step (docs/training.md, "Determinism and
resume": rerun the same command to resume).

Found (session 29, a user's run): ``sbd-train train --max-steps 120 ...`` finished at step 120; the same
command again logged ``event=resumed step=120``, then trained **step 121**, validated and exported: the
loop checked its budget only after a step, so every rerun of a finished (or early-stopped) run moved its
weights by one more step past the budget it was given, and a script that reran a command to be sure it
had finished changed the engine it exported. Now a run whose step budget, time budget or early-stopping
patience is spent ends at once (``event=budget_spent`` / ``early_stop`` in its log) with its weights as
they were; a larger budget still goes on (tests/e2e/test_train_resume.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.sim.synthetic_data import write_synthetic
from training.train.loop import train
from training.train.presets import preset_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("data") / "a.h5", n_structures=6, per_structure=3, size=64)


def _cfg(data: Path, out: Path, **kw):
    return preset_config("tiny", data=str(data), out_dir=str(out), **{"threads": 1, "max_steps": 3, **kw})


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    ck = torch.load(run / name, weights_only=True)
    return ck.get("model", ck)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_run_rerun_with_its_budget_takes_no_step(data: Path, tmp_path: Path) -> None:
    first = train(_cfg(data, tmp_path), resume=True)
    assert first["steps"] == 3
    run = tmp_path / "tiny"
    last, best = _weights(run, "last.pt"), _weights(run, "best.pt")
    again = train(_cfg(data, tmp_path), resume=True)
    assert again["steps"] == 3  # was 4: one step past the budget on every rerun
    assert again["best_step"] == first["best_step"]
    assert _same(_weights(run, "last.pt"), last) and _same(_weights(run, "best.pt"), best)
    events = [json.loads(line).get("event") for line in (run / "log.jsonl").read_text().splitlines()]
    assert "budget_spent" in events


def test_an_early_stopped_run_rerun_with_its_patience_stays_stopped(data: Path, tmp_path: Path) -> None:
    # patience 1 with a learning rate of 0: the weights never change, so the second validation is no
    # better than the first and the run stops early at step 2 of its 9
    cfg = _cfg(data, tmp_path, max_steps=9, val_every=1, early_stop_patience=1, lr=0.0)
    first = train(cfg, resume=True)
    assert first["steps"] == 2
    run = tmp_path / "tiny"
    last = _weights(run, "last.pt")
    again = train(cfg, resume=True)
    assert again["steps"] == 2  # was 3
    assert _same(_weights(run, "last.pt"), last)
