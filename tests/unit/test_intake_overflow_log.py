"""A denoise queue that stays full logs once, then a sum: not a line per frame (40 a second at 40 Hz)."""

from __future__ import annotations

import logging

import numpy as np

from sbd_stream.frames import Frame, FrameQueue
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import FrameHeader
from sbd_stream.service.pipeline import Intake


def _frame(seq: int) -> Frame:
    data = np.zeros((8, 8), np.uint16)
    return Frame(FrameHeader("acq", seq, float(seq), (8, 8), "uint16"), data)


def test_a_full_denoise_queue_logs_once_then_sums_up(caplog) -> None:
    m = Metrics()
    intake = Intake(FrameQueue(2), [], m)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.service.pipeline"):
        for seq in range(42):
            intake.frame(_frame(seq))
        assert caplog.text.count("denoise queue full") == 1 and "frame 2 of acq not denoised" in caplog.text
        intake.queue.get(timeout=0.1)  # the denoiser caught up; a later frame is taken again
        intake.frame(_frame(42))
        intake.overflow_log.tick(force=True)  # what stopping the pipeline does
    assert m.value("sbd_denoise_overflow_total") == 40
    assert "39 more frames not denoised (denoise queue full)" in caplog.text
    assert caplog.text.count("\n") == 2
