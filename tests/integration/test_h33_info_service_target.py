"""``sbd-stream info --service``: a merge's metrics port is named for what it is, and HOST:PORT is taken.

Session 33: pointed at a ``sbd-stream merge``'s metrics port it printed ``"workers": []`` with exit 0,
as if a serve instance stood idle; ``--service 127.0.0.1:9105`` (as serve's log shows it) failed with
urllib's "unknown url type". Real metrics HTTP servers on loopback (a serve's ``Metrics``, a merge's
``MergeMetrics`` registry behind the same ``MetricsServer`` the merge runs).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.merge.metrics import MergeMetrics
from sbd_stream.metrics import Metrics, MetricsServer

pytestmark = pytest.mark.integration


@pytest.fixture()
def serve_port() -> Iterator[int]:
    m = Metrics()
    port = m.serve(port=0)
    try:
        yield port
    finally:
        m.shutdown()


def _info(target: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["info", "--service", target, "--interval", "0.1"])
    return res.exit_code, res.output


@pytest.mark.timeout(60)
def test_a_merge_metrics_port_is_named_not_an_empty_worker_list() -> None:
    metrics = MergeMetrics()
    metrics.received.labels(input="0").inc(5)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0, None)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        code, out = _info(f"http://127.0.0.1:{server.port}")
    finally:
        server.close()
    assert code == 2, out
    assert "sbd-stream merge`'s metrics endpoint (5 messages received" in out
    assert "not a serve instance's" in out and '"workers"' not in out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "{port}", "http://127.0.0.1:{port}/metrics"])
def test_host_port_and_a_bare_port_reach_a_serve_instance(serve_port: int, form: str) -> None:
    code, out = _info(form.format(port=serve_port))
    assert code == 0, out
    service = json.loads(out)["service"]
    assert service["url"] == f"http://127.0.0.1:{serve_port}"
    assert [w["worker"] for w in service["workers"]] == [0]


@pytest.mark.parametrize("target", ["ftp://127.0.0.1:9105", "127.0.0.1:notaport"])
def test_no_http_url_is_one_line(target: str) -> None:
    code, out = _info(target)
    assert code == 2 and out.count("\n") == 1 and "give http://HOST:PORT" in out, out
