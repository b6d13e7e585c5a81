"""README's benchmark tables, regenerated from ``benchmarks/results/*.json`` so they cannot drift.

Each table sits in README.md between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; this
module rewrites what is between the markers from the results file that the measuring code wrote:

    python -m benchmarks.readme_tables            # rewrite README.md
    python -m benchmarks.readme_tables --check    # exit 1 (and name the tables) if README is stale

A table whose results file is missing is left as it is and reported, never invented.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def _pm(m: dict[str, Any], key: str, digits: int = 2, std: bool = True) -> str:
    v = m.get(key)
    if v is None:
        return "-"
    return f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" if std else f"{v['mean']:.{digits}f}"


def _method_label(r: dict[str, Any]) -> str:
    """A Table 5.1 row's method: SBD rows in bold with their size, classical ones with their settings."""
    name = r["method"]
    if r.get("kind") == "sbd":
        return f"**{name}** ({r.get('parameters', 0) / 1000:.0f} k params)"
    if r.get("params"):
        name += " (" + ", ".join(f"{k} {v:.3g}" for k, v in r["params"].items()) + ")"
    return name


def table_5_1_detector() -> str:
    """``sbd-train evaluate-detector``: table_5_1_detector.json."""
    d = _load("table_5_1_detector.json")
    lines = [
        f"`{d['command']}` (`benchmarks/results/table_5_1_detector.json`; {d['test_images']} frames at "
        f"{d['detector_pixel_A']} A, {d['counts_per_px']} counts/px):",
        "",
        "| method | paper PSNR (dB) | paper SSIM | PSNR (dB, range of clean) | F1 surface |",
        "|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        m = r["metrics"]
        name = _method_label(r)
        bold = r.get("kind") == "sbd"
        cells = [_pm(m, "paper_psnr"), _pm(m, "paper_ssim", 3, False), _pm(m, "psnr", 2, False)]
        cells.append(_pm(m, "surface_f1", 2, False))
        if bold:
            cells = [f"**{c}**" if c != "-" else c for c in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    pm = d["paper_margins"]
    lines += [
        "",
        f"Margin **{pm['margin_dB']:.1f} dB** over the best classical method ({pm['best_classical']}); goal: "
        f">= {pm['goal']['sbd_paper_psnr']} dB and >= {pm['goal']['margin_dB']:.0f} dB.",
    ]
    return "\n".join(lines)


def binning() -> str:
    """``python -m benchmarks.bench_binning``: bench_binning.json."""
    d = _load("bench_binning.json")
    lines = [
        f"`{d['command']}` (`benchmarks/results/bench_binning.json`, {d['machine']['cpus']} cores, "
        f"{'GPU' if d['machine'].get('gpu') else 'no GPU'}, {d['backend']}):",
        "",
        "| bin | detector pixel | working frame | ms / frame | frames / s | vs 40 Hz |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["speed"]:
        lines.append(
            f"| {r['bin']} | {r['detector_pixel_A']:.2f} A | {r['working_px']} | {r['ms_per_frame']:.1f} | "
            f"{r['frames_per_s']:.1f} | {r['vs_40Hz']:.2f} |"
        )
    q = ", ".join(
        f"{r['bin']} x {r['bin']} {r['paper_psnr_db']:.1f} dB (min {r['min_db']:.1f})" for r in d["quality"]
    )
    lines += ["", f"Binning alone on clean abTEM frames, paper metric: {q}."]
    return "\n".join(lines)


def demo() -> str:
    """``sbd-stream demo --json-out benchmarks/results/demo_*.json``: one row per results file."""
    files = sorted(RESULTS.glob("demo_*.json"))
    if not files:
        raise FileNotFoundError("no benchmarks/results/demo_*.json")
    lines = [
        "| command | denoised | not denoised | latency p50 / p90 / p99 | paper PSNR raw -> denoised |",
        "|---|---|---|---|---|",
    ]
    for f in files:
        d = json.loads(f.read_text())
        lat = d["latency_s"]
        lines.append(
            f"| `{d['command']}` | {d['frames_published_received']} of {d['frames_sent']} | "
            f"{d['frames_sent'] - d['frames_published_received']} "
            f"({d['denoise_overflow']} `denoise_overflow`, {d['frames_skipped']} skipped) | "
            f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f} s | "
            f"{d['paper_psnr_raw_db']:.1f} -> **{d['paper_psnr_denoised_db']:.1f} dB** |"
        )
    return "\n".join(lines)


def table_5_1_paper() -> str:
    """``sbd-train evaluate-detector`` on the paper world: table_5_1_paper.json, with region columns."""
    d = _load("table_5_1_paper.json")
    lines = [
        f"`{d['command']}` (`benchmarks/results/table_5_1_paper.json`; {d['test_images']} frames of "
        f"{len(d['test_structures'])} held-out models at {d['detector_pixel_A']} A, {d['counts_per_px']} "
        "counts/px; paper PSNR in dB, mean ± std over frames; regions from each frame's atomic model):",
        "",
        "| method | whole frame | vacuum | support | particle | F1 surface |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        if r.get("kind") == "reference":
            continue
        m = r["metrics"]
        name = _method_label(r)
        keys = ["paper_psnr", *(f"region_{k}_paper_psnr" for k in ("vacuum", "support", "particle"))]
        cells = [_pm(m, k) for k in keys] + [_pm(m, "surface_f1", 2, False)]
        lines.append(f"| {name} (n={r['n_images']}) | " + " | ".join(cells) + " |")
    for name, v in (d.get("region_losses_vs_low_pass") or {}).items():
        if name == "against":
            continue
        mins = " / ".join("n/a" if x is None else f"{x:+.1f}" for x in v["min_margin_dB"].values())
        lines += [
            "",
            f"{name} against the tuned low-pass, image by image: **{len(v['losses'])}** (image, region) "
            f"pairs below it of {v['images_compared']} images; smallest margin vacuum / support / particle "
            f"{mins} dB.",
        ]
    return "\n".join(lines)


def paper_images() -> str:
    """``sbd-train evaluate-images`` on the paper's four released clean images: paper_images.json."""
    d = _load("paper_images.json")
    lines = [
        f"`{d['command']}` (`benchmarks/results/paper_images.json`; {len(d['rows'])} frames = the paper "
        f"repository's 4 clean images x {d['config']['draws']} noise draws, {d['detector_pixel_A']:.4f} A, "
        f"{d['config']['counts_per_px']} counts/px; engine `{Path(d['engine']).name}`; paper PSNR in dB; "
        "low-pass width chosen per image and region on the ground truth):",
        "",
        "| region | SBD | oracle low-pass | margin, mean | margin, worst frame |",
        "|---|---|---|---|---|",
    ]
    for k, v in d["summary"].items():
        if v["sbd_mean"] is None:
            continue
        lines.append(
            f"| {k} | **{v['sbd_mean']:.2f}** | {v['low_pass_mean']:.2f} | {v['margin_mean_dB']:+.2f} | "
            f"{v['margin_min_dB']:+.2f} |"
        )
    return "\n".join(lines)


def dose_curve_paper() -> str:
    """``sbd-train dose-curve`` on the paper world: dose_curve_paper.json, per region."""
    d = _load("dose_curve_paper.json")
    lines = [
        f"`{d['command']}` (`benchmarks/results/dose_curve_paper.json`; {d['test_images']} frames; "
        f"trained over {d.get('trained_dose_range')} x the nominal dose; paper PSNR in dB at the nominal "
        "0.45 counts/px scale):",
        "",
        "| dose | e/A^2 | whole frame | vacuum | support | particle |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        cells = [
            f"{r[k]:.1f}"
            for k in ("paper_psnr", *(f"region_{x}_paper_psnr" for x in ("vacuum", "support", "particle")))
        ]
        lines.append(f"| {r['dose_factor']:g}x | {r['dose_e_per_A2']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLES: dict[str, Callable[[], str]] = {
    "dose_curve_paper": dose_curve_paper,
    "table_5_1_paper": table_5_1_paper,
    "paper_images": paper_images,
    "table_5_1_detector": table_5_1_detector,
    "binning": binning,
    "demo": demo,
}


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
        text = pat.sub(lambda m, b=body: m.group(1) + b + "\n" + m.group(3), text)
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
