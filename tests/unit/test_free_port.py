"""The test helper ``free_port`` hands out a port a process can bind at once (audit 26: with a ZeroMQ
socket closed just before, 2 of 20 immediate binds failed with "Address already in use")."""

from __future__ import annotations

import socket

import conftest
import pytest
import zmq
from conftest import free_port


def test_a_port_from_free_port_can_be_bound_at_once_by_zeromq() -> None:
    ctx = zmq.Context()
    failed = 0
    try:
        for _ in range(60):
            sock = ctx.socket(zmq.SUB)
            try:
                sock.bind(f"tcp://127.0.0.1:{free_port(ctx)}")
            except zmq.ZMQError:
                failed += 1
            finally:
                sock.close(0)
    finally:
        ctx.term()
    assert failed == 0, f"{failed} of 60 ports were still taken when bound"


def test_free_port_draws_outside_the_kernels_ephemeral_range() -> None:
    """A port from ``bind(0)`` lies in the range the kernel hands every outgoing connection its source
    port from, so any client on the machine could take it before the test's process bound it; ports
    from ``free_port`` do not, and none comes twice in one run."""
    ephemeral = conftest._ephemeral_ports()
    if not conftest._port_pool():
        pytest.skip(f"no room outside the ephemeral range {ephemeral.start}-{ephemeral.stop - 1}")
    ports = [free_port() for _ in range(40)]
    assert not [p for p in ports if p in ephemeral], (ephemeral, ports)
    assert len(set(ports)) == len(ports)
    srv = socket.create_server(("127.0.0.1", 0))
    with srv, socket.create_connection(srv.getsockname()) as c:  # what an outgoing connection draws from
        assert c.getsockname()[1] in ephemeral


def test_free_port_skips_a_port_held_on_any_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port held on the IPv4 loopback, the IPv6 loopback or the wildcard is not handed out: the
    service under test may bind either loopback (``--output tcp://[::1]:port``)."""
    holders = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        try:
            socket.create_server(("::1", 0), family=socket.AF_INET6).close()
            holders.append((socket.AF_INET6, "::1"))
        except OSError:
            pass  # no IPv6 loopback here
    for family, host in holders:
        held = free_port()
        monkeypatch.setattr(conftest, "_port_pool", lambda h=held: [h])  # the only port it may choose
        conftest._PORTS_GIVEN.discard(held)
        with socket.create_server((host, held), family=family):
            assert free_port() != held, host  # the kernel's choice instead
        monkeypatch.undo()
