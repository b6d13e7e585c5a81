"""Series the metrics registry exports before anything happens, so Prometheus sees the first event.

Prometheus computes ``increase()`` / ``rate()`` from the samples it scraped: a series whose first sample
already holds a burst shows no increase, so the dashboard's malformed panel read 0 after the first
malformed messages. Every label value the code can count is therefore exported at 0 from the start,
except the exception class of ``sbd_stage_errors_total`` (``LAZY_NAMES``), which has a per-stage twin.
"""

from __future__ import annotations

import ast
import logging
import threading
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_until
from prometheus_client.exposition import generate_latest

from sbd_stream.config import load_settings
from sbd_stream.metrics import LAZY_NAMES, MALFORMED_REASONS, SUPERVISED_STAGES, Metrics
from sbd_stream.supervisor import Supervisor

PACKAGE = Path(__file__).resolve().parents[2] / "sbd_stream"
PASS_THROUGH = {"reason", "exc.reason"}
"""Non-literal reasons allowed: ``Emitter.reject(exc.reason)`` and ``labels(reason=reason)`` inside
``reject`` forward a reason that a checked literal (a ``ProtocolError`` or a ``reject`` call) named."""


def _malformed_reasons_in_code() -> tuple[set[str], list[str]]:
    """Every reason literal the package can count as malformed, and every call whose reason is not one.

    Looked at: ``ProtocolError(reason, ...)``, ``<emitter>.reject(reason, ...)`` and
    ``<metrics>.frames_malformed.labels(reason=...)`` in every module of ``sbd_stream``.
    """
    found: set[str] = set()
    unchecked: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = getattr(func, "id", None) or getattr(func, "attr", "")
            arg: ast.expr | None = None
            if name in ("ProtocolError", "reject"):
                kw = [k.value for k in node.keywords if k.arg == "reason"]
                arg = node.args[0] if node.args else (kw[0] if kw else None)
            elif (
                name == "labels"
                and isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Attribute)
                and func.value.attr == "frames_malformed"
            ):
                arg = next((k.value for k in node.keywords if k.arg == "reason"), None)
            else:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            literals = None if arg is None else _literals(arg)
            if literals is not None:
                found |= literals
            elif arg is None or ast.unparse(arg) not in PASS_THROUGH:
                unchecked.append(f"{where}: {ast.unparse(node)[:80]}")
    return found, unchecked


def _literals(expr: ast.expr) -> set[str] | None:
    """The strings ``expr`` can be: a literal, or a conditional between literals; else None."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.IfExp):
        body, orelse = _literals(expr.body), _literals(expr.orelse)
        return None if body is None or orelse is None else body | orelse
    return None


def test_every_malformed_reason_the_code_can_count_is_listed() -> None:
    found, unchecked = _malformed_reasons_in_code()
    assert not unchecked, f"a malformed reason that is not a string literal: {unchecked}"
    assert len(found) >= 30  # the scan sees wire v1, DECTRIS v1/v2 and the receiver's own reasons
    assert {"oversized", "internal_error", "bad_meta", "bad_ts", "bad_cbor", "unexpected_topic"} <= found
    missing = sorted(found - set(MALFORMED_REASONS))
    assert not missing, f"add to sbd_stream.metrics.MALFORMED_REASONS: {missing}"
    unused = sorted(set(MALFORMED_REASONS) - found)
    assert not unused, f"listed in MALFORMED_REASONS but counted nowhere: {unused}"


def test_every_malformed_reason_is_exported_at_zero_before_any_message() -> None:
    text = generate_latest(Metrics().registry).decode()
    for reason in MALFORMED_REASONS:
        assert f'sbd_frames_malformed_total{{reason="{reason}"}} 0.0' in text, reason
    assert "sbd_frames_malformed_total" not in LAZY_NAMES


def test_stage_item_errors_start_at_zero_and_follow_the_per_reason_counter() -> None:
    m = Metrics()
    for stage in SUPERVISED_STAGES:
        assert m.registry.get_sample_value("sbd_stage_item_errors_total", {"stage": stage}) == 0.0
    sup = Supervisor(m)
    release = threading.Event()
    sup.spawn("denoise-1", lambda: release.wait(10))  # a second worker: its series appears when it runs
    try:
        assert wait_until(lambda: m.registry.get_sample_value("sbd_stage_up", {"stage": "denoise-1"}) == 1)
        assert m.registry.get_sample_value("sbd_stage_item_errors_total", {"stage": "denoise-1"}) == 0.0
    finally:
        release.set()

    def fail(exc: Exception) -> None:
        raise exc

    logging.disable(logging.ERROR)  # the supervisor logs each failed item with a traceback
    try:
        for exc in (ValueError("a"), KeyError("b"), ValueError("c")):
            sup.call("recorder", fail, exc)
        sup.call("denoise-1", fail, OSError("d"))
    finally:
        logging.disable(logging.NOTSET)
    assert m.value("sbd_stage_item_errors_total", {"stage": "recorder"}) == 3
    assert m.value("sbd_stage_errors_total", {"stage": "recorder", "reason": "ValueError"}) == 2
    assert m.value("sbd_stage_item_errors_total", {"stage": "denoise-1"}) == 1
    assert m.value("sbd_stage_item_errors_total", {"stage": "publisher"}) == 0


def test_stage_up_has_a_series_only_for_stages_that_run() -> None:
    """A viewer never asked for read ``sbd_stage_up{stage="viewer"} 0``: down, on a healthy service."""
    m = Metrics()
    text = generate_latest(m.registry).decode()
    assert "sbd_stage_up{" not in text
    sup = Supervisor(m)
    release = threading.Event()
    sup.spawn("recorder", lambda: release.wait(10))
    try:
        assert wait_until(lambda: m.registry.get_sample_value("sbd_stage_up", {"stage": "recorder"}) == 1)
        text = generate_latest(m.registry).decode()
        up = {ln.split('"')[1] for ln in text.splitlines() if ln.startswith("sbd_stage_up{")}
        assert up == {"recorder"} == set(sup.health()["stages"])  # as /healthz lists them
    finally:
        release.set()


def test_batch_histogram_buckets_give_each_small_batch_its_own_bucket() -> None:
    """With bounds 1, 2, 4 ... ``histogram_quantile`` interpolated batches of one frame from 0 (p90 0.9)."""
    m = Metrics()
    bounds = [
        float(s.labels["le"])
        for fam in m.registry.collect()
        if fam.name == "sbd_batch_frames"
        for s in fam.samples
        if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
    ]
    assert bounds[0] < 1  # a batch of one frame is not in the lowest bucket (whose lower bound is 0)
    for n in range(1, 9):  # every count up to 8 alone in its bucket, in the middle of it
        lo = max(b for b in bounds if b < n)
        hi = min(b for b in bounds if b >= n)
        assert hi - lo == 1 and n - lo == 0.5, (n, lo, hi)


def test_metrics_on_a_free_port_logs_the_port_it_bound(caplog: pytest.LogCaptureFixture) -> None:
    """``serve --metrics-port 0`` printed ``http://127.0.0.1:0/metrics`` and never the real port."""
    from sbd_stream.cli.live import metrics_where

    m = Metrics()
    with caplog.at_level(logging.INFO, logger="sbd_stream.metrics"):
        port = m.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert port != 0 and any(url in r.getMessage() for r in caplog.records), caplog.text
        with urllib.request.urlopen(url, timeout=5) as r:
            assert b"sbd_frames_received_total" in r.read()
    finally:
        m.shutdown()
    free = load_settings(overrides={"metrics": {"port": 0}})
    assert ":0/" not in metrics_where(free) and "logged once bound" in metrics_where(free)
    assert metrics_where(load_settings()) == "metrics http://127.0.0.1:9105/metrics"
    assert metrics_where(load_settings(overrides={"metrics": {"enabled": False}})) == "metrics off"
