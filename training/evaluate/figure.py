"""Figure 5.2 analogue: one held-out test frame through every method of Table 5.1, side by side.

PSNR numbers hide *what* a method gets wrong (a blurred mean image scores well and shows no atom), so
the table ships with a picture. The figure re-runs each method with the hyperparameters recorded in
``table_5_1.json`` on the very noisy frames the table used (same seed per image), so it can't drift
from the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluate.baselines import classical_baselines
from training.evaluate.images import written_whole
from training.evaluate.metrics import psnr
from training.evaluate.tables import EvalConfig, load_items, sbd_method


def comparison_images(
    table: dict[str, Any], data: Path, n_images: int = 2, kind: str = "auto"
) -> tuple[list[str], list[list[np.ndarray]], list[list[float]], list[str]]:
    """(method labels, images[row][method], PSNR[row][method], structure ids) for evenly spaced frames."""
    cfg = EvalConfig(data=data, seed=int(table["noise_seed"]))
    items, dose = load_items(cfg.data, cfg.split, "test", cfg.seed, None)
    picks = [items[i] for i in np.linspace(0, len(items) - 1, n_images + 2).astype(int)[1:-1]]
    by_label = {b.label: b for b in classical_baselines()}
    methods = []
    for row in table["rows"]:
        if row["kind"] == "classical" and row["method"] in by_label:
            methods.append((row["method"], by_label[row["method"]].bind(row.get("params", {}))))
        elif row["kind"] == "sbd" and Path(row["engine"]).is_dir():
            methods.append((row["method"], sbd_method(Path(row["engine"]), kind)[0]))
    labels = [m[0] for m in methods] + ["Clean"]
    images, scores = [], []
    for it in picks:
        outs = [np.asarray(fn(it.counts, dose), np.float64) for _, fn in methods] + [it.clean]
        images.append(outs)
        scores.append([psnr(it.clean, o) for o in outs[:-1]] + [float("inf")])
    return labels, images, scores, [it.structure_id for it in picks]


def write_comparison_figure(table_json: Path, data: Path, out: Path, n_images: int = 2) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = json.loads(table_json.read_text())
    labels, images, scores, ids = comparison_images(table, data, n_images)
    fig, axes = plt.subplots(len(images), len(labels), figsize=(1.9 * len(labels), 2.1 * len(images)))
    axes = np.atleast_2d(axes)
    for r, (row, row_scores) in enumerate(zip(images, scores, strict=True)):
        clean = row[-1]
        lo, hi = float(clean.min()), float(clean.max())  # every panel on the clean image's grey scale
        for c, (img, label, score) in enumerate(zip(row, labels, row_scores, strict=True)):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            title = label if np.isinf(score) else f"{label}\n{score:.1f} dB"
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(ids[r], fontsize=7)
    fig.suptitle(f"Held-out test frames, dose {table['dose']:g} e/px (noise seed {table['noise_seed']})")
    fig.tight_layout()
    try:
        with written_whole(out) as tmp:  # a failed write never replaces a good figure
            fig.savefig(tmp, dpi=90, format=out.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return out
