"""`sbd-stream serve` near its open-file limit: the gauges on /metrics and one WARNING in its log.

Why: near the limit (RLIMIT_NOFILE) libzmq's accept() on a bound input fails with EMFILE and the peer
is refused without a counter or a line. The service runs here with ``ulimit -n 128`` (soft and hard, so
start-up cannot raise it), the test opens real ZeroMQ connections to its bound input until its open
descriptors are over 90 % of the limit, and reads its real ``/metrics`` over HTTP and its real log.
Closing them (under 80 %) and connecting again gives the second warning: once a crossing, not once a
check.
"""

from __future__ import annotations

import re
import resource
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import zmq
from conftest import free_port, wait_until
from helpers_procs import interrupt_then_kill, start_piped

pytestmark = pytest.mark.integration

LIMIT = 128
"""``ulimit -n`` of the service: 90 % is 115.2, 80 % is 102.4 descriptors."""
WARNING = re.compile(r" WARNING sbd_stream\.open_files: (\d+) files open of the open-file limit (\d+)")
STATUS = re.compile(r"\s+[\d.]+s\s+in \d")


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _scrape(base: str) -> dict[str, float]:
    """The service's /metrics, unlabelled samples only (``{}`` if it did not answer)."""
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {m[1]: float(m[2]) for m in re.finditer(r"^(sbd_\w+) (\S+)$", text, re.M)}


def _connect(ctx: zmq.Context, endpoint: str, n: int) -> list[zmq.Socket]:
    """``n`` PUB sockets connected to the service's bound SUB input: one TCP connection (and one of its
    descriptors) each."""
    socks = []
    for _ in range(n):
        s = ctx.socket(zmq.PUB)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
    return socks


@pytest.mark.timeout(300)
def test_serve_near_its_open_file_limit_exports_both_gauges_and_warns_once_a_crossing(
    tiny_engine_dir: Path,
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [
        sys.executable, "-m", "sbd_stream", "serve", "--bind-input", "--input", endpoint,
        "--output", f"tcp://127.0.0.1:{free_port()}", "--no-record", "--model", str(tiny_engine_dir),
        "--engine", "onnxruntime", "--metrics-port", "0",
    ]  # fmt: skip
    proc = start_piped(cmd, preexec_fn=_limited)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    ctx = zmq.Context()
    socks: list[zmq.Socket] = []

    def log() -> str:
        return "".join(lines)[-4000:]

    def warnings() -> list[re.Match[str]]:
        return [m for ln in list(lines) if (m := WARNING.search(ln))]

    def status_lines() -> int:
        return sum(1 for ln in list(lines) if STATUS.match(ln))

    try:
        assert wait_until(lambda: status_lines() > 0 or proc.poll() is not None, 120), log()
        url = next(
            (m.group(1) for ln in list(lines) if (m := re.search(r"metrics on (http://\S+)/metrics", ln))),
            None,
        )
        assert url, log()
        got = _scrape(url)
        assert got.get("sbd_open_files_limit") == LIMIT, (got.get("sbd_open_files_limit"), log())
        start = got.get("sbd_open_files")
        assert start is not None and 0 < start < 0.8 * LIMIT, (start, log())  # room for the test
        assert not warnings(), log()

        # over 90 %: 118 of 128 (the connections' descriptors, and a scrape's own, stay under the limit)
        socks = _connect(ctx, endpoint, 118 - int(start))
        over = lambda: _scrape(url).get("sbd_open_files", 0) > 0.9 * LIMIT  # noqa: E731
        assert wait_until(over, 60), (_scrape(url), log())
        assert wait_until(lambda: len(warnings()) >= 1, 60), log()
        seen = status_lines()
        for _ in range(5):  # more checks at scrape time and at the status lines: no second line
            assert _scrape(url).get("sbd_open_files", 0) > 0.9 * LIMIT, log()
        assert wait_until(lambda: status_lines() >= seen + 2, 60), log()
        (first,) = warnings()
        n_open, limit = int(first.group(1)), int(first.group(2))
        assert limit == LIMIT and n_open > 0.9 * LIMIT, first.string
        text = first.string
        assert "refused silently" in text and "ulimit -n" in text and "LimitNOFILE" in text, text

        # under 80 % re-arms; over 90 % again is the second line
        for s in socks:
            s.close()
        socks = []
        under = lambda: 0 < _scrape(url).get("sbd_open_files", LIMIT) < 0.8 * LIMIT  # noqa: E731
        assert wait_until(under, 60), (_scrape(url), log())
        assert len(warnings()) == 1, log()
        socks = _connect(ctx, endpoint, 118 - int(start))
        assert wait_until(lambda: len(warnings()) == 2, 60), log()
        assert proc.poll() is None, log()
    finally:
        for s in socks:
            s.close()
        ctx.term()
        interrupt_then_kill(proc, grace=60)
        reader.join(10)
    assert proc.returncode == 0, log()
