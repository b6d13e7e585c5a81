"""The dashboard's own queries, run by a real Prometheus against a running service.

Three panels read wrong: the malformed panel stayed at 0 after a burst of malformed messages (their
series were created by the first event, so Prometheus never saw an increase), the stage errors panel
likewise, and "Frames per denoiser batch" read p90 0.9 for batches of one frame (a lowest bucket of
le=1 is interpolated from 0) and 3.8 for batches of three.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import ci_provided, make_settings, wait_until
from prometheus_api import free_port, query, stop

from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.metrics import Metrics
from sbd_stream.service.build import build_pipeline
from sbd_stream.supervisor import Supervisor

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "sbd-stream.json"


def _panel_expr(title: str, ref: str, instance: str) -> str:
    """A panel's query as Grafana sends it for one target (every instrument, a 10 s rate interval)."""
    panel = next(p for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"] == title)
    expr = next(t["expr"] for t in panel["targets"] if t["refId"] == ref)
    subst = {"$instrument": ".*", "$instance": instance, "$__rate_interval": "10s"}
    for var, value in subst.items():
        expr = expr.replace(var, value)
    return expr


def _by(result: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


@pytest.mark.timeout(180)
@pytest.mark.skipif(PROMETHEUS is None, reason=ci_provided("Debian package 'prometheus' is not installed"))
def test_dashboard_sees_the_first_malformed_burst_stage_errors_and_batch_sizes(
    tmp_path: Path, denoiser: Denoiser
) -> None:
    ctx = zmq.Context.instance()
    bridge = ctx.socket(zmq.PUB)  # a hand-driven detector bridge
    s = make_settings(tmp_path, f"tcp://127.0.0.1:{bridge.bind_to_random_port('tcp://127.0.0.1')}")
    s.record.enabled = False
    pipe = build_pipeline(s, denoiser, context=ctx)
    pipe.start()
    # two more registries for what a short test cannot make a service do on cue: batches of exactly
    # one and of three frames, and a stage that fails on items
    ones, threes = Metrics(), Metrics()
    ports = {
        "service": pipe.metrics_port,
        "ones": ones.serve("127.0.0.1", 0),
        "threes": threes.serve("127.0.0.1", 0),
    }
    inst = {k: f"127.0.0.1:{p}" for k, p in ports.items()}
    cfg = tmp_path / "prometheus.yml"
    targets = ", ".join(f"'{t}'" for t in inst.values())
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: sbd-stream\n    static_configs:\n      - targets: [{targets}]\n"
    )
    base = f"http://127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen(
        [
            str(PROMETHEUS), f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={base.removeprefix('http://')}", "--log.level=warn",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        # Prometheus has scraped every target twice before anything happens (as a service that ran a while)
        scraped = "count(count_over_time(sbd_frames_received_total[1m]) >= 2)"
        ready = lambda: _by(query(base, scraped), "") == {"": 3.0}  # noqa: E731
        assert wait_until(lambda: ready() or prom.poll() is not None, 60) and prom.poll() is None, (
            tmp_path / "prometheus.log"
        ).read_text()[-2000:]

        m = pipe.metrics
        bad = [b"frame", b"{", b""]  # reason bad_json
        assert wait_until(lambda: bridge.send_multipart(bad) or m.value(*_BAD_JSON) > 0, 20)
        for _ in range(4):
            bridge.send_multipart(bad)
        assert wait_until(lambda: m.value(*_BAD_JSON) >= 5, 10)

        sup = Supervisor(threes)
        logging.disable(logging.ERROR)  # each failed item is logged with its traceback
        try:
            for _ in range(3):
                sup.call("recorder", _fail, ValueError("a bad item"))
        finally:
            logging.disable(logging.NOTSET)
        t_end = time.monotonic() + 3  # batches over three scrapes, for rate()
        while time.monotonic() < t_end:
            ones.batch_size.observe(1)
            threes.batch_size.observe(3)
            time.sleep(0.05)
        final = f'sbd_frames_malformed_total{{reason="bad_json", instance="{inst["service"]}"}}'
        assert wait_until(lambda: _by(query(base, final), "reason").get("bad_json", 0) >= 5, 15)

        # the panels, polled until a scrape after the batches has landed (a fixed 1.5 s for "one scrape
        # more" was short whenever a loaded machine delayed Prometheus); asserted on the last reading
        panels: dict[str, Any] = {}

        def read_panels() -> bool:
            panels["malformed"] = _by(
                query(base, _panel_expr("Input stream health", "F", inst["service"])), "reason"
            )
            panels["errors"] = _by(query(base, _panel_expr("Stage health", "C", inst["threes"])), "stage")
            for name in ("ones", "threes"):
                for ref in ("A", "B"):  # mean, p90
                    got = query(base, _panel_expr("Frames per denoiser batch", ref, inst[name]))
                    panels[f"{name} {ref}"] = [float(r["value"][1]) for r in got]
            return _panels_right(panels) or bool(time.sleep(0.2))  # not right yet: poll again shortly

        wait_until(read_panels, 30)
        malformed, errors = panels["malformed"], panels["errors"]
        assert malformed.get("bad_json", 0) > 0, malformed
        assert errors.get("recorder", 0) > 0 and errors.get("publisher") == 0, errors
        for name, n in (("ones", 1), ("threes", 3)):
            mean, p90 = panels[f"{name} A"], panels[f"{name} B"]
            assert mean == [pytest.approx(n)], (name, mean)  # a ratio of sums
            assert p90 == [n], (name, p90)
        # and every other query of the dashboard is PromQL this Prometheus accepts
        dash = json.loads(DASHBOARD.read_text())
        for p in dash["panels"]:
            for t in p.get("targets", []):
                query(base, _panel_expr(p["title"], t["refId"], inst["service"]))  # asserts "success"
    finally:
        stop(prom)
        log.close()
        for reg in (ones, threes):
            reg.shutdown()
        bridge.close(0)
        pipe.stop()


_BAD_JSON = ("sbd_frames_malformed_total", {"reason": "bad_json"})


def _panels_right(p: dict[str, Any]) -> bool:
    """What the test then asserts, as one truth value (``wait_until`` polls it)."""
    return (
        p["malformed"].get("bad_json", 0) > 0
        and p["errors"].get("recorder", 0) > 0
        and p["errors"].get("publisher") == 0
        and all(
            p[f"{name} A"] == [pytest.approx(n)] and p[f"{name} B"] == [n]
            for name, n in (("ones", 1), ("threes", 3))
        )
    )


def _fail(exc: Exception) -> None:
    raise exc
