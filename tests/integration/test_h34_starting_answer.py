"""A port held while the engine loads answers at once that the service is starting (review h34).

Why: ``serve``, ``demo`` and ``replay`` hold their HTTP ports from the start (``httpd.hold_port``), and
a probe, a scrape or ``info --service`` that connected during the engine load (minutes with a TensorRT
plan build) waited with no answer until its own timeout. Now the held socket serves the starting
answer (``httpd.StartingHandler``) until the real server adopts it. Real sockets and real HTTP on
127.0.0.1; ``info --service`` as a real process.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families

from sbd_stream.httpd import drop_held, hold_port, set_starting
from sbd_stream.metric_names import EXPORTED_NAMES, starting_text
from sbd_stream.metrics import Metrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SBD = str(Path(sys.executable).parent / "sbd-stream")


def _ask(port: int, method: str, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request(method, path, headers={} if host is None else {"Host": host})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def _samples(text: str) -> dict[str, float]:
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
def held_metrics() -> Iterator[int]:
    """A metrics port held as ``serve`` holds it before its engine loads, saying what it does."""
    port = free_port()
    key = ("http", "127.0.0.1", port)
    set_starting("loading the engine test-engine: onnxruntime, device cpu", starting_text("9.9.9"))
    hold_port(key, "127.0.0.1", port, "metrics")
    try:
        yield port
    finally:
        drop_held(key)


def test_held_metrics_port_answers_starting_then_the_service(held_metrics: int) -> None:
    port = held_metrics
    code, headers, body = _ask(port, "GET", "/healthz")
    state = json.loads(body)
    assert code == 503 and headers["content-type"] == "application/json", (code, headers)
    assert state["ok"] is False and state["starting"] is True, state
    assert state["doing"] == "loading the engine test-engine: onnxruntime, device cpu", state
    assert headers.get("retry-after") == "5"
    code, headers, body = _ask(port, "HEAD", "/healthz")  # uptime monitors ask with HEAD
    assert code == 503 and body == b"" and int(headers["content-length"]) > 0
    for path in ("/metrics", "/"):
        code, _, body = _ask(port, "GET", path)
        samples = _samples(body.decode())
        assert code == 200 and samples["sbd_starting"] == 1.0 and samples["sbd_build_info"] == 1.0, path
    assert _ask(port, "GET", "/nowhere")[0] == 404
    assert _ask(port, "GET", "/healthz", host="evil.example")[0] == 421  # DNS rebinding, as when up

    m = Metrics()  # the service, up: its server adopts the held socket (take_held)
    assert m.serve(port=port) == port
    try:
        code, _, body = _ask(port, "GET", "/healthz")
        assert code == 200 and "starting" not in json.loads(body), body
        code, _, body = _ask(port, "GET", "/metrics")
        samples = _samples(body.decode())
        assert samples["sbd_starting"] == 0.0 and samples["sbd_build_info"] == 1.0
        assert "sbd_frames_received_total" in samples
    finally:
        m.shutdown()


def test_the_starting_metrics_are_the_services_own() -> None:
    """The two series served while starting are exported names, and the running service has them too."""
    starting = {fam.name for fam in text_string_to_metric_families(starting_text("1").decode())}
    assert starting == {"sbd_starting", "sbd_build_info"} and starting <= set(EXPORTED_NAMES)
    running = {fam.name for fam in Metrics().registry.collect()}
    assert starting <= running


def test_held_viewer_port_says_starting() -> None:
    port = free_port()
    key = ("http", "127.0.0.1", port)
    set_starting("loading the engine viewer-test: onnxruntime, device cpu")
    hold_port(key, "127.0.0.1", port, "viewer")
    try:
        code, headers, page = _ask(port, "GET", "/")
        assert code == 503 and headers["content-type"].startswith("text/html"), (code, headers)
        assert b"starting (loading the engine viewer-test" in page and b"refresh" in page
        code, headers, body = _ask(port, "HEAD", "/")
        assert code == 503 and body == b"" and int(headers["content-length"]) == len(page)
        code, _, body = _ask(port, "GET", "/api/status")
        assert code == 503 and json.loads(body)["starting"] is True
    finally:
        drop_held(key)
    with pytest.raises(ConnectionRefusedError):  # dropped: closed, not answered by a stray thread
        _ask(port, "GET", "/")


def test_info_service_says_starting_in_one_line(held_metrics: int) -> None:
    p = subprocess.run(
        [SBD, "info", "--service", str(held_metrics)], capture_output=True, text=True, timeout=100
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr)
    assert "starting (loading the engine)" in lines[0], lines


def test_healthz_says_what_the_engine_load_is_doing(caplog: pytest.LogCaptureFixture) -> None:
    """The engines' latest INFO line (TensorRT's "building TensorRT plan ...; this takes minutes") is
    what ``/healthz`` says the service is doing while ``serve`` holds its ports."""
    import logging

    from sbd_stream.cli.service_start import holding_ports
    from sbd_stream.config import ServiceSettings
    from sbd_stream.engines.card import live_engine

    caplog.set_level(logging.INFO, logger="sbd_stream")  # as the CLI's setup_logging (INFO, -v: DEBUG)
    port = free_port()
    s = ServiceSettings.model_validate({"metrics": {"port": port}, "publish": {"enabled": False}})
    with holding_ports(s, receiver=False):
        state = json.loads(_ask(port, "GET", "/healthz")[2])
        assert state["doing"].startswith(f"loading the engine {live_engine(None)}: "), state  # h35
        line = "building TensorRT plan p.plan (fp16); this takes minutes once per GPU"
        logging.getLogger("sbd_stream.engines.tensorrt_engine").info(line)
        state = json.loads(_ask(port, "GET", "/healthz")[2])
        assert state["starting"] is True and state["doing"].endswith(f"(last: {line})"), state
