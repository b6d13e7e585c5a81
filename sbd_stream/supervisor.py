"""One supervisor for every long-lived thread of the service: errors are counted, threads restarted.

Why: a single bad message used to kill a stage's thread (the publisher on a NaN in ``meta``, the
recorder on a shape change) while the process kept running, exited 0 and showed nothing in its
metrics. A stage now has two layers of protection, both here so every stage behaves the same:

* ``call``: the per-item guard. An ``Exception`` raised while handling one item (a message, a
  frame, a record) is logged once with a description of that item, counted in
  ``sbd_stage_errors_total{stage,reason}``, the item is set aside (``quarantine``: the last few are
  listed on ``/healthz``) and the stage goes on with the next item. A stage may pass ``on_error``
  to clean up after that item (the recorder closes the acquisition's file).
* ``spawn``: the thread itself. Anything that escapes the loop (a ``BaseException`` from a
  handler, a bug in the loop) ends that run, is counted in ``sbd_stage_restarts_total{stage}`` and
  the loop is started again after a short back-off. More than ``max_restarts`` crashes within
  ``window_s`` means the stage cannot go on: it is marked failed, ``failed`` is set with the reason
  (``serve`` then stops and exits non-zero) and ``/healthz`` answers 503.

``health()`` is what ``/healthz`` serves and ``sbd_stage_up{stage}`` mirrors: each stage's state.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STAGES", "StageState", "Supervisor", "describe", "leave_running", "left_running", "wait_running"]

log = logging.getLogger(__name__)

STAGES = ("receiver", "denoise", "publisher", "recorder", "metrics", "viewer")
"""Stages the service runs under supervision (their labels are exported at zero from the start)."""


class StageState(enum.StrEnum):
    starting = "starting"
    up = "up"
    restarting = "restarting"  # crashed, waiting for its back-off before running again
    stopped = "stopped"  # its loop returned: a clean shutdown
    failed = "failed"  # restarts exhausted (or not restartable): the service cannot go on
    dead = "dead"  # its thread is gone without the supervisor seeing why (should never happen)


@dataclass
class _Stage:
    name: str
    state: StageState = StageState.starting
    restarts: int = 0
    errors: int = 0
    last_error: str | None = None
    thread: threading.Thread | None = None
    crashes: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=64))


_LEFT: list[tuple[threading.Thread, str]] = []  # what a stop gave up on (``leave_running``)


def leave_running(thread: threading.Thread, what: str) -> None:
    """A stop ran out of time with ``thread`` still running (``what`` says what it is doing)."""
    _LEFT.append((thread, what))


def left_running() -> list[str]:
    """What a stop gave up on that still runs: the CLI then ends with ``os._exit`` (cli/app.py ``_main``).

    Why: these are daemon threads; Python freezes them where they are when it finalizes, and one frozen
    inside h5py held its lock while the module teardown waited for it (``serve`` hung for good after its
    summary), one inside the engine ended the process by SIGABRT.
    """
    return [what for thread, what in _LEFT if thread.is_alive()]


def describe(item: Any, limit: int = 300) -> str:
    """A short, log-safe description of the item that caused an error (never its pixels)."""
    if isinstance(item, list | tuple) and not all(_buffer_like(p) for p in item):  # e.g. a batch
        return (f"{len(item)} items: " + "; ".join(describe(x, 120) for x in item[:3]))[:limit]
    if isinstance(item, list | tuple):  # raw multipart message parts: headers yes, payloads by size
        out = []
        for p in item[:4]:
            if not _buffer_like(p):
                out.append(repr(p)[:80])
                continue
            buf: Any = getattr(p, "buffer", p)  # _buffer_like: a zmq.Frame's buffer or the object itself
            mv = memoryview(buf).cast("B")
            out.append(repr(bytes(mv[:100])) if len(mv) <= 2048 else f"<{len(mv)} bytes>")
        return (f"message of {len(item)} parts: " + ", ".join(out))[:limit]
    fields: list[str] = []
    header = getattr(item, "header", None)
    for obj in (item, header):
        if obj is None:
            continue
        for name in ("topic", "kind", "acq", "seq", "shape", "dtype"):
            v = getattr(obj, name, None)
            if v is not None and not any(f.startswith(name + "=") for f in fields):
                fields.append(f"{name}={v!r}")
    data = getattr(item, "data", None)
    if data is not None and hasattr(data, "shape"):
        fields.append(f"data={tuple(data.shape)} {data.dtype}")
    meta = getattr(item, "meta", None) or getattr(header, "meta", None)
    if meta:
        fields.append(f"meta={str(meta)[:120]}")
    text = f"{type(item).__name__}(" + ", ".join(fields) + ")" if fields else repr(item)
    return text[:limit]


def _buffer_like(p: Any) -> bool:
    try:
        memoryview(getattr(p, "buffer", p))
    except TypeError:
        return False
    return True


class Supervisor:
    """Runs stage loops on threads, restarts them when they die, and guards their items."""

    def __init__(
        self,
        metrics: Any = None,
        max_restarts: int = 5,
        window_s: float = 60.0,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        self.metrics = metrics
        self.max_restarts, self.window_s = max_restarts, window_s
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.failed = threading.Event()
        self.failure: str | None = None
        self.quarantine: collections.deque[dict[str, str]] = collections.deque(maxlen=32)
        self._stages: dict[str, _Stage] = {}
        self._lock = threading.Lock()

    # --- threads -----------------------------------------------------------------------------------
    def spawn(
        self,
        stage: str,
        run: Callable[[], None],
        finalize: Callable[[], None] | None = None,
        name: str | None = None,
        restartable: bool = True,
    ) -> threading.Thread:
        """Run ``run`` on a daemon thread until it returns; restart it when it raises.

        ``finalize`` runs once, when the loop is over for good (returned, or gave up), to release
        what the loop owns (sockets, files): a restart must find them still open.
        """
        st = self._stage(stage)
        st.state = StageState.starting
        th = threading.Thread(
            target=self._body, args=(st, run, finalize, restartable), name=name or f"sbd-{stage}", daemon=True
        )
        st.thread = th
        th.start()
        return th

    def _body(
        self, st: _Stage, run: Callable[[], None], finalize: Callable[[], None] | None, restartable: bool
    ) -> None:
        try:
            while True:
                self._set(st, StageState.up)
                try:
                    run()
                except BaseException as exc:  # the thread must outlive anything its loop raises
                    if not restartable:
                        why = f"stage {st.name} died and must not run twice: {type(exc).__name__}: {exc}"
                        log.critical("%s", why, exc_info=exc)
                        st.last_error = why[:300]
                        self.fail(st.name, why)
                        return
                    if self._may_restart(st, exc):
                        continue
                    return
                self._set(st, StageState.stopped)
                return
        finally:
            if finalize is not None:
                try:
                    finalize()
                except Exception:
                    log.exception("stage %s: releasing its resources failed", st.name)

    def _may_restart(self, st: _Stage, exc: BaseException) -> bool:
        now = time.monotonic()
        st.crashes.append(now)
        recent = sum(1 for t in st.crashes if now - t <= self.window_s)
        st.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if recent > self.max_restarts:
            why = (
                f"stage {st.name} crashed {recent} times within {self.window_s:g} s "
                f"(limit {self.max_restarts}); last: {st.last_error}"
            )
            log.critical("%s: it cannot go on", why, exc_info=exc)
            self.fail(st.name, why)
            return False
        st.restarts += 1
        if self.metrics is not None:
            self.metrics.stage_restarts.labels(stage=st.name).inc()
        self._set(st, StageState.restarting)
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (recent - 1))
        log.error("stage %s crashed; restarting it in %.2f s", st.name, delay, exc_info=exc)
        time.sleep(delay)
        return True

    def fail(self, stage: str, why: str) -> None:
        """Mark a stage as unable to go on: ``/healthz`` fails and ``serve`` exits non-zero."""
        self._set(self._stage(stage), StageState.failed)
        with self._lock:
            if self.failure is None:
                self.failure = why
        self.failed.set()

    # --- items -------------------------------------------------------------------------------------
    def call(
        self,
        stage: str,
        fn: Callable[..., Any],
        item: Any,
        *args: Any,
        on_error: Callable[[Any, Exception], None] | None = None,
        logger: logging.Logger | None = None,
        what: str = "handling",
    ) -> bool:
        """``fn(item, *args)`` behind the per-item guard; False when it raised (counted, quarantined)."""
        try:
            fn(item, *args)
        except Exception as exc:
            self.error(stage, exc, item, logger=logger, what=what)
            if on_error is not None:
                try:
                    on_error(item, exc)
                except Exception:
                    log.exception("stage %s: cleaning up after a failed item failed too", stage)
            return False
        return True

    def error(
        self,
        stage: str,
        exc: BaseException,
        item: Any = None,
        logger: logging.Logger | None = None,
        what: str = "handling",
    ) -> None:
        """Count, log (once, with the item) and quarantine one failed item of ``stage``."""
        reason = type(exc).__name__
        st = self._stage(stage)
        text = describe(item) if item is not None else "-"
        with self._lock:
            st.errors += 1
            st.last_error = f"{reason}: {exc}"[:300]
            entry = {"stage": stage, "reason": reason, "error": str(exc)[:200], "item": text}
            self.quarantine.append(entry | {"t": f"{time.time():.3f}"})
        if self.metrics is not None:
            self.metrics.stage_errors.labels(stage=stage, reason=reason).inc()
        (logger or log).error(
            "%s: %s %s failed (%s); set aside, going on", stage, what, text, reason, exc_info=exc
        )

    # --- state -------------------------------------------------------------------------------------
    def _stage(self, name: str) -> _Stage:
        with self._lock:
            st = self._stages.get(name)
            if st is None:
                st = self._stages[name] = _Stage(name)
            return st

    def _set(self, st: _Stage, state: StageState) -> None:
        st.state = state
        if self.metrics is not None:
            self.metrics.stage_up.labels(stage=st.name).set(1 if state is StageState.up else 0)

    def running(self, grace_s: float = 0.0) -> list[tuple[str, threading.Thread]]:
        """(stage, thread) of every thread of this supervisor still alive after ``grace_s`` in all."""
        end = time.monotonic() + grace_s
        with self._lock:
            threads = [(name, st.thread) for name, st in self._stages.items() if st.thread is not None]
        for _, th in threads:
            th.join(max(0.0, end - time.monotonic()))
        return [(name, th) for name, th in threads if th.is_alive()]

    def state(self, stage: str) -> StageState | None:
        st = self._stages.get(stage)
        return None if st is None else st.state

    def health(self) -> dict[str, Any]:
        """Per-stage liveness: what ``/healthz`` serves (``ok`` False when any stage failed or died)."""
        stages: dict[str, Any] = {}
        ok = not self.failed.is_set()
        with self._lock:
            items = list(self._stages.items())
        for name, st in items:
            state = st.state
            alive = st.thread is None or st.thread.is_alive()
            if state in (StageState.up, StageState.restarting) and not alive:
                state = StageState.dead
            ok = ok and state not in (StageState.failed, StageState.dead)
            stages[name] = {
                "state": state.value,
                "up": state is StageState.up,
                "restarts": st.restarts,
                "errors": st.errors,
                "last_error": st.last_error,
            }
        return {"ok": ok, "failure": self.failure, "stages": stages, "quarantine": list(self.quarantine)[-8:]}


def wait_running(
    stop: threading.Event,
    supervisor: Supervisor,
    what: str,
    status: Callable[[str], None] | None = None,
    line: Callable[[float], str] | None = None,
    every_s: float = 2.0,
) -> None:
    """A long-running command's main loop: until ``stop`` is set or a supervised stage cannot go on.

    ``status(line(elapsed))`` every ``every_s`` seconds (``serve``, ``merge``).
    """
    t0 = time.perf_counter()
    next_status = every_s
    while not stop.wait(0.2):
        if supervisor.failed.is_set():  # a stage that cannot go on: stop, and say why
            log.critical("stopping %s: %s", what, supervisor.failure)
            return
        elapsed = time.perf_counter() - t0
        if status is not None and line is not None and elapsed >= next_status:
            next_status += every_s
            status(line(elapsed))
