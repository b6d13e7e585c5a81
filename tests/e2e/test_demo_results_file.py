"""``sbd-stream demo --json-out``: the results file says when, at which commit, under what load and with
which libraries it was measured (audit 26: README's headline demo numbers came from a file holding only
the Python version and the core count, so "a quiet machine" could not be checked)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_the_demo_results_file_has_date_commit_load_and_versions(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    from typer.testing import CliRunner

    from sbd_stream.cli import app

    out = tmp_path / "demo_6.json"
    args = ["demo", "--frames", "6", "--synthetic", "--shape", "64x64", "--rate", "50", "--no-likelihood"]
    args += ["--model", str(tiny_engine_dir), "--engine", "torch", "--no-record", "--json-out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", d["date"]) and d["started"] <= d["date"]
    assert len(d["load_avg"]["start"]) == 3 and len(d["load_avg"]["end"]) == 3
    assert re.fullmatch(r"[0-9a-f]{7,}", d["git"]) and isinstance(d["git_dirty"], bool)  # run from a checkout
    assert {"torch", "onnxruntime", "numpy", "pyzmq", "h5py"} <= set(d["versions"])
    assert d["machine"]["cpus"] and d["lanes"]["live"]["frames"] >= 0
    # every key of the file is documented where a user reads the demo's summary (audit h28: the
    # provenance keys were not)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text()
    undocumented = sorted(k for k in d if f"`{k}`" not in docs)
    assert not undocumented, f"demo --json-out keys missing from docs/service.md: {undocumented}"
