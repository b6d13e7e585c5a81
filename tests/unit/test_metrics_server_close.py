"""``MetricsServer``: a close before its loop first ran (a pipeline started and stopped at once through
the Python API) leaves nothing running and no error (audit 25, races: the loop then started on the
closed socket)."""

from __future__ import annotations

import threading
import urllib.request

from prometheus_client import CollectorRegistry

from sbd_stream.metrics import MetricsServer


def test_a_close_before_the_loop_ran_makes_the_loop_return_at_once() -> None:
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0)
    server.close()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as e:  # reported to the test's thread
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and errors == []


def test_a_running_server_answers_and_closes() -> None:
    server = MetricsServer(CollectorRegistry(), "127.0.0.1", 0)
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
        assert r.status == 200
    server.close()
    t.join(10)
    assert not t.is_alive()
