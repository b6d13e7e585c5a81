"""ZeroMQ contexts that a sender owns and ends itself, never by the garbage collector.

Why own ones: frames are sent without a copy, so libzmq reads the arrays after ``send`` returned. On
the shared, never-ended ``Context.instance()`` a socket's LINGER does not hold the process, and
``serve`` / ``replay --publish`` / ``emulate`` behind a slow subscriber ended while frames were queued:
the interpreter's teardown freed them under libzmq's I/O thread and the process aborted ("Bad address
(src/tcp.cpp:227)", status 134; audit 25). Ending its own context waits (at most the sockets' LINGER)
while the frames are alive.

Why held here until ended: pyzmq's ``Context.__del__`` destroys an unreachable context, and a sender
built but never started (a pipeline made only for its metrics) then had its context ended by the
garbage collector in whatever thread happened to collect: that ``term`` hung a replay for good. A
context in ``_HELD`` is never collected; one never ended is left to the process's exit, as the shared
one always was.
"""

from __future__ import annotations

import threading

import zmq

__all__ = ["end_context", "own_context"]

_HELD: set[zmq.Context] = set()
_LOCK = threading.Lock()


def own_context() -> zmq.Context:
    """A new context, kept alive until ``end_context``."""
    ctx = zmq.Context()
    with _LOCK:
        _HELD.add(ctx)
    return ctx


def end_context(ctx: zmq.Context) -> None:
    """End ``ctx`` once its sockets are closed: returns when what they queued has left (at most each
    socket's LINGER). Its CURVE authenticator (``security.authenticator``) is stopped first."""
    from sbd_stream.security import stop_authenticator

    stop_authenticator(ctx)
    ctx.term()
    with _LOCK:
        _HELD.discard(ctx)
