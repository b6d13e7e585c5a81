"""The merge's own Prometheus registry (``sbd_merge_*``; it runs beside, not inside, a service) and its
check that the instances' frames of one acquisition name one engine.

Apart from ``merge/service.py`` (the sockets and the loop), which registers nothing itself.
"""

from __future__ import annotations

import collections
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge

from sbd_stream.merge.reorder import OUTPUT_TOPICS
from sbd_stream.metrics import MALFORMED_REASONS
from sbd_stream.protocol import TOPIC_SERIES_END, TOPIC_SERIES_START

__all__ = ["EngineCheck", "MergeMetrics"]

log = logging.getLogger("sbd_stream.merge.service")  # the name its lines always had (log filters)


class MergeMetrics:
    """The merge's own registry (it runs beside, not inside, a service)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.received = Counter(
            "sbd_merge_received", "Messages received, by input index", ["input"], registry=r
        )
        self.frames = Counter(
            "sbd_merge_frames", "Frames forwarded in order, by topic", ["topic"], registry=r
        )
        self.gaps = Counter(
            "sbd_merge_gaps", "Contiguous ranges of frames declared missing", ["topic"], registry=r
        )
        self.missing = Counter("sbd_merge_frames_missing", "Frames declared missing", ["topic"], registry=r)
        self.duplicates = Counter(
            "sbd_merge_duplicates", "Frames seen twice (dropped)", ["topic"], registry=r
        )
        self.late = Counter(
            "sbd_merge_late", "Frames that came after being declared missing (dropped)", ["topic"], registry=r
        )
        self.series = Counter("sbd_merge_series", "Series messages forwarded", ["topic"], registry=r)
        self.series_dropped = Counter(
            "sbd_merge_series_dropped", "Series messages already forwarded for their acquisition", ["topic"],
            registry=r,
        )  # fmt: skip
        self.restarts = Counter(
            "sbd_merge_restarts", "Acquisitions started anew: a restarted sender re-used the id", ["topic"],
            registry=r,
        )  # fmt: skip
        self.joined = Counter(
            "sbd_merge_joined_midseries",
            "Acquisitions whose frames went out without their series_start (the merge joined mid-series)",
            registry=r,
        )
        self.engine_mismatch = Counter(
            "sbd_merge_engine_mismatch", "Acquisitions whose frames named different engines", registry=r
        )
        self.malformed = Counter("sbd_merge_malformed", "Messages refused, by reason", ["reason"], registry=r)
        self.send_dropped = Counter(
            "sbd_merge_send_dropped",
            "Messages sent while a subscriber's pipe stayed full past the wait (it missed them; the ones "
            "sent while ZeroMQ sets its pipe aside are missed uncounted: see the seq gaps)",
            registry=r,
        )
        self.input_disconnects = Counter(
            "sbd_merge_input_disconnects",
            "Connections to an instance lost, by input and cause (handshake: CURVE / ZMTP refused)",
            ["input", "cause"],
            registry=r,
        )
        self.output_handshake_failures = Counter(
            "sbd_merge_output_handshake_failures",
            "Subscribers of the merged stream refused at the handshake (refused: key not allowed)",
            ["cause"],
            registry=r,
        )
        for c in ("refused", "mismatch"):
            self.output_handshake_failures.labels(cause=c)
        self.buffered = Gauge("sbd_merge_buffered_frames", "Frames held waiting for earlier ones", registry=r)
        # what Supervisor counts (same names as the service's, on this registry)
        self.stage_errors = Counter(
            "sbd_stage_errors", "Items that raised, by stage and reason", ["stage", "reason"], registry=r
        )
        self.stage_restarts = Counter("sbd_stage_restarts", "Stage threads restarted", ["stage"], registry=r)
        self.stage_up = Gauge("sbd_stage_up", "1 while the stage's loop runs", ["stage"], registry=r)
        self._by_kind = {
            "frames": self.frames,
            "gaps": self.gaps,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "late": self.late,
            "series": self.series,
            "series_dropped": self.series_dropped,
            "restarts": self.restarts,
        }
        # every label value known at the start is exported at 0, as the service's (docs/service.md):
        # an alert on increase() sees the first event of a series that exists before it
        frame_topics = [t.decode() for t in sorted(OUTPUT_TOPICS)]
        series_topics = [TOPIC_SERIES_START.decode(), TOPIC_SERIES_END.decode()]
        for t in frame_topics:
            for counter in (self.frames, self.gaps, self.missing, self.duplicates, self.late):
                counter.labels(topic=t)
        for t in series_topics:
            self.series.labels(topic=t)
            self.series_dropped.labels(topic=t)
        for t in frame_topics + series_topics:  # a restart is told by a frame or by a series message
            self.restarts.labels(topic=t)
        for reason in MALFORMED_REASONS:
            self.malformed.labels(reason=reason)

    def count(self, kind: str, topic: str, n: int) -> None:
        if kind == "joined":  # one per acquisition, whatever topic told it: no label
            self.joined.inc(n)
            return
        self._by_kind[kind].labels(topic=topic).inc(n)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)

    def total(self, name: str) -> float:
        return sum(s.value for m in self.registry.collect() for s in m.samples if s.name == name)


class EngineCheck:
    """Warns once per acquisition when its frames name different engines (``engine`` header field).

    Instances configured differently (another ``--model`` or backend) each denoise their share, and the
    merged stream alternates between their results; the sampling (``--pixel-size`` / ``--dose``) is in
    no output header, so giving every instance the same settings stays the operator's job."""

    REMEMBER = 256  # acquisitions remembered (the most recent)

    def __init__(self, metrics: MergeMetrics) -> None:
        self.metrics = metrics
        self.first: collections.OrderedDict[str, tuple[str, int] | None] = collections.OrderedDict()

    def __call__(self, acq: str, engine: str | None, index: int) -> None:
        if engine is None:
            return
        if acq not in self.first:
            self.first[acq] = (engine, index)
            while len(self.first) > self.REMEMBER:
                self.first.popitem(last=False)
            return
        seen = self.first[acq]
        if seen is None or seen[0] == engine:  # None: already reported
            return
        self.first[acq] = None
        self.metrics.engine_mismatch.inc()
        log.warning(
            "merge: frames of %s name different engines: %s (input %d) and %s (input %d); the merged "
            "stream alternates between them. Give every instance the same engine and sampling settings "
            "(logged once per acquisition, counted in sbd_merge_engine_mismatch_total)",
            acq, seen[0], seen[1], engine, index,
        )  # fmt: skip
