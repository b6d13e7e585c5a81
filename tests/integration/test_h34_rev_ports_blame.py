"""A port in use is blamed on the command's own other setting only where the two binds really collide.

Why (review h34): ``holding_ports`` said "(the same port as metrics.port: give each its own)" whenever an
earlier setting had the same port number, whatever its host. With metrics on 127.0.0.2:P (or
127.0.0.1:P) and the viewer on 127.0.0.1:P (or ``--output tcp://[::1]:P``) held by another program, the
user was told to separate two settings that never clash, and not that another program holds the port.
Real listening sockets on loopback addresses; no mocks.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import free_port

from sbd_stream.cli.service_start import holding_ports
from sbd_stream.config import ServiceSettings
from sbd_stream.service.endpoint_error import EndpointError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

OTHER = "another sbd-stream? choose another port"
ANY = "tcp://127.0.0.1:*"  # an output on any free port: not held


def _settings(metrics: dict[str, object], viewer: dict[str, object], output: str) -> ServiceSettings:
    return ServiceSettings(
        metrics={"enabled": True, **metrics},
        viewer={"enabled": True, **viewer},
        publish={"endpoint": output},
        ingest={"endpoint": "tcp://127.0.0.1:1", "mode": "connect"},
        record={"enabled": False},
    )


@contextmanager
def _listening(family: socket.AddressFamily, host: str, port: int) -> Iterator[socket.socket]:
    """Another program's listening socket on ``host:port`` (skips where the address does not exist)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        pytest.skip(f"{host} not bindable here: {e}")
    s.listen()
    with s:
        yield s


@pytest.fixture
def port() -> int:
    return free_port()


def test_a_port_held_by_another_program_on_another_address_is_not_blamed_on_metrics(port: int) -> None:
    """Ours: metrics on 127.0.0.2:P; another program's: 127.0.0.1:P, which the viewer asks for."""
    with _listening(socket.AF_INET, "127.0.0.2", 0):  # 127.0.0.2 exists (Linux: all of 127/8)
        pass
    with _listening(socket.AF_INET, "127.0.0.1", port):
        settings = _settings({"host": "127.0.0.2", "port": port}, {"host": "127.0.0.1", "port": port}, ANY)
        with pytest.raises(EndpointError) as e, holding_ports(settings):
            pass
    assert str(e.value) == (
        f"viewer.port 127.0.0.1:{port}: Address already in use ({OTHER}, or 0 for any free port)"
    )


def test_an_ipv6_output_held_by_another_program_is_not_blamed_on_the_ipv4_metrics_port(port: int) -> None:
    """Ours: metrics on 127.0.0.1:P; another program's: [::1]:P, which ``--output`` asks for."""
    with _listening(socket.AF_INET6, "::1", port):
        output = f"tcp://[::1]:{port}"
        settings = _settings({"port": port}, {"enabled": False}, output)
        with pytest.raises(EndpointError) as e, holding_ports(settings):
            pass
    assert str(e.value) == f"publish.endpoint {output}: Address already in use ({OTHER})"


def test_every_address_and_one_address_on_one_port_are_still_named_as_a_clash(port: int) -> None:
    """The hint stays where the two settings do collide: metrics on 0.0.0.0:P, the viewer on 127.0.0.1:P."""
    settings = _settings({"host": "0.0.0.0", "port": port}, {"host": "127.0.0.1", "port": port}, ANY)
    with pytest.raises(EndpointError) as e, holding_ports(settings):
        pass
    assert str(e.value) == (
        f"viewer.port 127.0.0.1:{port}: Address already in use "
        "(the same port as metrics.port: give each its own)"
    )
