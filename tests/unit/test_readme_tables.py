"""README's benchmark tables are generated from benchmarks/results (python -m benchmarks.readme_tables)."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.readme_tables import README, TABLES, main, render


def test_readme_tables_match_the_results_files() -> None:
    assert main(["--check"]) == 0, "README is stale: run python -m benchmarks.readme_tables"
    text = README.read_text()
    for name in ("table_5_1_detector", "binning", "demo"):
        assert f"<!-- results:{name} -->" in text
    assert "41.25 ± 1.57" in text and "41.25 ± 1.69" not in text  # the JSON's standard deviation
    for retired in ("948", "7.7%", "AUC 0.52", "27.3 dB"):
        assert retired not in text, retired
    # the hand-written compute trend (rows of engines that were never committed) is gone
    for retired in ("33.3 / 39.3", "17,010 images", "before: p50", "21 / 20 on 2026-11-25"):
        assert retired not in text, retired


def test_every_marker_has_a_renderer_and_every_renderer_a_marker() -> None:
    text = README.read_text()
    markers = set(re.findall(r"<!-- results:([a-z0-9_]+) -->", text))
    assert markers == set(TABLES)
    for name in TABLES:
        assert text.count(f"<!-- results:{name} -->") == 1 and text.count(f"<!-- /results:{name} -->") == 1


def test_no_benchmark_table_is_typed_outside_the_markers() -> None:
    """Every table row under "Latest benchmark numbers" is generated: a typed one could drift."""
    text = README.read_text()
    section = text[text.index("## Latest benchmark numbers") : text.index("## Layout")]
    typed = re.sub(r"<!-- results:(\w+) -->\n.*?<!-- /results:\1 -->", "", section, flags=re.S)
    rows = [line for line in typed.splitlines() if line.startswith("|")]
    assert rows == []


def test_a_hand_edited_table_is_caught(tmp_path: Path) -> None:
    stale = render(README.read_text())[0].replace("41.25 ± 1.57", "41.25 ± 1.69")
    (tmp_path / "README.md").write_text(stale)
    assert main(["--check", "--readme", str(tmp_path / "README.md")]) == 1
    assert main(["--readme", str(tmp_path / "README.md")]) == 0
    assert main(["--check", "--readme", str(tmp_path / "README.md")]) == 0


def test_a_recorded_command_can_be_pasted_back_into_a_shell(tmp_path: Path, monkeypatch) -> None:
    """README tables open with the command that measured them: an argument with spaces (an engine label)
    must come back quoted, or the pasted command means something else."""
    import json
    import shlex
    import sys

    from benchmarks.common import write_result

    argv = ["--engine", "SBD, fast (live on a CPU)=engines/x", "--note", "it's"]
    monkeypatch.setattr(sys, "argv", ["bench_x.py", *argv])
    path = write_result("bench_x", {"rows": []}, tmp_path / "bench_x.json")
    command = json.loads(path.read_text())["command"]
    assert shlex.split(command) == ["python", "-m", "benchmarks.bench_x", *argv]
