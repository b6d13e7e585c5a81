"""How the merge logs gaps: the first range of an acquisition at WARNING, later ones summed up.

A stalled or dead instance makes every N-th frame a gap of one frame: one WARNING per missing frame
buried the log (thousands of lines a minute at detector rates) while saying nothing the counters do
not. So per acquisition the first range is logged as it is declared, and later ranges are added up
into at most one WARNING line per ``every_s`` (and a last one when the acquisition closes). The
counters (``sbd_merge_gaps_total``, ``sbd_merge_frames_missing_total``) still count every range.
"""

from __future__ import annotations

import logging

__all__ = ["GAP_LOG_EVERY_S", "GapLog"]

log = logging.getLogger(__name__)

GAP_LOG_EVERY_S = 10.0
"""At most one gap WARNING line per acquisition per this many seconds, after its first gap."""


def _frames(topic: str, first: int, last: int) -> str:
    return f"{topic} frame {first}" if first == last else f"{topic} frames {first}-{last}"


class GapLog:
    """The gap lines of one acquisition; ``now`` is the buffer's clock (seconds, monotonic)."""

    def __init__(self, acq: str, every_s: float = GAP_LOG_EVERY_S) -> None:
        self.acq, self.every_s = acq, every_s
        self.logged_at: float | None = None  # when the last line went out; None before the first gap
        self.gaps = self.frames = 0  # ranges and frames since that line
        self.latest = ""

    def gap(self, topic: str, first: int, last: int, now: float) -> None:
        n = last - first + 1
        if self.logged_at is None:
            self.logged_at = now
            what = f"frame {first}" if n == 1 else f"frames {first}-{last}"
            log.warning("merge: %s %s: %s missing (%d)", self.acq, topic, what, n)
            return
        self.gaps += 1
        self.frames += n
        self.latest = _frames(topic, first, last)
        self.tick(now)

    def tick(self, now: float) -> None:
        """Log what was summed up if the last line is ``every_s`` old."""
        if self.gaps and self.logged_at is not None and now - self.logged_at >= self.every_s:
            self.flush(now)

    def flush(self, now: float) -> None:
        """Log what was summed up now (the acquisition closes)."""
        if not self.gaps:
            return
        log.warning(
            "merge: %s: %d more gaps (%d frames missing) since the last line, the latest %s "
            "(gaps after an acquisition's first are summed up, one line per %.0f s)",
            self.acq,
            self.gaps,
            self.frames,
            self.latest,
            self.every_s,
        )
        self.logged_at, self.gaps, self.frames = now, 0, 0
