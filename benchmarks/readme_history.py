"""README tables kept as history: the mostly-vacuum ``detector`` world and the earlier 0.155 A study.

Each function renders one ``<!-- results:NAME -->`` block of README.md from the results file that the
measuring command wrote (its docstring names both); ``readme_tables`` registers them.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from benchmarks.readme_render import load, method_label, pm, source

SHIPPED_UNTIL = "shipped until 2026-12-02, commit bb29a3f"
"""``sbd-unet4-detector`` was the default engine from 034fdf0 until bb29a3f made ``sbd-unet4-paper`` it."""

HISTORY_DATA = {"--test": "data/detector-test60pm.h5", "--val": "data/detector.h5", "--world": "detector"}
"""The detector world's data: the defaults these commands had when the tables were measured."""


def rerun(recorded: str, flags: dict[str, str | list[str]]) -> str:
    """``recorded`` with ``flags`` stated explicitly (replacing the same flags where it had them).

    Why: a history table was measured when the detector world and its engine were the commands'
    defaults. The recorded command, run today, scores the paper world with today's engine and (without
    ``--world``) writes over the headline table's file; the command shown must reproduce the table."""
    args = shlex.split(recorded)
    kept: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i].split("=", 1)[0]
        if flag in flags:
            i += 1 if "=" in args[i] else 2
            continue
        kept.append(args[i])
        i += 1
    for flag, value in flags.items():
        for v in [value] if isinstance(value, str) else value:
            kept += [flag, v]
    return shlex.join(kept)


def _engine_arg(r: dict[str, Any]) -> str:
    """``LABEL=DIR`` for an SBD row, the engine folder relative to the repository where it is in it."""
    path = Path(r["engine"])
    if path.is_absolute() and "engines" in path.parts:
        path = Path(*path.parts[path.parts.index("engines") :])
    return f"{r['method']}={path}"


def _opening(cmd: str, d: dict[str, Any], name: str, writes: str | None = None) -> str:
    """The reproducing command, the file the table reads, and the recorded command where it differs."""
    out = f"`{cmd}` (`benchmarks/results/{name}`"
    if writes:
        out += f"; the command writes `{writes}`"
    if cmd != d["command"]:
        out += f"; recorded as `{d['command']}` when the detector world was the default"
    return out


def _retired(label: str) -> str:
    """A row label that says "shipped" about ``sbd-unet4-detector`` says until when: it is history."""
    label = label.replace("(shipped)", f"({SHIPPED_UNTIL})")
    return label.removesuffix(" shipped") + f" {SHIPPED_UNTIL}" if label.endswith(" shipped") else label


def _goal_line(p: dict[str, Any]) -> str:
    best, goal = p["best_sbd_paper_psnr"], p["goal"]["sbd_paper_psnr"]
    short = f" ({goal - best:.1f} dB short)" if best < goal else ""
    return (
        f"Margin **{p['margin_dB']:.1f} dB** over the best classical method ({p['best_classical']}); goal: "
        f">= {goal} dB{short} and >= {p['goal']['margin_dB']:.0f} dB."
    )


def table_5_1_detector() -> str:
    """``sbd-train evaluate-detector`` on the detector world: table_5_1_detector.json."""
    d = load("table_5_1_detector.json")
    engines = [_engine_arg(r) for r in d["rows"] if r.get("kind") == "sbd"]
    cmd = rerun(
        d["command"],
        {"--test": d["test"], "--val": d["val"], "--engine": engines, "--world": "detector",
         "--out-dir": "benchmarks/results"},
    )  # fmt: skip
    lines = [
        f"{_opening(cmd, d, 'table_5_1_detector.json')}; {d['test_images']} frames at "
        f"{d['detector_pixel_A']} A, {d['counts_per_px']} counts/px):",
        "",
        "| method | paper PSNR (dB) | paper SSIM | PSNR (dB, range of clean) | F1 surface |",
        "|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        m = r["metrics"]
        cells = [pm(m, "paper_psnr"), pm(m, "paper_ssim", 3, False), pm(m, "psnr", 2, False)]
        cells.append(pm(m, "surface_f1", 2, False))
        if r.get("kind") == "sbd":
            cells = [f"**{c}**" if c != "-" else c for c in cells]
        lines.append(f"| {_retired(method_label(r))} | " + " | ".join(cells) + " |")
    goal = _goal_line(d["paper_margins"]).removesuffix(".") + f" (for that engine, {SHIPPED_UNTIL})."
    return "\n".join([*lines, "", goal])


def gpu_runs_detector() -> str:
    """The first H200 runs of the GPU recipe, scored as Table 5.1 on the detector world:
    gpu-recipe/table_5_1_detector_h200.json (``sbd-train evaluate-detector``) with the training
    records of gpu_session_h200.json."""
    d = load("gpu-recipe/table_5_1_detector_h200.json")
    runs = {r["run"].removeprefix("h200-"): r for r in load("gpu_session_h200.json")["runs"]}
    engines = [_engine_arg(r) for r in d["rows"] if r.get("kind") == "sbd"]
    flags = {"--test": d["test"], "--val": d["val"], "--engine": engines, "--world": "detector_h200"}
    cmd = rerun(d["command"], {**flags, "--out-dir": "benchmarks/results/gpu-recipe"})
    lines = [
        f"{_opening(cmd, d, 'gpu-recipe/table_5_1_detector_h200.json')}; training: "
        "`benchmarks/results/gpu_session_h200.json`; same 24 test frames and noise as the table above):",
        "",
        "| weights | parameters | steps x frames | training | batch norm frozen at | paper PSNR (dB) |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for r in d["rows"]:
        if r.get("kind") != "sbd":
            continue
        run = runs.get(Path(r["engine"]).name)
        t = r.get("training") or {}
        if run:
            steps = f"{run['steps']:,} x {run['batch']}"
            took = f"{run['train_seconds'] / 60:.1f} min on {run['gpu']}"
            frozen = "never" if run.get("norm_frozen_at") is None else f"step {run['norm_frozen_at']:,}"
            if run.get("loss_peak_after_freeze") and run.get("loss_before_freeze"):
                ratio = run["loss_peak_after_freeze"] / run["loss_before_freeze"]
                notes.append(
                    f"`{Path(r['engine']).name}`: training loss {run['loss_before_freeze']:.2g} before the "
                    f"batch-norm freeze, peak {run['loss_peak_after_freeze']:.2g} after it ({ratio:,.0f}x)."
                )
        else:
            steps = f"{t['steps']:,}" if t.get("steps") else "-"
            took = f"{t['wall_s'] / 60:.0f} min" if t.get("wall_s") else "-"
            frozen = "-"
        lines.append(
            f"| {_retired(r['method'])} (`{Path(r['engine']).name}`) | {r['parameters']:,} | "
            f"{steps} | {took} | "
            f"{frozen} | {pm(r['metrics'], 'paper_psnr')} |"
        )
    return "\n".join([*lines, *(["", *notes] if notes else [])])


def dose_curve_detector() -> str:
    """``sbd-train dose-curve`` on the detector world: dose_curve.json."""
    d = load("dose_curve.json")
    # measured when the detector world and its engine were the command's defaults: today the world, the
    # data and the engine are stated; the command then writes dose_curve_detector.json (this file, the
    # one the table reads, is kept as measured)
    engine = _engine_arg({"method": "x", "engine": d["engine"]}).removeprefix("x=")
    cmd = rerun(d["command"], {**HISTORY_DATA, "--engine": engine, "--out-dir": "benchmarks/results"})
    lines = [
        f"{_opening(cmd, d, 'dose_curve.json', 'dose_curve_detector.json')}; {d['test_images']} frames; "
        f"engine `{Path(d['engine']).name}` "
        f"trained over {d.get('trained_dose_range')} x the nominal dose; paper PSNR at the nominal "
        "0.45 counts/px scale):",
        "",
        "| dose | e/A^2 | paper PSNR (dB) | PSNR (dB, range of clean) | fixed low-pass, PSNR (range of "
        "clean) |",
        "|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['dose_factor']:g}x | {r['dose_e_per_A2']:.0f} | {r['paper_psnr']:.1f} | {r['psnr']:.1f} | "
            f"{r['lowpass_psnr']:.1f} |"
        )
    return "\n".join(lines)


def likelihood_detector() -> str:
    """``sbd-train likelihood-study`` on the detector world: likelihood_study.json (each frame's own
    counts) and likelihood_study_evidence{1,2,4}.json (``--evidence-frames N``)."""
    files = ["likelihood_study.json", *(f"likelihood_study_evidence{n}.json" for n in (1, 2, 4))]
    first = load(files[0])
    lines = [
        f"{source(first, files[0])} and `--evidence-frames N` in `likelihood_study_evidence{{1,2,4}}.json`; "
        f"engine `{first['config']['engine']}`, {first['images']} test images; ROC AUC of the log-likelihood "
        "ratio, true against spurious detected columns):",
        "",
        "| scored on | surface columns: true / spurious | AUC, surface columns | AUC, all columns |",
        "|---|---|---|---|",
    ]
    for f in files:
        d = load(f)
        n = d["config"].get("evidence_frames") or 0
        where = "the denoised frame's own counts" if n == 0 else f"{n} further frame{'s' if n > 1 else ''}"
        g, roc = d["groups"]["surface"], d["roc"]
        auc = [roc[k]["auc_tp_vs_fp"] for k in ("surface", "all")]
        cells = ["-" if a is None else f"{a:.2f}" for a in auc]
        lines.append(f"| {where} | {g['tp']['n']} / {g['fp']['n']} | **{cells[0]}** | {cells[1]} |")
    return "\n".join(lines)


def table_3_1_detector() -> str:
    """``sbd-train fov-study-detector --train``: table_3_1_detector.json."""
    d = load("table_3_1_detector.json")
    # measured before the paper's world became the study's default: the same command is now --world detector
    cmd = rerun(d["command"], {"--world": "detector", "--test": d["test"], "--out-dir": "benchmarks/results"})
    lines = [
        f"{_opening(cmd, d, 'table_3_1_detector.json')}; {d['test_images']} frames at "
        f"{d['detector_pixel_A']} A, "
        f"{d['counts_per_px']} counts/px; reach at the working pixel):",
        "",
        "| network | parameters | reach (A) | training steps | paper PSNR (dB) | F1 surface |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        m = r["metrics"]
        lines.append(
            f"| {r['method']} | {r['parameters']:,} | {r['field_of_view_A']:.1f} | "
            f"{r['training']['steps']:,} | {pm(m, 'paper_psnr', 1)} | {pm(m, 'surface_f1', 3, False)} |"
        )
    return "\n".join(lines)


def table_5_1_mini() -> str:
    """``sbd-train evaluate`` on the mini set at its own 0.155 A pixel: table_5_1.json."""
    d = load("table_5_1.json")
    lines = [
        f"{source(d, 'table_5_1.json')}; {d['test_images']} frames of {len(d['test_structures'])} held-out "
        "structures; PSNR and SSIM with the clean image's range):",
        "",
        "| method | PSNR (dB) | SSIM | F1 surface | n |",
        "|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        if r.get("kind") == "reference":
            continue
        m = r["metrics"]
        cells = [pm(m, "psnr"), pm(m, "ssim", 3, False), pm(m, "surface_f1", 3, False)]
        if r.get("kind") == "sbd":
            cells = [f"**{c}**" for c in cells]
        lines.append(f"| {method_label(r)} | " + " | ".join(cells) + f" | {r['n_images']} |")
    mg = d["margins"]
    paper = mg.get("paper", {})
    lines += [
        "",
        f"Margin **{mg['psnr_margin_over_best_classical_dB']:.1f} dB** PSNR of {mg['best_sbd']} over the "
        f"best classical method ({mg['best_classical']}); the paper: "
        f"{paper.get('psnr_margin_over_best_classical_dB', float('nan')):.1f} dB ({paper.get('note', '')}).",
    ]
    return "\n".join(lines)


def table_3_1_mini() -> str:
    """``sbd-train fov-study`` on the mini set: table_3_1.json (equal budgets, ~48 k parameters)."""
    d = load("table_3_1.json")
    lines = [
        f"{source(d, 'table_3_1.json')}; {d['test_images']} frames):",
        "",
        "| network | parameters | FoV (px) | training steps | PSNR (dB) | SSIM |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        m = r["metrics"]
        lines.append(
            f"| {r['method']} | {r['parameters']:,} | {r['field_of_view']} | {r['training']['steps']:,} | "
            f"{pm(m, 'psnr')} | {pm(m, 'ssim', 2, False)} |"
        )
    return "\n".join(lines)
