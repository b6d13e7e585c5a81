"""The card of a stopped run holds the record docs/training.md promises: command, epochs, splits.

Found (session 33, a user of docs/training.md): Ctrl-C in ``sbd-train train`` after a validation, then
``sbd-train export runs/<name> --engine-dir E`` (documented: "also for a run that is still going or was
stopped") wrote a card whose ``training`` had no ``command``, ``epochs``, ``device`` or ``world_size`` and
whose ``training_data`` said ``images: null`` and ``structures: null`` ("Its card holds the training data
(file, preset, split structure ids), the training cost (wall time, steps, epochs, seed, command)"): those
came only from ``summary.json``, which the loop writes at the end. The loop's start line in ``log.jsonl``
now carries them, and the export of a run without (or with an older) summary reads them from there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.sim.synthetic_data import write_synthetic
from training.train.export import card_for_run, load_run
from training.train.loop import train
from training.train.presets import preset_config

pytestmark = pytest.mark.integration  # a real (3-step) training run


def test_a_stopped_runs_card_names_its_command_epochs_and_splits(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "a.h5", n_structures=6, per_structure=3, size=64)
    cfg = preset_config("tiny", data=str(data), out_dir=str(tmp_path / "runs"), threads=1, max_steps=3)
    done = train(cfg, resume=True)
    # what a run stopped by Ctrl-C after its last validation leaves: last.pt, best.pt, no summary.json
    (cfg.run_dir / "summary.json").unlink()
    card = card_for_run(*load_run(cfg.run_dir)[:2], "stopped")
    t, d = card.training, card.training_data
    assert t["interrupted"] is True
    assert t["command"] == done["command"]  # was absent
    assert t["epochs"] == pytest.approx(done["epochs"])  # was absent
    assert t["world_size"] == 1 and t["device"] == "cpu"
    assert d["images"] == done["split_images"]  # was None
    assert d["structures"] == done["structures"]  # was None


def test_a_spent_budget_before_any_validation_writes_strict_json_and_says_so(tmp_path: Path) -> None:
    """A run stopped (Ctrl-C) before its first validation, rerun with a budget already spent, took no
    step and wrote ``"best_val_psnr": -Infinity`` into summary.json and log.jsonl (not JSON: ``jq`` and
    strict parsers refuse it), and the command printed ``best val PSNR -inf dB after 149 steps``."""
    import json

    import torch
    from typer.testing import CliRunner

    from training.cli import app

    data = write_synthetic(tmp_path / "a.h5", n_structures=6, per_structure=3, size=64)
    cfg = preset_config("tiny", data=str(data), out_dir=str(tmp_path / "runs"), threads=1, max_steps=3)
    train(cfg, resume=True)
    # what Ctrl-C before the first validation leaves: last.pt that never validated, no best.pt, no summary
    run = cfg.run_dir
    ck = torch.load(run / "last.pt", weights_only=True)
    ck["state"].update(best_psnr=float("-inf"), best_step=0, last_val=None)
    torch.save(ck, run / "last.pt")
    (run / "best.pt").unlink()
    (run / "summary.json").unlink()
    args = ["train", "--preset", "tiny", "--data", str(data), "--out-dir", str(tmp_path / "runs")]
    res = CliRunner().invoke(app, [*args, "--threads", "1", "--max-steps", "3"], env={"SBD_TRACEBACK": ""})
    assert res.exit_code == 0, res.output
    assert "no validation yet after 3 steps" in res.stdout, res.stdout

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))

    assert strict((run / "summary.json").read_text())["best_val_psnr"] is None
    assert [strict(line) for line in (run / "log.jsonl").read_text().splitlines()][-1]["event"] == "done"
