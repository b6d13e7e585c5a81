"""Which acquisitions keep evidence frames: many interleaved ones, and the memory bound.

The audit (runs 5b / 5c): 20 acquisitions sent round-robin with ``--evidence-frames 2`` gave all 400
``llr`` messages ``meta.evidence_frames`` 0. The history kept the frames of 8 acquisitions only, so each
frame's acquisition had been forgotten by the time its next frame came, and nothing said so.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from sbd_stream.frames import Frame
from sbd_stream.protocol import FrameHeader
from sbd_stream.service.evidence_history import MIN_ACQS, EvidenceHistory

LOGGER = "sbd_stream.service.evidence_history"


def _frame(acq: str, seq: int, side: int = 16) -> Frame:
    return Frame(FrameHeader(acq, seq, time.time(), (side, side), "uint8"), np.zeros((side, side), np.uint8))


def _round_robin(history: EvidenceHistory, n_acqs: int, rounds: int, side: int = 16) -> list[list[int]]:
    """Per round, the number of kept frames each acquisition's frame got (A0 B0 ... A1 B1 ...)."""
    return [[len(history.take([_frame(f"a{i}", q, side)])) for i in range(n_acqs)] for q in range(rounds)]


def test_twenty_interleaved_acquisitions_each_keep_their_evidence(caplog: pytest.LogCaptureFixture) -> None:
    history = EvidenceHistory(2)
    with caplog.at_level(logging.DEBUG, LOGGER):
        got = _round_robin(history, 20, 5)
    assert got == [[min(q, 2)] * 20 for q in range(5)]  # the N before each; was 0 past 8 acquisitions
    assert history.kept_bytes == 20 * 4 * 16 * 16  # 2N frames of each
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_past_the_memory_budget_the_least_recent_go_and_that_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    frame_bytes = 64 * 64
    budget = 12 * frame_bytes  # room for one frame of each of 12 acquisitions
    history = EvidenceHistory(2, budget_bytes=budget)
    with caplog.at_level(logging.DEBUG, LOGGER):
        got = _round_robin(history, 20, 4, side=64)
        assert history.kept_bytes <= budget
        ok = _round_robin(EvidenceHistory(2, budget_bytes=budget), MIN_ACQS, 3, side=64)
    assert got[1] == [0] * 20  # 20 acquisitions round-robin do not fit: each forgotten before its next
    assert ok == [[q] * MIN_ACQS for q in range(3)]  # the most recent 8 are kept whatever their size
    warned = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "kept frames of a0 were forgotten while it still sends" in warned[0]
    assert "meta.evidence_frames" in warned[0]


def test_a_new_series_of_a_forgotten_acquisition_is_not_reported() -> None:
    history = EvidenceHistory(1, max_acqs=2)
    _round_robin(history, 3, 1)
    history.forget("a0")  # its series_start: a new series begins, nothing of it was lost
    assert history.take([_frame("a0", 0)]) == [] and "a0" not in history._forgotten
