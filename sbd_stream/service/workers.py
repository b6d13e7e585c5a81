"""Several engine workers in one service, with their results put back in frame order.

Why this shape: the batch stage is a pure function of its frames (and of the evidence frames handed to
it, decided at each frame's receipt for all workers and both lanes by an ``EvidenceHistory``), so N
copies of it (one engine per GPU, or per share of the CPU's cores) can run side by side with no shared
state but the batcher they take from. Each worker takes a batch and a ticket under one lock (so
tickets follow the queue's order), denoises on its own engine and device, and hands the result to a
``Reorderer``, which releases tickets strictly in order. Under ``lossless`` consumers therefore see
every frame in order however the workers interleave; under ``latest`` the batcher already hands out
only the newest frames, and releasing in ticket order keeps the output monotonic (a slower worker
delays a newer result by at most one batch, never reorders it). A batch that fails on one worker is
counted and its frames are named in the log and in ``sbd_frames_failed_total``; its ticket is
released empty so nothing behind it waits. Series markers take a ticket too, so a ``series_end``
still follows the last frame of its series.

The complete lane (``service/backlog.py``): once the input has been quiet for ``QUIET_S`` (no live
frame taken), a worker takes a batch of frames the live lane skipped instead, so completion uses the
time the live lane leaves free and delays a live frame by at most one batch. Its results carry
``lane="complete"`` (the sinks decide what to do with them: recorded, not published). At shutdown
the workers finish the backlog before they return, until ``complete_deadline`` (then what is left is
left for offline). When the stop's time for the workers runs out (``give_up``), each finishes the batch
in its hands and takes no more; what is still queued is left for offline too, counted and logged.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sbd_stream.frames import Frame
from sbd_stream.metrics import Metrics
from sbd_stream.service.backlog import Backlog
from sbd_stream.service.batch import BatchResult, BatchStage
from sbd_stream.service.batching import Batcher
from sbd_stream.service.evidence_history import EvidenceHistory
from sbd_stream.service.worker_load import worker_load, worker_samples
from sbd_stream.supervisor import Supervisor

log = logging.getLogger(__name__)

QUIET_S = 0.25
"""The complete lane starts once no live frame has been taken for this long (the input is quiet)."""

__all__ = [
    "Failed",
    "Reorderer",
    "WorkerPool",
    "WorkerSpec",
    "plan_workers",
    "worker_load",
    "worker_samples",
    "worker_stage_name",
]


@dataclass(frozen=True)
class WorkerSpec:
    """Where one engine worker runs: its device and, on a CPU, its share of intra-op threads."""

    index: int
    device: str | None  # None: the backend's default (the best available)
    threads: int | None  # intra-op threads of its engine (CPU); None: the backend's default

    def describe(self) -> dict[str, Any]:
        return {"worker": self.index, "device": self.device or "auto", "threads": self.threads}


def plan_workers(
    workers: int | None,
    devices: Sequence[str] | None,
    device: str | None,
    threads_per_worker: int | None = None,
    cuda_devices: int = 0,
    cores: int | None = None,
) -> list[WorkerSpec]:
    """Pure: how many workers, on which devices, with how many threads each.

    Default count: one per device in ``devices``, else one per visible GPU (``cuda_devices``), else 1.
    Devices are cycled over the workers (two workers per GPU is allowed: ``devices=["cuda:0"]``,
    ``workers=2``). On a CPU the cores are split evenly, because two engines that each think they own
    every core thrash each other's caches and threads.
    """
    cores = cores or os.cpu_count() or 1
    if devices:
        pool: list[str | None] = list(devices)
    elif device is not None and device != "cuda":
        pool = [device]
    elif cuda_devices > 0 and device in (None, "cuda"):
        pool = [f"cuda:{i}" for i in range(cuda_devices)]
    else:
        pool = [device]
    n = workers or len(pool)
    specs = []
    for i in range(n):
        dev = pool[i % len(pool)]
        on_cpu = (dev is None and cuda_devices == 0) or (dev is not None and dev.startswith("cpu"))
        threads = threads_per_worker or (max(1, cores // n) if on_cpu and n > 1 else None)
        specs.append(WorkerSpec(i, dev, threads if on_cpu else None))
    return specs


def worker_stage_name(index: int) -> str:
    """Supervisor stage of worker ``index``: ``denoise`` for the first (as with one worker), then
    ``denoise-1``, ``denoise-2`` ..."""
    return "denoise" if index == 0 else f"denoise-{index}"


@dataclass
class Failed:
    """A ticket whose batch could not be denoised: released empty, its frames already reported."""

    frames: list[Frame] = field(default_factory=list)


class Reorderer:
    """Releases completed tickets strictly in the order they were handed out.

    ``take`` gives the next ticket (callers hold the batcher's lock, so tickets follow the queue);
    ``done`` files a ticket's payload and releases every ticket now at the head, in order, by calling
    ``emit(payload)`` under the reorderer's own lock (so emissions never interleave). Held results
    are bounded by the number of workers: each holds at most one ticket.
    """

    def __init__(self, emit: Callable[[Any], None], on_depth: Callable[[int], None] | None = None) -> None:
        self._emit, self._on_depth = emit, on_depth
        self._next_ticket = 0
        self._next_release = 0
        self._held: dict[int, Any] = {}
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            t = self._next_ticket
            self._next_ticket += 1
            return t

    def done(self, ticket: int, payload: Any) -> int:
        """File ``payload`` for ``ticket``; returns how many tickets were released by this call."""
        with self._lock:
            if ticket < self._next_release or ticket in self._held or ticket >= self._next_ticket:
                raise ValueError(f"ticket {ticket} was never handed out or is already done")
            self._held[ticket] = payload
            released = 0
            while self._next_release in self._held:
                item = self._held.pop(self._next_release)
                self._next_release += 1
                released += 1
                try:
                    self._emit(item)
                except Exception:  # a sink's failure must not wedge the tickets behind this one
                    log.exception("emitting a denoised batch failed; going on with the next")
            if self._on_depth is not None:
                self._on_depth(len(self._held))
            return released

    @property
    def pending(self) -> int:
        """Tickets handed out and not yet released (in flight or waiting for an earlier one)."""
        with self._lock:
            return self._next_ticket - self._next_release

    def idle(self) -> bool:
        return self.pending == 0


class WorkerPool:
    """N denoise workers taking batches from one batcher, results released in order by a reorderer.

    ``emit(BatchResult)`` and ``forward(series message)`` are the pipeline's sinks; they run on the
    worker thread that completed the head of the line, one at a time.
    """

    def __init__(
        self,
        stages: Sequence[BatchStage],
        specs: Sequence[WorkerSpec],
        batcher: Batcher,
        metrics: Metrics,
        supervisor: Supervisor,
        emit: Callable[[BatchResult], None],
        forward: Callable[[Any], None],
        evidence: EvidenceHistory | None = None,
        backlog: Backlog | None = None,
        complete_batch: int = 4,
    ) -> None:
        """``evidence``: the acquisitions' kept frames, when likelihood evidence frames are on; each
        batch, live or complete, takes its frames' evidence from it (decided when they were received);
        the backlog counts the evidence its frames hold. ``backlog``: the complete lane's frames
        (None: no complete lane)."""
        if not stages or len(stages) != len(specs):
            raise ValueError(f"{len(stages)} batch stages for {len(specs)} workers")
        self.stages, self.specs = list(stages), list(specs)
        self.batcher, self.metrics, self.supervisor = batcher, metrics, supervisor
        self._emit_result, self._forward = emit, forward
        self.evidence, self.backlog, self.complete_batch = evidence, backlog, complete_batch
        if backlog is not None and evidence is not None:
            backlog.evidence_of = evidence.peek  # a waiting frame's evidence is memory it holds
        self.complete_deadline: float | None = None  # monotonic; set by ``stop`` (None: no limit)
        self._last_live = 0.0  # monotonic time the last live batch was taken
        self.reorder = Reorderer(self._release, metrics.reorder_held.set)
        self._take = threading.Lock()
        self._stopping = threading.Event()
        self._given_up = threading.Event()  # the stop's time ran out: take no more batches (``give_up``)
        self._hands: dict[int, list[Frame]] = {}  # worker -> the frames it is denoising (``write_off``)
        self._hand_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        for st, sp in zip(self.stages, self.specs, strict=True):
            w = str(sp.index)
            metrics.worker_info.labels(
                worker=w,
                device=str(st.device),
                threads=str(sp.threads or "default"),
                engine=st.denoiser.engine_id,
            ).set(1)
            for c in (
                metrics.worker_frames,
                metrics.worker_batches,
                metrics.worker_busy,
                metrics.worker_errors,
            ):
                c.labels(worker=w)
        metrics.workers.set(len(self.stages))

    def start(self) -> None:
        for i, _ in enumerate(self.stages):
            name = worker_stage_name(i)
            loop = functools.partial(self._loop, i)
            self.threads.append(self.supervisor.spawn(name, loop, name=f"sbd-{name}"))

    def stop(self, complete_timeout_s: float | None = None) -> None:
        """Let the workers finish what is queued (and the complete lane's backlog, for at most
        ``complete_timeout_s``), then return (the caller closes the queue)."""
        if complete_timeout_s is not None:
            self.complete_deadline = time.monotonic() + complete_timeout_s
        self._stopping.set()

    def _live_wait(self) -> float:
        """How long to wait for a live frame: 0.1 s, or only until the input counts as quiet when the
        complete lane has frames (a zero wait while frames still arrive would spin on the lock)."""
        if not self.backlog:
            return 0.1
        if self._stopping.is_set():
            return 0.0
        return min(0.1, max(0.0, QUIET_S - (time.monotonic() - self._last_live)))

    def _completion(self) -> list[Frame]:
        """A batch from the complete lane when the live lane has nothing waiting (caller holds the lock)."""
        bl = self.backlog
        if bl is None or not self.batcher.idle():
            return []
        late = self.complete_deadline is not None and time.monotonic() > self.complete_deadline
        if self._stopping.is_set() and late:
            bl.abandon("the shutdown's lanes.complete_timeout_s ran out")
            return []
        # not while frames are arriving: on a CPU the two lanes share the cores, and every completion
        # taken in a gap between live frames is a live frame shown later (or not at all)
        calm = self._stopping.is_set() or time.monotonic() - self._last_live > QUIET_S
        return bl.take(self.complete_batch) if calm else []

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, end - time.monotonic()))

    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def give_up(self, why: str) -> int:
        """The stop's time for the workers ran out: they finish the batch in hand and take no more.

        What is still queued (the queue is closed by then, so taking it never waits) is left for offline:
        counted in ``sbd_frames_left_for_offline_total`` and logged once with the number (their raw
        frames went to the recorder on arrival). Series markers among it still take a ticket, so a
        ``series_end`` reaches the sinks behind the batches in flight. Returns the frames left.
        """
        self._given_up.set()
        left: list[Frame] = []
        with self._take:  # a worker taking a batch holds it for at most one batch's wait
            while items := self.batcher.next_batch(0.0):
                if isinstance(items[0], Frame):
                    left += [it for it in items if isinstance(it, Frame)]
                else:
                    self.reorder.done(self.reorder.take(), items[0])
            behind = self.backlog.abandon(why) if self.backlog is not None else 0
        self._leave(left, "still queued for denoising", why)
        return len(left) + behind

    def write_off(self, why: str) -> int:
        """The batches still in the workers' hands once the stop's time is over (the process ends without
        them): left for offline, counted once (a result that still comes is then dropped, not counted)."""
        with self._hand_lock:
            frames = [f for batch in self._hands.values() for f in batch]
            self._hands.clear()
        self._leave(frames, "in a worker's hands (its engine still running)", why)
        return len(frames)

    def _mine(self, i: int) -> bool:
        """Worker ``i``'s batch is still its own to count and release (not written off)."""
        with self._hand_lock:
            return self._hands.pop(i, None) is not None

    def _leave(self, frames: list[Frame], where: str, why: str) -> None:
        if not frames:
            return
        self.metrics.frames_left_for_offline.inc(len(frames))
        log.warning(
            "stop: %d frames of %s %s are left for offline (%s; counted in sbd_frames_left_for_offline_total)"
            "; their raw frames are recorded: `sbd-stream replay --offline RECORDING --out OUT.h5` does them",
            len(frames),
            ", ".join(sorted({f.header.acq for f in frames})[:8]),
            where,
            why,
        )

    def _loop(self, i: int) -> None:
        """Worker ``i``: take a batch + ticket, process, file the result; the ticket is always filed."""
        stage_name = worker_stage_name(i)
        while True:
            evidence: list[tuple[Frame, ...]] | None = None
            lane = "live"
            with self._take:
                if self._given_up.is_set():  # the stop's time ran out (``give_up``): no further batch
                    return
                items: list[Any] = self.batcher.next_batch(self._live_wait())
                if items:
                    self._last_live = time.monotonic()
                else:
                    items, lane = self._completion(), "complete"
                ticket = self.reorder.take() if items else None
                if items and self.evidence is not None and isinstance(items[0], Frame):
                    # decided at receipt (the intake's ``keep``, series_start's ``forget``); under the
                    # lock only for frames that did not come through an intake (kept now, in order)
                    evidence = self.evidence.each([it for it in items if isinstance(it, Frame)])
            if ticket is None:
                if self._stopping.is_set() and self.batcher.idle() and not self.backlog:
                    return
                continue
            payload: Any = Failed([it for it in items if isinstance(it, Frame)])
            try:
                if not isinstance(items[0], Frame):
                    payload = items[0]  # a series marker: released in its place in the line
                else:
                    frames = [it for it in items if isinstance(it, Frame)]
                    out: list[Any] = []
                    with self._hand_lock:
                        self._hands[i] = frames
                    self.supervisor.call(
                        stage_name,
                        self._denoise,
                        frames,
                        i,
                        out,
                        evidence,
                        lane,
                        on_error=lambda fr, exc: self._failed(i, fr, exc),  # i: this loop's, fixed
                        what="denoising",
                    )
                    if out:
                        payload = out[0]
            finally:  # even if this thread dies here, the line behind this ticket must move on
                self.reorder.done(ticket, payload)

    def _denoise(
        self,
        frames: list[Frame],
        i: int,
        out: list[Any],
        evidence: list[tuple[Frame, ...]] | None,
        lane: str = "live",
    ) -> None:
        m, w = self.metrics, str(i)
        t0 = time.perf_counter()
        if lane == "live":
            for f in frames:
                m.stage_latency.labels(stage="queue").observe(t0 - f.t_recv)
        stage = self.stages[i]  # evidence only when on: any process(frames) stage fits
        res = stage.process(frames, evidence=evidence) if evidence is not None else stage.process(frames)
        if not self._mine(i):  # written off while it ran: counted as left for offline already
            return
        res.lane = lane
        busy = time.perf_counter() - t0
        for part in ("batch", "denoise", "likelihood"):
            if part in res.timings:
                m.stage_latency.labels(stage=part).observe(res.timings[part])
        m.frames_denoised.inc(len(frames))
        m.batch_size.observe(len(frames))
        m.worker_frames.labels(worker=w).inc(len(frames))
        m.worker_batches.labels(worker=w).inc()
        m.worker_busy.labels(worker=w).inc(busy)
        out.append(res)

    def _failed(self, i: int, frames: list[Frame], exc: Exception) -> None:
        if not self._mine(i):
            return
        m = self.metrics
        m.denoise_errors.inc()
        m.worker_errors.labels(worker=str(i)).inc()
        m.frames_failed.inc(len(frames))
        names = ", ".join(f"{f.header.acq}#{f.header.seq}" for f in frames[:16])
        more = f" (+{len(frames) - 16} more)" if len(frames) > 16 else ""
        log.error(
            "worker %d: a batch of %d frames failed (%s: %s); not denoised: %s%s",
            i,
            len(frames),
            type(exc).__name__,
            exc,
            names,
            more,
        )

    def _release(self, payload: Any) -> None:
        if isinstance(payload, BatchResult):
            now, lat = time.perf_counter(), self.metrics.lane_latency.labels(lane=payload.lane)
            for t in payload.t_recv:
                lat.observe(now - t)
            if payload.lane == "complete":
                self.metrics.frames_completed.inc(len(payload))
            self._emit_result(payload)
        elif not isinstance(payload, Failed):
            self._forward(payload)

    def idle(self) -> bool:
        return self.batcher.idle() and self.reorder.idle() and not self.backlog

    def load(self, elapsed_s: float) -> list[dict[str, Any]]:
        """Per-worker counters and busy fraction over ``elapsed_s`` (summary / status)."""
        m, out = self.metrics, []
        for sp, st in zip(self.specs, self.stages, strict=True):
            w = str(sp.index)
            busy = m.value("sbd_worker_busy_seconds_total", {"worker": w})
            out.append(
                {
                    **sp.describe(),
                    "device": str(st.device),
                    "frames": m.value("sbd_worker_frames_total", {"worker": w}),
                    "batches": m.value("sbd_worker_batches_total", {"worker": w}),
                    "errors": m.value("sbd_worker_errors_total", {"worker": w}),
                    "busy_fraction": busy / elapsed_s if elapsed_s > 0 else 0.0,
                }
            )
        return out
