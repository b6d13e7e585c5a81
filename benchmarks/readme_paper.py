"""README tables of the paper's world: Table 5.1 per region, the paper's own images, dose, compute.

Each function renders one ``<!-- results:NAME -->`` block of README.md from the results file that the
measuring command wrote (its docstring names both); ``readme_tables`` registers them.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.readme_render import RESULTS, load, method_label, pm, source

REGIONS = ("vacuum", "support", "particle")
REGION_KEYS = ["paper_psnr", *(f"region_{k}_paper_psnr" for k in REGIONS)]


def table_5_1_paper() -> str:
    """``sbd-train evaluate-detector`` on the paper world: table_5_1_paper.json, with region columns."""
    d = load("table_5_1_paper.json")
    lines = [
        f"{source(d, 'table_5_1_paper.json')}; {d['test_images']} frames of "
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
        cells = [pm(m, k) for k in REGION_KEYS] + [pm(m, "surface_f1", 2, False)]
        lines.append(f"| {method_label(r)} (n={r['n_images']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines + _loss_lines(d))


def _loss_lines(d: dict) -> list[str]:
    """One sentence per SBD row: its (image, region) pairs below the tuned low-pass and the margins."""

    def fmt(xs: dict) -> str:
        return " / ".join("n/a" if x is None else f"{x:+.1f}" for x in xs.values())

    lines = []
    for name, v in (d.get("region_losses_vs_low_pass") or {}).items():
        if name == "against":
            continue
        lines += [
            "",
            f"{name} against the tuned low-pass, image by image: **{len(v['losses'])}** (image, region) "
            f"pairs below it of {v['images_compared']} images; smallest margin vacuum / support / particle "
            f"{fmt(v['min_margin_dB'])} dB (mean {fmt(v['mean_margin_dB'])}).",
        ]
    return lines


def region_check_paper(name: str = "table_5_1_paper-check.json") -> str:
    """``sbd-train evaluate-detector --max-test-images N --baseline 'Low-pass filter' --world
    paper-check``: many more test frames than Table 5.1, the live engines against the tuned low-pass."""
    d = load(name)
    lp = next(r for r in d["rows"] if r["method"] == "Low-pass filter")
    lines = [
        f"{source(d, name)}; {d['test_images']} frames of "
        f"{len(d['test_structures'])} held-out models, evenly spaced in canonical order, at "
        f"{d['detector_pixel_A']} A, {d['counts_per_px']} counts/px; one engine call per frame as the live "
        f"lane runs; {method_label(lp)} tuned on the validation models; paper PSNR in dB):",
        "",
        "| method | whole frame | vacuum | support | particle | F1 surface |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        if r.get("kind") in ("sbd", "classical") and r["method"] != "Raw":
            m = r["metrics"]
            cells = [pm(m, k) for k in REGION_KEYS] + [pm(m, "surface_f1", 2, False)]
            lines.append(f"| {method_label(r)} (n={r['n_images']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines + _loss_lines(d))


def paper_optics_check() -> str:
    """The shipped engines against the one before the imaging worlds on the ``paper`` world's test models
    (explicit focal averaging): table_5_1_paper-optics-check.json."""
    return region_check_paper("table_5_1_paper-optics-check.json")


def paper_optics_world_check() -> str:
    """The same on the ``paper-optics`` world's test models (drawn focal spread and vibration):
    table_5_1_paper-optics-world-check.json."""
    return region_check_paper("table_5_1_paper-optics-world-check.json")


def paper_gpu_check() -> str:
    """The engines trained on a GPU (session 16) beside the shipped ones on the paper test split, one
    engine call per frame: table_5_1_paper-gpu-check.json."""
    return region_check_paper("table_5_1_paper-gpu-check.json")


def paper_images() -> str:
    """``sbd-train evaluate-images`` on the paper's four released clean images: paper_images.json (the
    offline path: the engine auto picks, averaged over 8 orientations), beside it the live lanes (one
    orientation: paper_images_live.json, the same engine as on a GPU;
    paper_images_sbd-unet3s2-paper-twins.json, the fast engine a CPU's live lane runs) and the engines
    trained on a GPU in session 16, not shipped (paper_images_sbd-unet4x64-paper-10min.json,
    paper_images_sbd-unet4-paper-gpu.json) where they exist."""
    d = load("paper_images.json")
    extra = [
        (label, load(name))
        for label, name in (
            ("live on a GPU: same engine, 1 orientation", "paper_images_live.json"),
            (
                "live on a CPU: sbd-unet3s2-paper-twins, 1 orientation",
                "paper_images_sbd-unet3s2-paper-twins.json",
            ),
            (
                "candidate, not picked by auto: sbd-unet4x64-paper-ft, 8 orientations",
                "paper_images_sbd-unet4x64-paper-ft.json",
            ),
            (
                "GPU trial, not shipped: sbd-unet4x64-paper-10min, 8 orientations",
                "paper_images_sbd-unet4x64-paper-10min.json",
            ),
            (
                "GPU trial, not shipped: sbd-unet4-paper-gpu, 8 orientations",
                "paper_images_sbd-unet4-paper-gpu.json",
            ),
        )
        if (RESULTS / name).is_file()
    ]
    orient = d.get("orientations", 1)
    lines = [
        f"{source(d, 'paper_images.json')}; {len(d['rows'])} frames = the paper "
        f"repository's 4 clean images x {d['config']['draws']} noise draws, {d['detector_pixel_A']:.4f} A, "
        f"{d['config']['counts_per_px']} counts/px; engine `{Path(d['engine']).name}` averaged over "
        f"{orient} orientation(s) (offline); paper PSNR in dB; low-pass width chosen per image and region "
        "on the ground truth" + "".join(f"; {label}: `{e['command']}`" for label, e in extra) + "):",
        "",
        f"| region | SBD offline: {Path(d['engine']).name} ({orient} orientations) | "
        + "".join(f"{label} | " for label, _ in extra)
        + "oracle low-pass | margin, mean | margin, worst frame |",
        "|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for k, v in d["summary"].items():
        if v["sbd_mean"] is None:
            continue
        others = ""
        for _, e in extra:
            p = e["summary"].get(k, {}).get("sbd_mean")
            others += ("-" if p is None else f"{p:.2f}") + " | "
        lines.append(
            f"| {k} | **{v['sbd_mean']:.2f}** | {others}{_num(v.get('low_pass_mean'), '.2f')} | "
            f"{_num(v.get('margin_mean_dB'), '+.2f')} | {_num(v.get('margin_min_dB'), '+.2f')} |"
        )
    return "\n".join(lines)


def _num(v: float | None, fmt: str) -> str:
    """A table cell: ``n/a`` where evaluate-images wrote null (no finite score in that region)."""
    return "n/a" if v is None else format(v, fmt)


def dose_curve_paper() -> str:
    """``sbd-train dose-curve`` on the paper world: dose_curve_paper.json, per region."""
    d = load("dose_curve_paper.json")
    lines = [
        f"`{d['command']}` (`benchmarks/results/dose_curve_paper.json`; {d['test_images']} frames; "
        f"trained over {d.get('trained_dose_range')} x the nominal dose; paper PSNR in dB at the nominal "
        "0.45 counts/px scale; low-pass: its width tuned on the validation models at each dose):",
        "",
        "| dose | e/A^2 | whole frame | vacuum | support | particle | F1 surface | low-pass: whole | support "
        "| particle | F1 surface |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(v: float | None, digits: int = 1) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    for r in d["rows"]:
        sbd = [cell(r[k]) for k in REGION_KEYS] + [cell(r.get("surface_f1"), 2)]
        lp = [cell(r.get(f"lowpass_{k}")) for k in (REGION_KEYS[0], *REGION_KEYS[2:])]
        lp.append(cell(r.get("lowpass_surface_f1"), 2))
        lines.append(f"| {r['dose_factor']:g}x | {r['dose_e_per_A2']:.0f} | " + " | ".join(sbd + lp) + " |")
    return "\n".join(lines)


def compute_trend(name: str = "compute_trend.json") -> str:
    """``python -m benchmarks.compute_trend``: compute_trend.json (or the quality network's
    compute_trend_quality.json), one row per manifest entry."""
    d = load(name)
    lines = [
        f"{source(d, name)}; weights and their training stages listed in "
        f"`{d['manifest']}`; {d['test_images']} frames of {len(d['test_structures'])} held-out models at "
        f"{d['detector_pixel_A']} A, {d['counts_per_px']} counts/px, as Table 5.1; paper PSNR in dB, "
        "mean ± std over frames):",
        "",
        "| weights | steps (by world) | frames seen | working Mpx seen | whole frame | vacuum | support | "
        "particle | F1 surface |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(d["rows"], key=lambda r: r["steps"]):
        worlds = ", ".join(f"{w} {n:,}" for w, n in r["steps_by_world"].items())
        cells = [pm(r["metrics"], k) for k in REGION_KEYS] + [pm(r["metrics"], "surface_f1", 2, False)]
        lines.append(
            f"| `{r['name']}` | {r['steps']:,} ({worlds}) | {r['frames']:,} | {r['megapixels']:,.0f} | "
            + " | ".join(cells)
            + " |"
        )
    for b in d.get("baselines", []):  # classical references, tuned on the validation models
        cells = [pm(b["metrics"], k) for k in REGION_KEYS] + [pm(b["metrics"], "surface_f1", 2, False)]
        lines.append(f"| {method_label(b)}, tuned on val | - | - | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compute_trend_quality() -> str:
    """The wide quality network's trend: GPU trial, then its CPU continuations."""
    return compute_trend("compute_trend_quality.json")


def table_3_1_paper() -> str:
    """``sbd-train fov-study-detector --world paper --train``: table_3_1_paper.json, per region, beside the
    low-pass tuned on the validation models."""
    d = load("table_3_1_paper.json")
    lines = [
        f"{source(d, 'table_3_1_paper.json')}; {d['test_images']} frames at {d['detector_pixel_A']} A, "
        f"{d['counts_per_px']} counts/px; reach at the working pixel; paper PSNR in dB, mean ± std over "
        "frames; regions from each frame's atomic model):",
        "",
        "| network | parameters | reach (A) | training steps | whole frame | vacuum | support | particle "
        "| F1 surface |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        m = r["metrics"]
        cells = [pm(m, k, 1) for k in REGION_KEYS] + [pm(m, "surface_f1", 2, False)]
        if r.get("kind") == "classical":
            head = f"| {method_label(r)}, tuned on val | - | - | - |"
        else:
            reach, steps = f"{r['field_of_view_A']:.1f}", f"{r['training']['steps']:,}"
            head = f"| {r['method']} | {r['parameters']:,} | {reach} | {steps} |"
        lines.append(f"{head} " + " | ".join(cells) + " |")
    losses = {k: v for k, v in (d.get("region_losses_vs_low_pass") or {}).items() if k != "against"}
    if losses:
        below = ", ".join(f"{k} {len(v['losses'])}" for k, v in losses.items())
        lines += [
            "",
            f"(frame, region) pairs below the tuned low-pass, of {d['test_images']} frames: {below}.",
        ]
    return "\n".join(lines)


TWINS_CHECKS = (
    ("`paper` test models (fcc, explicit focal averaging)", "table_5_1_paper-twins-paper-check.json"),
    ("`paper-optics` test models (drawn optics)", "table_5_1_paper-twins-optics-check.json"),
    ("`paper-twins` test models (decahedra, icosahedra)", "table_5_1_paper-twins-world-check.json"),
)


def twins_checks() -> str:
    """The engines fine-tuned with twinned particles against the ones before, on the held-out test models of
    three worlds (``sbd-train evaluate-detector --world paper-twins-*-check``, one engine call per frame):
    table_5_1_paper-twins-{paper,optics,world}-check.json. One row per (test set, method)."""
    head = [
        "| test frames | method | whole | vacuum | support | particle | pairs below the tuned low-pass "
        "| smallest margin support / particle |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines, commands = [], []
    for label, name in TWINS_CHECKS:
        if not (RESULTS / name).is_file():
            continue
        d = load(name)
        n_models = len(d["test_structures"])
        commands.append(f"{source(d, name)}; {d['test_images']} frames of {n_models} models)")
        losses = d.get("region_losses_vs_low_pass") or {}
        for r in d["rows"]:
            if r.get("kind") not in ("sbd", "classical") or r["method"] == "Raw":
                continue
            m = r["metrics"]
            cells = [pm(m, k, 2, False) for k in REGION_KEYS]
            v = losses.get(r["method"])
            below = "-" if v is None else f"{len(v['losses'])} of {v['images_compared']}"
            mins = "-"
            if v is not None:
                mm = v["min_margin_dB"]
                mins = f"{mm['region_support_paper_psnr']:+.1f} / {mm['region_particle_paper_psnr']:+.1f}"
            lines.append(f"| {label} | {method_label(r)} | " + " | ".join(cells) + f" | {below} | {mins} |")
    intro = (
        "; ".join(commands) + ". Paper PSNR in dB at 0.060 A, 0.45 counts/px, mean over frames; the low-pass "
        "width tuned on each world's validation models; (frame, region) pairs below it:"
    )
    return "\n".join([intro, "", *head, *lines])


GPU_TRIALS = (
    ("candidate, not picked by auto: sbd-unet4x64-paper-ft, 8 orientations", "{}_unet4x64_ft.json"),
    ("GPU trial, not shipped: sbd-unet4x64-paper-10min, 8 orientations", "{}_unet4x64_10min.json"),
    ("GPU trial, not shipped: sbd-unet4-paper-gpu, 8 orientations", "{}_unet4_gpu.json"),
)
"""Session 16's engines trained on a GPU (docs/training.md, "GPU run on the paper's worlds"), where scored."""


def _trials(stem: str) -> tuple[tuple[str, str], ...]:
    return tuple((label, name.format(stem)) for label, name in GPU_TRIALS)


USER_ABTEM = (
    ("SBD offline: sbd-unet4-paper-twins, 8 orientations", "user_abtem_unet4_twins.json"),
    ("live on a CPU: sbd-unet3s2-paper-twins, 1 orientation", "user_abtem_fast_twins.json"),
    ("before twinned particles: sbd-unet4-paper-optics, 8 orientations", "user_abtem_unet4_optics.json"),
    ("sbd-unet3s2-paper-optics, 1 orientation", "user_abtem_fast_optics.json"),
    ("before the imaging worlds: sbd-unet4-paper, 8 orientations", "user_abtem.json"),
    *_trials("user_abtem"),
)
USER_ABTEM_OPTICS = (
    ("SBD offline: sbd-unet4-paper-twins, 8 orientations", "user_abtem_optics_unet4_twins.json"),
    ("live on a CPU: sbd-unet3s2-paper-twins, 1 orientation", "user_abtem_optics_fast_twins.json"),
    (
        "before twinned particles: sbd-unet4-paper-optics, 8 orientations",
        "user_abtem_optics_unet4_optics.json",
    ),
    ("sbd-unet3s2-paper-optics, 1 orientation", "user_abtem_optics_fast_optics.json"),
    ("before the imaging worlds: sbd-unet4-paper, 8 orientations", "user_abtem_optics_unet4.json"),
    *_trials("user_abtem_optics"),
)


def _user_table(spec: tuple[tuple[str, str], ...], frames_name: str) -> str:
    """Each engine's mean paper PSNR per region on one set of user-made frames, its worst margin over the
    per-image oracle low-pass, and how many frames it is below that blur; one row per region, and per
    optics group (focal spread, vibration) where the set has more than one."""
    runs = [(label, load(name), name) for label, name in spec if (RESULTS / name).is_file()]
    first = runs[0][1]
    frames = load(frames_name)["frames"]
    optics = {
        f["name"]: f"{f.get('focal_spread_A', 40.0) / 10:g} nm / {f.get('vibration_pm', 50.0):g} pm"
        for f in frames
    }
    groups = sorted(set(optics.values()))
    lines = [
        "; ".join(f"{label}: {source(d, name)})" for label, d, name in runs)
        + f". {len(first['rows'])} frames = {len(frames)} clean images x "
        f"{first['config']['draws']} noise draws at {first['detector_pixel_A']:.4f} A, "
        f"{first['config']['counts_per_px']} counts/px; paper PSNR in dB, mean over frames; margin = engine "
        "minus the oracle low-pass (width chosen per image and region on the ground truth); below = frames "
        "under that blur"
        + (f"; focal spread / vibration: {', '.join(groups)}" if len(groups) > 1 else "")
        + ":",
        "",
        "| region | oracle low-pass | " + " | ".join(label for label, _, _ in runs) + " |",
        "|---|---|" + "---|" * len(runs),
    ]

    def cell(rows: list[dict], k: str) -> str:
        sbd = [r["sbd"][k] for r in rows if r["sbd"].get(k) is not None]
        margins = [r["margin_dB"][k] for r in rows if r["margin_dB"].get(k) is not None]
        below = sum(m < 0 for m in margins)
        return f"{sum(sbd) / len(sbd):.2f} (worst {min(margins):+.2f}, below {below})"

    for k in ("whole", "vacuum", "support", "particle"):
        lp = first["summary"][k]["low_pass_mean"]
        lines.append(f"| {k} | {lp:.2f} | " + " | ".join(cell(d["rows"], k) for _, d, _ in runs) + " |")
    if len(groups) > 1:
        for g in groups:
            for k in ("support", "particle"):
                sel = [r for r in first["rows"] if optics[_stem(r["image"])] == g]
                lp = [r["low_pass_oracle"][k]["paper_psnr"] for r in sel]
                cells = [
                    cell([r for r in d["rows"] if optics[_stem(r["image"])] == g], k) for _, d, _ in runs
                ]
                lines.append(f"| {k}, {g} | {sum(lp) / len(lp):.2f} | " + " | ".join(cells) + " |")
    # the particle region by kind of particle: single crystals against five-fold twins
    kind = {f["name"]: f.get("particle", "?") for f in frames}
    kinds = sorted(set(kind.values()))
    if len(kinds) > 1:
        for kd in kinds:
            sel = [r for r in first["rows"] if kind[_stem(r["image"])] == kd]
            lp = [r["low_pass_oracle"]["particle"]["paper_psnr"] for r in sel]
            cells = [
                cell([r for r in d["rows"] if kind[_stem(r["image"])] == kd], "particle") for _, d, _ in runs
            ]
            lines.append(
                f"| particle, {kd} ({len(sel)}) | {sum(lp) / len(lp):.2f} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def _stem(image: str) -> str:
    """A row's image as the frames' sidecar names it: evaluate-images now writes the file name
    (``user00-0.npy``), the sidecar and older results the bare name (``user00-0``)."""
    suffixes = (".npy", ".tif", ".tiff", ".mrc", ".h5", ".hdf5")
    return Path(image).stem if Path(image).suffix in suffixes else image


def user_abtem() -> str:
    """``sbd-train evaluate-images`` on frames made as a user of abTEM makes them (``python -m
    benchmarks.user_abtem``; its parameters in user_abtem_frames.json): user_abtem*.json."""
    return _user_table(USER_ABTEM, "user_abtem_frames.json")


def user_abtem_optics() -> str:
    """The same user's frames made with other optics than the paper's 4 nm focal spread and 50 pm vibration
    (``python -m benchmarks.user_abtem --focal-spread 25 --vibration-pm 30`` and ``--focal-spread 60
    --vibration-pm 0``, merged; user_abtem_optics_frames.json): user_abtem_optics_*.json."""
    return _user_table(USER_ABTEM_OPTICS, "user_abtem_optics_frames.json")


USER_ABTEM_TWINS = (
    ("SBD offline: sbd-unet4-paper-twins, 8 orientations", "user_abtem_twins_unet4_twins.json"),
    ("live on a CPU: sbd-unet3s2-paper-twins, 1 orientation", "user_abtem_twins_fast_twins.json"),
    ("before: sbd-unet4-paper-optics, 8 orientations", "user_abtem_twins_unet4_optics.json"),
    ("before: sbd-unet3s2-paper-optics, 1 orientation", "user_abtem_twins_fast_optics.json"),
    *_trials("user_abtem_twins"),
)


def user_abtem_twins() -> str:
    """The same user's frames with twinned particles only (``python -m benchmarks.user_abtem --particles
    decahedron,icosahedron``, two optics; user_abtem_twins_frames.json): user_abtem_twins_*.json."""
    return _user_table(USER_ABTEM_TWINS, "user_abtem_twins_frames.json")
