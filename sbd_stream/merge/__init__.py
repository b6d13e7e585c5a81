"""``sbd-stream merge``: a second service that puts the outputs of several ``serve`` instances back in order.

Scale-out across nodes (docs/scale-out-nodes.md): ``reorder`` is the pure ordering buffer, ``service``
its ZeroMQ service. The CLI is ``sbd_stream/cli/merge.py``.
"""

from sbd_stream.merge.reorder import DEFAULT_GAP_TIMEOUT_S, DEFAULT_WINDOW, Released, ReorderBuffer
from sbd_stream.merge.service import MergeMetrics, MergeService, run_merge, status_line

__all__ = [
    "DEFAULT_GAP_TIMEOUT_S",
    "DEFAULT_WINDOW",
    "MergeMetrics",
    "MergeService",
    "Released",
    "ReorderBuffer",
    "run_merge",
    "status_line",
]
