"""The report of ``sbd-train evaluate-images``: its markdown table and its figure.

Why a module of its own: what a reader sees (the per-frame and mean tables, the dose line, the region
borders and their legend) is kept apart from how the scores are made (``images.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from training.evaluate.images import PAPER_COUNTS_PER_PX, written_whole
from training.evaluate.regions import PARTICLE, REGION_NAMES, SUPPORT, VACUUM

__all__ = ["BORDERS", "grey_range", "markdown", "region_figure", "write_figure"]


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _dose_line(res: dict[str, Any]) -> str:
    """The dose against the engine's trained range, as ``sbd-stream denoise`` records it."""
    g, dose_range = res["geometry"], res.get("dose_range")
    if dose_range is None or "dose_factor" not in g:
        return ""
    verdict = "in" if res.get("dose_in_range") else "**outside**"
    return (
        f"Dose {g['dose_e_per_A2']:.4g} e/A^2 per frame = {g['dose_factor']:.3g}x the engine's nominal, "
        f"{verdict} its trained range {dose_range[0]:.2f}-{dose_range[1]:.2f}x (`dose_in_range`)."
    )


def _geometry_words(g: dict[str, Any]) -> str:
    """``bin 4 to the 0.2400 A working pixel, 7.2 counts per working pixel in vacuum``: the header printed
    the dict's Python repr (``{'pixel_size_A': 0.1553, 'dose_e_per_A2': 18.65..., ...}``)."""
    words = []
    if "bin" in g and "working_pixel_A" in g:
        words.append(f"bin {g['bin']:g} to the {g['working_pixel_A']:.4f} A working pixel")
    if "working_vacuum_counts" in g:
        words.append(f"{g['working_vacuum_counts']:.3g} counts per working pixel in vacuum")
    shown = {"bin", "working_pixel_A", "working_vacuum_counts", "pixel_size_A", "counts_per_px"}
    shown |= {"dose_e_per_A2", "dose_factor"}  # the header's detector pixel and dose line say these
    words += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in g.items() if k not in shown]
    return ", ".join(words)


def _edge_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Which regions' oracle widths sit at the grid's edge, and in how many frames."""
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        for k, v in r["low_pass_oracle"].items():
            if v.get("sigma_at_edge"):
                counts[(k, v["sigma_at_edge"])] = counts.get((k, v["sigma_at_edge"]), 0) + 1
    if not counts:
        return []
    said = ", ".join(f"{k} in {n} frame(s) at the {edge}" for (k, edge), n in sorted(counts.items()))
    return [
        "Low-pass widths at an end of the grid (narrowest 0.5 px, widest the frame's size; a better width "
        f"may lie beyond it): {said}."
    ]


def markdown(res: dict[str, Any], command: str) -> str:
    """The per-frame table and the per-region means of a strict result (None cells read n/a)."""
    cfg = res["config"]
    lines = [
        f"# Clean images from `{res['folder']}`: SBD vs an oracle low-pass, per region",
        "",
        f"Detector pixel {res['detector_pixel_A']:.4f} A, {cfg['counts_per_px']} counts/px "
        "in vacuum, "
        f"{cfg['draws']} Poisson draws per image; engine `{res['engine']}` ({res['backend']}, "
        f"averaged over {res.get('orientations', 1)} orientation(s)"
        f"{''.join(', ' + w for w in [_geometry_words(res['geometry'])] if w)}). "
        "Paper PSNR (counts clamped to [0, 1], data range 1 count) with clean and "
        f"estimate rescaled to {PAPER_COUNTS_PER_PX} counts per vacuum pixel (x {res['score_scale']:.4g}), "
        "dB, SBD / low-pass (Gaussian width chosen per image and per region on the ground truth); n/a: not "
        "finite. Regions from the clean image (`training.evaluate.regions.regions_from_clean`).",
        *([d] if (d := _dose_line(res)) else []),
        f"Rerun: `{command}`",
        "",
        "| image | draw | whole | vacuum | support | particle | vacuum / support / particle area |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        cells = []
        for k in ("whole", *REGION_NAMES.values()):
            lp = r["low_pass_oracle"].get(k)
            cells.append(f"{_f(r['sbd'][k])} / {_f(None if lp is None else lp['paper_psnr'])}")
        fr = r["fractions"]
        lines.append(
            f"| {r['image']} | {r['draw']} | {' | '.join(cells)} | "
            f"{fr['vacuum']:.2f} / {fr['support']:.2f} / {fr['particle']:.2f} |"
        )
    lines += [
        "",
        "| mean | SBD | low-pass | margin (mean) | margin (worst image) | SBD, area-weighted | "
        "low-pass, area-weighted | margin, area-weighted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in res["summary"].items():
        lines.append(
            f"| {k} | {_f(v['sbd_mean'])} | {_f(v['low_pass_mean'])} | {_f(v['margin_mean_dB'], '+.2f')} | "
            f"{_f(v['margin_min_dB'], '+.2f')} | {_f(v.get('sbd_mean_area_weighted'))} | "
            f"{_f(v.get('low_pass_mean_area_weighted'))} | "
            f"{_f(v.get('margin_mean_area_weighted_dB'), '+.2f')} |"
        )
    lines += [
        "",
        "Means: per frame (every frame counts once), and weighted by each region's area in pixels.",
        *_edge_lines(res["rows"]),
    ]
    if res.get("skipped"):
        lines += ["", "Skipped:"]
        lines += [f"- `{s.get('path') or s.get('image')}`: {s['reason']}" for s in res["skipped"]]
    return "\n".join(lines) + "\n"


BORDERS: tuple[tuple[int, int, str, str, Literal["solid", "dashed", "dashdot"]], ...] = (
    (VACUUM, SUPPORT, "vacuum | support", "black", "solid"),
    (VACUUM, PARTICLE, "vacuum | particle", "darkorange", "dashed"),
    (SUPPORT, PARTICLE, "support | particle", "green", "dashdot"),
)
"""The region borders drawn on the error panel: one colour and line style per kind, named in a legend.

Why: contours of the label map at 0.5 and 1.5 drew a vacuum / particle border in both colours, so it
showed in the support / particle colour, and nothing in the figure said what the colours meant."""


def grey_range(img: np.ndarray) -> tuple[float, float]:
    """The grey scale of a panel: its 0.5-99.5 percentiles, widened around a constant image so that it
    shows mid-grey (with vmin == vmax, an all-vacuum frame came out solid black, read as "no signal")."""
    lo, hi = (float(v) for v in np.percentile(img, [0.5, 99.5]))
    if hi > lo:
        return lo, hi
    pad = abs(lo) or 1.0
    return lo - pad, hi + pad


def region_figure(examples: list[dict[str, np.ndarray]], names: list[str]) -> Any:
    """Clean / noisy / denoised / error per image, region borders (legend: ``BORDERS``) on the error panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from scipy.ndimage import binary_dilation

    n = len(examples)
    fig, axes = plt.subplots(n, 4, figsize=(16, 4 * n), squeeze=False)
    for row, (ex, name) in enumerate(zip(examples, names, strict=True)):
        lo, hi = grey_range(ex["clean"])
        nlo, nhi = grey_range(ex["noisy"])
        err = ex["denoised"] - ex["clean"]
        e = float(np.percentile(np.abs(err), 99.5)) or 1.0
        for ax, img, title, kw in (
            (axes[row, 0], ex["clean"], f"{name[:30]}: clean", {"vmin": lo, "vmax": hi, "cmap": "gray"}),
            (axes[row, 1], ex["noisy"], "noisy (counts)", {"vmin": nlo, "vmax": nhi, "cmap": "gray"}),
            (axes[row, 2], ex["denoised"], "denoised", {"vmin": lo, "vmax": hi, "cmap": "gray"}),
            (axes[row, 3], err, "denoised - clean; regions", {"vmin": -e, "vmax": e, "cmap": "RdBu_r"}),
        ):
            ax.imshow(img, **kw)
            ax.set_title(title)
            ax.set_axis_off()
        near = {c: binary_dilation(ex["regions"] == c, np.ones((3, 3), bool)) for c in REGION_NAMES}
        for a, b, _, colour, style in BORDERS:
            both = near[a] & near[b]  # the cells where an a pixel meets a b pixel
            if both.any():
                field = np.ma.masked_where(~both, (ex["regions"] == a).astype(float))
                axes[row, 3].contour(field, levels=[0.5], colors=[colour], linestyles=style, linewidths=1.5)
    handles = [Line2D([], [], color=c, linestyle=s, linewidth=1.5, label=lab) for _, _, lab, c, s in BORDERS]
    axes[0, 3].legend(handles=handles, title="region borders", loc="upper right", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    return fig


def write_figure(examples: list[dict[str, np.ndarray]], names: list[str], path: Path) -> Path:
    """:func:`region_figure`, written whole (``written_whole``)."""
    import matplotlib.pyplot as plt

    fig = region_figure(examples, names)
    try:
        with written_whole(path) as tmp:
            fig.savefig(tmp, dpi=70, format=path.suffix.lstrip(".") or "png")  # tmp's name has no .png
    finally:
        plt.close(fig)
    return path
