"""The quality gate's own rules (training/evaluate/quality_gate.py) on stand-in methods, not only on the
shipped engine: a gate that passes every engine, or that scores half the orientations, passed
tests/e2e/test_engine_quality.py unseen (audit 27, mutants QG1 and QG2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import make_tiny_engine
from scipy.ndimage import gaussian_filter

from training.evaluate.quality_gate import (
    MARGIN_DB,
    margin_failures,
    orientation_scores,
    quality_failures,
    worst_margins,
)


def test_orientation_scores_turn_the_noisy_frame_into_all_8_orientations() -> None:
    seen: list[np.ndarray] = []

    def identity(counts: np.ndarray) -> np.ndarray:
        seen.append(counts.copy())
        return counts

    scores = orientation_scores(identity)
    assert len(scores) == 8 and len(seen) == 8 and all(np.isfinite(scores))
    first = seen[0]
    # the 8 right-angle orientations (rotations and their mirrors) of one frame, each once
    dihedral = [np.rot90(first, k) for k in range(4)] + [np.rot90(first, k)[:, ::-1] for k in range(4)]
    for i, a in enumerate(seen):
        assert sum(np.array_equal(a, d) for d in dihedral) == 1, i
        for b in seen[i + 1 :]:
            assert not np.array_equal(a, b)
    # the identity's score moves with the frame: every orientation scores the same noise
    assert max(scores) - min(scores) < 1e-6


def test_a_blur_is_below_the_margins_and_refused_in_both_regions() -> None:
    """A fixed 8 px blur (the audit's stand-in) scores 2-3 dB *below* the oracle low-pass."""
    worst = worst_margins(lambda counts: gaussian_filter(counts, 8.0))
    assert set(worst) == set(MARGIN_DB)
    assert all(np.isfinite(v) and v < 0 for v in worst.values()), worst
    failures = margin_failures(worst, MARGIN_DB)
    assert [f.split(":")[0] for f in failures] == ["support", "particle"]
    assert margin_failures({"support": 3.0, "particle": 3.5}, MARGIN_DB) == []  # at the margin: passes


def test_an_engine_that_returns_its_input_is_refused(tmp_path: Path) -> None:
    """An untrained network whose output tracks its input: ~25 dB below the oracle blur, refused on
    the margins (without the minute and a half of orientation passes)."""
    failures, margins = quality_failures(make_tiny_engine(tmp_path / "identity"))
    assert [f.split(":")[0] for f in failures] == ["support", "particle"], failures
    assert all(np.isfinite(v) and v < -10 for v in margins.values()), margins
