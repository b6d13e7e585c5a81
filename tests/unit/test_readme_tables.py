"""README's benchmark tables are generated from benchmarks/results (python -m benchmarks.readme_tables)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.readme_tables import README, main, render


def test_readme_tables_match_the_results_files() -> None:
    assert main(["--check"]) == 0, "README is stale: run python -m benchmarks.readme_tables"
    text = README.read_text()
    for name in ("table_5_1_detector", "binning", "demo"):
        assert f"<!-- results:{name} -->" in text
    assert "41.25 ± 1.57" in text and "41.25 ± 1.69" not in text  # the JSON's standard deviation
    for retired in ("948", "7.7%", "AUC 0.52", "27.3 dB"):
        assert retired not in text, retired


def test_a_hand_edited_table_is_caught(tmp_path: Path) -> None:
    stale = render(README.read_text())[0].replace("41.25 ± 1.57", "41.25 ± 1.69")
    (tmp_path / "README.md").write_text(stale)
    assert main(["--check", "--readme", str(tmp_path / "README.md")]) == 1
    assert main(["--readme", str(tmp_path / "README.md")]) == 0
    assert main(["--check", "--readme", str(tmp_path / "README.md")]) == 0
