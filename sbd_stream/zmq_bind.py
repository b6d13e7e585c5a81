"""Bind a ZeroMQ socket on the port held for it while the engine loaded, handing libzmq the held socket.

Why: ``cli.service_start.holding_ports`` binds and listens on ``--output`` and a bound ``--input``
before the engine loads, so a port in use is reported at once. A peer that connects meanwhile (the
documented order starts ``merge`` before its instances; a bridge dials a ``--bind-input`` service as
soon as it can) waits in that socket's listen backlog. The holder used to be closed right before
libzmq's bind: the waiting connections were reset, the peer's libzmq reported a failed ZMTP handshake,
and ``merge`` logged "the CURVE handshake failed ... is this merge's public key ..." and counted
``sbd_merge_input_disconnects_total{cause="handshake"}`` on every normal start with no CURVE in use,
a bound input counted ``sbd_input_disconnects_total{cause="closed"}`` (audit h36). The port was also
free for a moment between the close and the bind. libzmq can take a listening socket instead of making
one (``ZMQ_USE_FD``, the systemd socket-activation option): it then accepts the waiting connections
and handshakes with them, and the port is never free.
"""

from __future__ import annotations

import os

import zmq

from sbd_stream.httpd import drop_held, take_held

__all__ = ["bind_held"]


def bind_held(sock: zmq.Socket, endpoint: str) -> None:
    """``sock.bind(endpoint)``, on the socket held for ``endpoint`` (``hold_port`` key ``("zmq",
    endpoint)``) where there is one: libzmq adopts it (``ZMQ_USE_FD``) and closes it with ``sock``.
    Without a holder, a plain bind. A failed bind closes the held socket (the command ends there)."""
    held = take_held(("zmq", endpoint))
    drop_held(("zmq", endpoint))  # any further holder under the key (one per endpoint is made)
    if held is None:
        sock.bind(endpoint)
        return
    fd = held.detach()  # the descriptor is libzmq's from here on
    try:
        sock.setsockopt(zmq.USE_FD, fd)
        sock.bind(endpoint)
    except BaseException:
        os.close(fd)
        raise
    finally:
        sock.setsockopt(zmq.USE_FD, -1)  # later binds of this socket (none today) make their own
