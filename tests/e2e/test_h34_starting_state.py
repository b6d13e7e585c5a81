"""`serve` answers `/healthz`, `/metrics` and the viewer from the moment its ports are held (review h34).

Why: the ports are held before the engine loads (``cli.service_start.holding_ports``), and a probe that
connected during the load (seconds on a CPU, minutes with a TensorRT plan build) waited unanswered
until its timeout: a Kubernetes or Docker check read a hang, Prometheus a failed scrape. A real
``serve`` process, real HTTP on 127.0.0.1, polled from before its start: once the metrics port first
answers, every answer is either the starting 503 or the running service's 200 (never a refused
connection in between), and the first answer is a starting one. No time is measured: the engine's
own load (its imports and warm-up, seconds) is the window, and each request waits as long as it needs.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SBD = str(Path(sys.executable).parent / "sbd-stream")


def _get(port: int, path: str) -> tuple[int, bytes] | None:
    """(status, body), or None where nothing listens yet (connection refused)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)  # a hang shows as a late 200
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    except ConnectionRefusedError:
        return None
    finally:
        c.close()


def _kind(answer: tuple[int, bytes] | None, path: str) -> str:
    """What an answer is: refused, starting, up; anything else is returned as itself, to fail on."""
    if answer is None:
        return "refused"
    code, body = answer
    if code == 200 and path == "/healthz" and json.loads(body)["ok"] is True:
        return "up"
    if code == 200 and path == "/metrics":
        return "starting" if b"\nsbd_starting 1" in body else "up" if b"\nsbd_starting 0" in body else "?"
    if code == 200 and path == "/" and b"<!doctype html>" in body.lower() and b"starting (" not in body:
        return "up"
    if code == 503 and path == "/healthz" and json.loads(body).get("starting") is True:
        return "starting"
    if code == 503 and path == "/" and b"starting (loading the engine" in body:
        return "starting"
    return f"unexpected {code} {body[:200]!r}"


def test_serve_answers_starting_until_it_runs(tmp_path: Path) -> None:
    metrics, viewer = free_port(), free_port()
    args = [SBD, "serve", "--metrics-port", str(metrics), "--viewer", "--viewer-port", str(viewer),
            "--input", f"tcp://127.0.0.1:{free_port()}", "--output", f"tcp://127.0.0.1:{free_port()}",
            "--pixel-size", "0.06", "--dose", "125"]  # fmt: skip
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[tuple[str, str]] = []  # (path, kind), from the first answer on
    try:
        while not (seen and seen[-1] == ("/healthz", "up")):
            assert p.poll() is None, p.communicate()[1]
            for path, port in (("/healthz", metrics), ("/metrics", metrics), ("/", viewer)):
                kind = _kind(_get(port, path), path)
                if seen or kind != "refused":  # before the ports are held, nothing listens: fine
                    seen.append((path, kind))
                if seen and seen[-1] == ("/healthz", "up"):
                    break
    finally:
        p.terminate()
        err = p.communicate(timeout=120)[1]
    # the first answer of any of the three: before (h34) it came only once the service ran, as "up"
    assert seen[0][1] == "starting", (seen[:5], err[-2000:])
    assert ("/healthz", "starting") in seen, seen[:5]
    assert {kind for _, kind in seen} <= {"starting", "up"}, [
        s for s in seen if s[1] not in ("starting", "up")
    ]
    first_up = seen.index(("/healthz", "up"))
    assert all(kind == "up" for _, kind in seen[first_up:]), seen  # the flip is one way
