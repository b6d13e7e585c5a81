"""A real Prometheus's HTTP query API, for the integration tests that run one (no client library)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request

# Prometheus cannot be told to pick its own port and report it: the port is picked for it, outside the
# kernel's ephemeral range and checked on every address (conftest.free_port, the suite's one picker)
from conftest import free_port

__all__ = ["free_port", "query", "stop"]


def query(base: str, q: str) -> list[dict]:
    """The result vector of an instant query; [] while Prometheus is not listening or still starting
    (503: its TSDB not open yet); a query it refuses (400) fails the test with its reason."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': q})}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 503:
            return []
        raise AssertionError(f"{q}: {e.read()[:300]!r}") from e
    except OSError:
        return []
    assert body["status"] == "success", body
    return body["data"]["result"]


def stop(prom: subprocess.Popen | None) -> None:
    """Terminate a Prometheus process, killing it if it does not end within 10 s."""
    if prom is None:
        return
    prom.terminate()
    try:
        prom.wait(10)
    except subprocess.TimeoutExpired:
        prom.kill()
        prom.wait(5)
