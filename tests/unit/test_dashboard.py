"""Deployment files: valid YAML/JSON/TOML, and the Grafana dashboard only queries metrics we export."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

from conftest import require_module

from sbd_stream.config import load_settings
from sbd_stream.metrics import EXPORTED_NAMES, LAZY_NAMES, Metrics
from sbd_stream.protocol import DEFAULT_MAX_PAYLOAD

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCS = DEPLOY.parent / "docs"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
yaml = require_module("yaml", "PyYAML is in the dev extra")

# PromQL words that look like identifiers but are not metric names
_PROMQL_WORDS = {
    "sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "avg", "max", "min",
    "count", "le", "label_values", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "topk", "bottomk", "delta", "deriv", "clamp_min", "clamp_max", "abs", "round",
}  # fmt: skip


def exported_sample_names() -> set[str]:
    """Every sample name a live service registry exports, derived from the metric families' types."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "info": ("_info",),
        "gauge": ("",),
    }
    for fam in Metrics().registry.collect():
        for s in suffixes[fam.type]:
            names.add(fam.name + s)
    return names


def promql_metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # drop label values and legends
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop range selectors ([$__rate_interval], [5m])
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"label_values\(([^,()]+),[^)]*\)", r"\1", expr)  # Grafana: (metric, label)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {w for w in words - _PROMQL_WORDS if not w.startswith("__")}


def dashboard_exprs(obj: object) -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if (k in ("expr", "definition") and isinstance(v, str)) or (
                k == "query" and isinstance(v, str) and "(" in v
            ):
                out.append(v)
            else:
                out.extend(dashboard_exprs(v))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(dashboard_exprs(v))
    return out


def test_registry_matches_documented_names() -> None:
    assert exported_sample_names() >= {n for n in EXPORTED_NAMES if not n.endswith(("_seconds", "_frames"))}


def test_every_exported_name_is_documented() -> None:
    """docs/service.md's metrics table lists every name a dashboard may use."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    table = text[text.index("## Metrics (every exported name)") :]
    rows = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `sbd_")}
    missing = [n for n in EXPORTED_NAMES if n not in rows]  # a row of the table, not a word in the prose
    assert not missing, f"not in docs/service.md's metrics table: {missing}"


def test_extractor_finds_names_and_skips_promql_words() -> None:
    e = 'histogram_quantile(0.9, sum by (le, stage) (rate(sbd_stage_latency_seconds_bucket{x=~"$i"}[5m])))'
    assert promql_metric_names(e) == {"sbd_stage_latency_seconds_bucket"}
    assert promql_metric_names("up / sbd_x_total") == {"up", "sbd_x_total"}
    assert promql_metric_names("label_values(sbd_a_total, instance)") == {"sbd_a_total"}


def test_dashboard_is_valid_and_uses_only_exported_metrics() -> None:
    assert DASHBOARDS, "no Grafana dashboard under deploy/grafana/dashboards"
    exported = exported_sample_names()
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["title"] and dash["panels"]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), "panel ids must be unique"
        exprs = dashboard_exprs(dash)
        assert len(exprs) >= 10
        used: set[str] = set()
        for e in exprs:
            used |= promql_metric_names(e)
        unknown = used - exported
        assert not unknown, f"{path.name} queries metrics the service does not export: {sorted(unknown)}"
        # the headline metrics are on the dashboard
        for name in (
            "sbd_frames_received_total",
            "sbd_frames_skipped_total",
            "sbd_end_to_end_latency_seconds_bucket",
        ):
            assert name in used


def test_yaml_files_parse_and_reference_each_other() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"sbd-stream", "prometheus", "grafana"}
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    defaults = load_settings().metrics
    assert f"127.0.0.1:{defaults.port}" in targets  # the service's default metrics port
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uid = ds["datasources"][0]["uid"]
    dash = json.loads(DASHBOARDS[0].read_text())
    assert dash["templating"]["list"][0]["current"]["value"] == uid
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/sbd-stream.yaml").read_text())
    mounted = [v for v in compose["services"]["grafana"]["volumes"] if v.startswith("./grafana/dashboards:")]
    assert mounted and mounted[0].split(":")[1] == prov["providers"][0]["options"]["path"]
    for s in compose["services"].values():  # every port stays on the host's loopback
        assert s.get("network_mode") == "host" and "ports" not in s


def test_service_config_example_is_valid_settings() -> None:
    data = tomllib.loads((DEPLOY / "sbd-stream.toml").read_text())
    s = load_settings(DEPLOY / "sbd-stream.toml")
    assert s.metrics.host == "127.0.0.1" and s.publish.endpoint.startswith("tcp://127.0.0.1:")
    assert data["denoise"]["device"] == "cuda"


def test_systemd_unit_has_hardening_and_starts_the_service() -> None:
    text = (DEPLOY / "sbd-stream.service").read_text()
    sections = re.findall(r"^\[(\w+)\]", text, re.M)
    assert sections == ["Unit", "Service", "Install"]
    for opt in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "User=sbd",
        "CapabilityBoundingSet=",
    ):
        assert opt in text
    assert re.search(r"^ExecStart=\S+/sbd-stream serve ", text, re.M)
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(DEPLOY / "sbd-stream.service")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        # the ExecStart binary does not exist on a development machine; anything else is a real error
        errors = [ln for ln in r.stderr.splitlines() if ln.strip() and "/opt/sbd-stream/venv" not in ln]
        assert not errors, errors


def test_dockerfile_uses_a_tensorrt_base_and_the_gpu_extra() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG TRT_IMAGE=nvcr\.io/nvidia/tensorrt:\S+-py3$", text, re.M)
    assert '".[gpu]"' in text and "USER sbd" in text
    entry = (DEPLOY / "entrypoint.sh").read_text()
    assert "sbd-train build-engine" in entry and "exec sbd-stream serve" in entry


def test_the_engine_whose_plan_is_built_is_the_engine_served() -> None:
    """The entrypoint built a plan for sbd-unet4-default while serve loaded another engine: every start
    compiled a plan nothing used, and the served engine's plan was built at its first frame."""
    from sbd_stream.engines.card import DEFAULT_ENGINE, default_engine_root

    entry = (DEPLOY / "entrypoint.sh").read_text()
    default = re.search(r'ENGINE="\$\{SBD_ENGINE:-([\w.-]+)\}"', entry)
    assert default and default.group(1) == DEFAULT_ENGINE  # what live_engine() picks on a GPU
    assert 'build-engine "${SBD_ENGINE_DIR}/${ENGINE}"' in entry
    assert '--model "${SBD_ENGINE_DIR}/${ENGINE}"' in entry
    compose = (DEPLOY / "compose.yaml").read_text()
    assert re.search(rf"SBD_ENGINE: {DEFAULT_ENGINE}\b", compose)
    unit = (DEPLOY / "sbd-stream.service").read_text()
    served = re.search(r"^ExecStart=.* --model \S+/([\w.-]+)$", unit, re.M)
    built = re.search(r"build-engine \\\n#\s+\S+/([\w.-]+)", unit)
    assert served and built and served.group(1) == built.group(1) == DEFAULT_ENGINE
    assert "SBD_CACHE_DIR=/var/cache/sbd-stream" in unit.split("[Unit]")[0]  # where the service looks
    assert (default_engine_root() / DEFAULT_ENGINE / "card.json").is_file()


def _panels(title: str) -> list[dict]:
    return [p for d in DASHBOARDS for p in json.loads(d.read_text())["panels"] if p["title"] == title]


def test_no_panel_takes_the_increase_of_a_series_that_appears_with_its_first_event() -> None:
    """``increase()`` / ``rate()`` of a series born with its first event reads 0 for that event: the
    malformed and stage-error panels stayed flat after a burst (their series were created lazily)."""
    for path in DASHBOARDS:
        for e in dashboard_exprs(json.loads(path.read_text())):
            for name in LAZY_NAMES:
                assert not re.search(rf"\b(increase|rate|irate)\({name}\b", e), (path.name, e)
    (health,) = _panels("Stage health")
    assert any("sbd_stage_item_errors_total" in t["expr"] for t in health["targets"])


def test_every_scrape_label_is_a_dashboard_selector_and_every_query_uses_it() -> None:
    """deploy/prometheus.yml says the dashboard filters on its ``instrument`` label: it must."""
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    labels = {
        k for job in prom["scrape_configs"] for sc in job["static_configs"] for k in sc.get("labels", {})
    }
    assert "instrument" in labels
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        for label in labels | {"instance"}:
            assert label in variables, f"{path.name}: no {label} selector"
            assert variables[label]["allValue"] == ".*"  # "All" also matches targets without the label
            for p in dash["panels"]:
                for t in p.get("targets", []):
                    assert f'{label}=~"${label}"' in t["expr"], (p["title"], t["expr"])


def test_loss_and_skip_panels_say_what_their_metrics_count() -> None:
    """``sbd_record_dropped_total`` counts items (raw, denoised, llr: one lost frame counts up to 3), and
    skipped frames are not lost: the complete lane denoises them later."""
    help_text = {f.name: f.documentation for f in Metrics().registry.collect()}
    assert help_text["sbd_record_dropped"].startswith("Items NOT recorded")
    table = (DOCS / "service.md").read_text()
    row = next(ln for ln in table.splitlines() if ln.startswith("| `sbd_record_dropped_total`"))
    assert "items NOT recorded" in row and "raw, denoised and llr" in row
    (loss,) = _panels("Data loss (1 h)")
    assert "items not recorded" in loss["description"] and "Frames neither" not in loss["description"]
    for t in loss["targets"]:
        unit = "items" if "sbd_record_dropped_total" in t["expr"] else "frames"
        assert unit in t["legendFormat"], t
    (skipped,) = _panels("Skipped (1 h)")
    assert "complete lane" in skipped["description"] and "'latest' policy" not in skipped["description"]


def test_settings_example_in_the_docs_is_valid_settings(tmp_path: Path) -> None:
    """docs/service.md's example loads, and its products are right (max_payload_bytes was 960 off)."""
    text = (DOCS / "service.md").read_text()
    start = text.index("```toml", text.index("## Settings")) + len("```toml")
    block = text[start : text.index("```", start)]
    (tmp_path / "service.toml").write_text(block)
    s = load_settings(tmp_path / "service.toml")
    assert s.ingest.max_payload_bytes == DEFAULT_MAX_PAYLOAD
    assert "stop_timeout_s" in tomllib.loads(block)  # serve's shutdown budget is a documented setting
    products = re.findall(r"= (\d+)\s+#[^\n]*\((\d+(?:\*\d+)+)\)", block)
    assert products
    for value, product in products:
        assert int(value) == math.prod(int(f) for f in product.split("*")), (value, product)


def test_shipped_shutdown_budget_fits_the_stop_timeouts() -> None:
    """serve stops within ``StopBudget.bound_s`` (``stop_timeout_s`` + ``lanes.complete_timeout_s`` + the
    time to close and name what still runs: Pipeline.stop): the shipped config states both, and the bound
    stays under the unit's and compose's stop timeouts with a margin (it was 29.x s against 30 s)."""
    from sbd_stream.service.pipeline import StopBudget

    data = tomllib.loads((DEPLOY / "sbd-stream.toml").read_text())
    s = load_settings(DEPLOY / "sbd-stream.toml")
    assert "stop_timeout_s" in data  # the comment relies on it: stated, not an implicit default
    budget = StopBudget(s.stop_timeout_s, s.lanes.complete_timeout_s).bound_s
    unit = re.search(r"^TimeoutStopSec=(\d+)s$", (DEPLOY / "sbd-stream.service").read_text(), re.M)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["sbd-stream"]
    assert unit and budget <= int(unit.group(1)) - 5  # margin: the interpreter's start and end
    assert budget <= int(compose["stop_grace_period"].rstrip("s")) - 5


# Exported metric families deliberately left off the dashboard, each with the reason. Empty: every
# family in EXPORTED_NAMES / LAZY_NAMES is on a panel. An entry must say why an engineer watching the
# dashboard can do without it (and is refused once a panel shows the name).
OFF_DASHBOARD: dict[str, str] = {}


def _panel_metric_names() -> set[str]:
    """Metric names the panels' queries read (not the selectors' ``label_values`` queries)."""
    used: set[str] = set()
    for path in DASHBOARDS:
        for e in dashboard_exprs(json.loads(path.read_text())["panels"]):
            used |= promql_metric_names(e)
    return used


def test_every_exported_metric_family_is_on_a_panel_or_deliberately_left_off() -> None:
    """26 exported families were on no panel (failed frames, stage errors, open files against their
    limit, subscribers refused at the handshake, hot / saturated / blank frames, the dose checks, clipped
    pixels, workers): an engineer watching the dashboard could not see failures, bad input, dose problems,
    file-descriptor exhaustion or refused subscribers."""
    families = set(EXPORTED_NAMES) | set(LAZY_NAMES)
    used = _panel_metric_names()
    shown = {n for n in families if used & {n, f"{n}_bucket", f"{n}_sum", f"{n}_count"}}
    missing = sorted(families - shown - OFF_DASHBOARD.keys())
    assert not missing, f"exported, on no panel and not in OFF_DASHBOARD: {missing}"
    assert not OFF_DASHBOARD.keys() - families, "OFF_DASHBOARD names a metric the service does not export"
    assert not OFF_DASHBOARD.keys() & shown, "OFF_DASHBOARD names a metric a panel shows"
    assert all(len(reason.split()) >= 3 for reason in OFF_DASHBOARD.values()), "say why it is left off"


def test_panels_take_the_rate_of_counters_and_read_gauges_as_they_are() -> None:
    """A counter plotted as is only climbs (a restart drops it to 0); the rate of a gauge means nothing.
    The one counter read as is: a lazy one (``LAZY_NAMES``), whose ``increase()`` misses its first event."""
    counters, gauges = set(), set()
    for fam in Metrics().registry.collect():
        if fam.type == "counter":
            counters.add(f"{fam.name}_total")
        elif fam.type == "histogram":
            counters |= {f"{fam.name}_bucket", f"{fam.name}_sum", f"{fam.name}_count"}
        elif fam.type == "gauge":
            gauges.add(fam.name)
    for path in DASHBOARDS:
        for e in dashboard_exprs(json.loads(path.read_text())["panels"]):
            for m in re.finditer(r"\b(sbd_[a-z0-9_]+)\b(?=\{|\[|\s|\)|$)", e):
                in_rate = re.search(r"\b(rate|irate|increase)\(\s*$", e[: m.start()]) is not None
                name = m.group(1)
                if name in counters and name not in LAZY_NAMES:
                    assert in_rate, (path.name, name, e)
                if name in gauges:
                    assert not in_rate, (path.name, name, e)
