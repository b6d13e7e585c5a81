"""How gaps in an acquisition's numbering are logged: the first range at WARNING, later ones summed up.

A stalled or dead instance makes every N-th frame a gap of one frame: one WARNING per missing frame
buried the log (thousands of lines a minute at detector rates) while saying nothing the counters do
not. Logging nothing (the service's input did that) left a site with an aggregate ``missing N`` and no
hint which acquisition lost which frames. So per acquisition the first range is logged as it is
declared, and later ranges are added up into at most one WARNING line per ``every_s`` (and a last one
when the acquisition closes). The counters still count every range.

Used by the input's sequence accounting (``sources/sequence.py``) and by ``sbd-stream merge``
(``merge/gaplog.py``, which sits above this layer), so both say it the same way.
"""

from __future__ import annotations

import logging

__all__ = ["GAP_LOG_EVERY_S", "GapLog"]

log = logging.getLogger(__name__)

GAP_LOG_EVERY_S = 10.0
"""At most one gap WARNING line per acquisition per this many seconds, after its first gap."""


def _frames(topic: str, first: int, last: int) -> str:
    what = f"frame {first}" if first == last else f"frames {first}-{last}"
    return f"{topic} {what}" if topic else what


class GapLog:
    """The gap lines of one acquisition; ``now`` is the caller's clock (seconds, monotonic).

    ``who`` starts each line (``merge``, ``input``); ``name`` names the acquisition in it; ``hint``
    ends the first line (what the count means, where it is counted)."""

    def __init__(
        self,
        name: str,
        every_s: float = GAP_LOG_EVERY_S,
        who: str = "merge",
        hint: str = "",
        logger: logging.Logger = log,
    ) -> None:
        self.acq, self.every_s, self.who, self.hint, self.log = name, every_s, who, hint, logger
        self.logged_at: float | None = None  # when the last line went out; None before the first gap
        self.gaps = self.frames = 0  # ranges and frames since that line
        self.latest = ""

    def gap(self, topic: str, first: int, last: int, now: float) -> None:
        """Frames ``first`` .. ``last`` of ``topic`` ("" for an input's frames) are missing."""
        n = last - first + 1
        if self.logged_at is None:
            self.logged_at = now
            where = f"{self.acq} {topic}" if topic else self.acq
            what = f"frame {first}" if n == 1 else f"frames {first}-{last}"
            self.log.warning("%s: %s: %s missing (%d)%s", self.who, where, what, n, self.hint)
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
        self.log.warning(
            "%s: %s: %d more gaps (%d frames missing) since the last line, the latest %s "
            "(gaps after an acquisition's first are summed up, one line per %.0f s)",
            self.who,
            self.acq,
            self.gaps,
            self.frames,
            self.latest,
            self.every_s,
        )
        self.logged_at, self.gaps, self.frames = now, 0, 0
