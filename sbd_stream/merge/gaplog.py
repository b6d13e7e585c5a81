"""How the merge logs gaps: the first range of an acquisition at WARNING, later ones summed up.

The rule and its reasons are ``sources/gaplog.py``'s, shared with the input's sequence accounting so
both say it the same way; this module keeps the merge's own logger and line prefix (``merge: ...``).
The counters (``sbd_merge_gaps_total``, ``sbd_merge_frames_missing_total``) still count every range.
"""

from __future__ import annotations

import logging

from sbd_stream.sources.gaplog import GAP_LOG_EVERY_S
from sbd_stream.sources.gaplog import GapLog as _GapLog

__all__ = ["GAP_LOG_EVERY_S", "GapLog"]

log = logging.getLogger(__name__)


class GapLog(_GapLog):
    """The merge's gap lines of one acquisition (``merge: <acq> <topic>: frames a-b missing (n)``)."""

    def __init__(self, acq: str, every_s: float = GAP_LOG_EVERY_S) -> None:
        super().__init__(acq, every_s, who="merge", logger=log)
