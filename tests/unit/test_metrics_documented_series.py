"""Every label value docs/service.md lists for a metric is exported at 0 by a fresh ``Metrics``.

``metrics.py``: "export labelled series at zero from the start, so dashboards and rate() see them";
docs/service.md, "Metrics (every exported name)": ``sbd_frames_recorded_total`` | counter |
``kind`` = raw, denoised, llr. Prometheus computes ``rate()`` / ``increase()`` from scraped samples:
a series born with its first burst shows no increase. Mutation audit (round 2, MT2): with the three
``sbd_frames_recorded_total`` series no longer created up front, no test noticed (the existing checks
cover the malformed reasons and the per-stage errors). The real registry's exposition text.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.exposition import generate_latest

from sbd_stream.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "service.md"
ROW = re.compile(r"\| `(sbd_\w+)` \| (counter|gauge|histogram)\w* \| (.*?) \| ")
LABELS = re.compile(r"`(\w+)` = ([\w, -]+?)(?:;|$|\()")


def _documented() -> list[tuple[str, str, str, str]]:
    """(name, type, label, value) for each label value the metrics table lists."""
    out = []
    for line in DOC.read_text().splitlines():
        if m := ROW.match(line):
            name, kind, labels = m.groups()
            for lm in LABELS.finditer(labels):
                out += [(name, kind, lm.group(1), v.strip()) for v in lm.group(2).split(",") if v.strip()]
    return out


def _sample(name: str, kind: str) -> str:
    return {"histogram": name + "_count"}.get(kind, name)


def test_the_recorded_frames_counter_has_its_three_kinds_at_zero() -> None:
    m = Metrics()
    text = generate_latest(m.registry).decode()
    for kind in ("raw", "denoised", "llr"):
        assert f'sbd_frames_recorded_total{{kind="{kind}"}} 0.0' in text, kind
        assert m.registry.get_sample_value("sbd_frames_recorded_total", {"kind": kind}) == 0.0


def test_every_label_value_in_the_metrics_table_is_exported_at_zero() -> None:
    documented = _documented()
    assert ("sbd_frames_recorded_total", "counter", "kind", "llr") in documented  # the parser reads the table
    assert len(documented) >= 30
    m = Metrics()
    missing = [
        (name, label, value)
        for name, kind, label, value in documented
        if m.registry.get_sample_value(_sample(name, kind), {label: value}) != 0.0
    ]
    assert not missing, f"in docs/service.md's metrics table, not exported at 0 by a fresh Metrics: {missing}"
