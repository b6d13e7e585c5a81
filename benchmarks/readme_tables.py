"""README's benchmark tables, regenerated from ``benchmarks/results/*.json`` so they cannot drift.

Each table sits in README.md between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; this
module rewrites what is between the markers from the results file that the measuring code wrote:

    python -m benchmarks.readme_tables            # rewrite README.md
    python -m benchmarks.readme_tables --check    # exit 1 (and name the tables) if README is stale

A table whose results file is missing is left as it is and reported, never invented.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import readme_history as history
from benchmarks import readme_paper as paper
from benchmarks import readme_recording_sampling as rec_sampling
from benchmarks import readme_speed as speed
from benchmarks.readme_render import ROOT

README = ROOT / "README.md"

TABLES: dict[str, Callable[[], str]] = {
    # the paper's world
    "table_5_1_paper": paper.table_5_1_paper,
    "region_check_paper": paper.region_check_paper,
    "paper_gpu_check": paper.paper_gpu_check,
    "paper_images": paper.paper_images,
    "user_abtem": paper.user_abtem,
    "paper_optics_check": paper.paper_optics_check,
    "paper_optics_world_check": paper.paper_optics_world_check,
    "user_abtem_optics": paper.user_abtem_optics,
    "twins_checks": paper.twins_checks,
    "user_abtem_twins": paper.user_abtem_twins,
    "dose_curve_paper": paper.dose_curve_paper,
    "compute_trend": paper.compute_trend,
    "compute_trend_quality": paper.compute_trend_quality,
    "table_3_1_paper": paper.table_3_1_paper,
    # history: the detector world and the 0.155 A mini study
    "table_5_1_detector": history.table_5_1_detector,
    "gpu_runs_detector": history.gpu_runs_detector,
    "dose_curve_detector": history.dose_curve_detector,
    "likelihood_detector": history.likelihood_detector,
    "table_3_1_detector": history.table_3_1_detector,
    "table_5_1_mini": history.table_5_1_mini,
    "table_3_1_mini": history.table_3_1_mini,
    # speed
    "demo": speed.demo,
    "binning": speed.binning,
    "denoise": speed.denoise,
    "capacity": speed.capacity,
    "capacity_ab": speed.capacity_ab,
    "capacity_h200": speed.capacity_h200,
    "scale_out": speed.scale_out,
    "live_service": speed.live_service,
    "dectris": speed.dectris,
    "edge": speed.edge,
    "simulation": speed.simulation,
    "curve": speed.curve,
    "part_roll": rec_sampling.part_roll,
    "resample": rec_sampling.resample,
    "record_rows": rec_sampling.record_rows,
}
"""Every generated block of README.md, by marker name; the renderers live in readme_paper (the paper's
world), readme_history (earlier worlds and studies) and readme_speed (throughput and latency)."""


def render(text: str) -> tuple[str, list[str], list[str]]:
    """(new text, tables rewritten, tables whose results are missing)."""
    done, missing = [], []
    for name, make in TABLES.items():
        pat = re.compile(rf"(<!-- results:{name} -->\n)(.*?)(<!-- /results:{name} -->)", re.S)
        if not pat.search(text):
            continue
        try:
            body = make()
        except FileNotFoundError:
            missing.append(name)
            continue

        def fill(m: re.Match[str], b: str = body) -> str:
            return m.group(1) + b + "\n" + m.group(3)

        text = pat.sub(fill, text)
        done.append(name)
    return text, done, missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if README.md is stale")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    old = args.readme.read_text()
    new, done, missing = render(old)
    for name in missing:
        print(f"{name}: results file missing, table left as it is", file=sys.stderr)
    if args.check:
        if new != old:
            stale = [n for n in done if render_one(old, n) != render_one(new, n)]
            print(f"README.md is stale: {', '.join(stale) or 'tables'} (python -m benchmarks.readme_tables)")
            return 1
        return 0
    args.readme.write_text(new)
    print(f"rewrote {', '.join(done) or 'nothing'}")
    return 0


def render_one(text: str, name: str) -> str:
    m = re.search(rf"<!-- results:{name} -->\n(.*?)<!-- /results:{name} -->", text, re.S)
    return m.group(1) if m else ""


if __name__ == "__main__":
    sys.exit(main())
