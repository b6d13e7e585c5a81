"""While the engine loads, `/healthz` names the engine the device's default resolves to (audit h35).

Why: without ``--model`` the starting answer said ``loading the engine (default): ...`` for the whole
load (seconds; minutes with a TensorRT plan build), and ``info --service`` and the viewer's page said
the same, when the service loads a named engine: ``engines.card.live_engine`` (the fast engine on a
CPU, the default one on a CUDA GPU). ``cli.service_start.holding_ports`` now names it once the ports
are held. Real HTTP on 127.0.0.1, the held metrics port's own starting answer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from conftest import free_port

from sbd_stream.cli.service_start import holding_ports
from sbd_stream.config import ServiceSettings
from sbd_stream.engines.card import live_engine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _doing(port: int) -> str:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
    except urllib.error.HTTPError as e:  # the starting answer is a 503
        state = json.loads(e.read())
        assert e.code == 503 and state["starting"] is True, state
        return str(state["doing"])
    raise AssertionError("/healthz answered 200 while the ports were only held")


@pytest.mark.parametrize("device", [None, "cpu"])
def test_the_starting_answer_names_the_default_engine(device: str | None) -> None:
    port = free_port()
    s = ServiceSettings.model_validate(
        {"metrics": {"port": port}, "publish": {"enabled": False}, "denoise": {"device": device}}
    )
    assert s.denoise.model is None  # the default: the engine the device decides
    with holding_ports(s, receiver=False):
        doing = _doing(port)
    assert doing.startswith(f"loading the engine {live_engine(device)}: "), doing  # was "(default)"
