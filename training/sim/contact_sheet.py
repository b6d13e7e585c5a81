"""A small PNG that lets a microscopist judge the simulated set at a glance.

Rows pair a clean image with one Poisson-noisy frame at the file's dose; one block per particle class
sweeps defocus (contrast reversal, Fig. A.1), one block sweeps support thickness (Fig. A.2).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sbd_stream.compute.noise import poisson_counts
from sbd_stream.stop_pending import check_stop
from training.sim.dataset import SimulatedDataset

FRAMES = 1000
"""Frames summed in the third row of a block: enough dose for the columns to emerge from the noise."""


def _pick(table: dict[str, np.ndarray], **eq: object) -> np.ndarray:
    ok = np.ones(len(table["structure_id"]), dtype=bool)
    for k, v in eq.items():
        ok &= table[k] == v
    return np.flatnonzero(ok)


def _defocus_series(table: dict[str, np.ndarray], particle_class: str, max_cols: int) -> list[int]:
    """Images of one structure, untilted, thinnest support, sorted by defocus."""
    idx = _pick(table, particle_class=particle_class, tilt_x_deg=0.0, tilt_y_deg=0.0)
    if len(idx) == 0:
        return []
    sid = table["structure_id"][idx[0]]
    idx = idx[table["structure_id"][idx] == sid]
    idx = idx[table["thickness_nm"][idx] == table["thickness_nm"][idx].min()]
    idx = idx[np.argsort(table["defocus_nm"][idx])]
    if len(idx) > max_cols:
        idx = idx[np.linspace(0, len(idx) - 1, max_cols).round().astype(int)]
    return [int(i) for i in idx]


def _thickness_series(table: dict[str, np.ndarray], max_cols: int) -> list[int]:
    """One untilted structure and defocus, all thicknesses."""
    idx = _pick(table, tilt_x_deg=0.0, tilt_y_deg=0.0)
    best: list[int] = []
    for key in np.unique(table["task_key"][idx]):
        sub = idx[table["task_key"][idx] == key]
        df = np.median(table["defocus_nm"][sub])
        df = table["defocus_nm"][sub][np.argmin(np.abs(table["defocus_nm"][sub] - df))]
        sub = sub[table["defocus_nm"][sub] == df]
        if len(sub) > len(best):
            best = [int(i) for i in sub[np.argsort(table["thickness_nm"][sub])]]
    return best[:max_cols]


def make_contact_sheet(data: Path, out: Path, seed: int = 0, max_cols: int = 5, crop: int = 192) -> Path:
    """Write the sheet; ``crop`` px around the particle keep it small yet show atomic columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rng = np.random.default_rng(seed)
    with SimulatedDataset(data) as ds:
        table = ds.meta_table()
        blocks: list[tuple[str, list[int], str]] = []
        for pc in sorted(set(table["particle_class"])):
            series = _defocus_series(table, pc, max_cols)
            if series:
                blocks.append((f"{pc}\ndefocus sweep", series, "defocus"))
        series = _thickness_series(table, max_cols)
        if series:
            blocks.append(("support\nthickness sweep", series, "thickness"))
        if not blocks:
            raise ValueError(f"{data} has no untilted images to show")
        n_cols = max(len(b[1]) for b in blocks)
        n_rows = 3 * len(blocks)
        width, height = 1.5 * n_cols + 1.3, 1.55 * n_rows + 0.9
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)
        fig.subplots_adjust(
            left=1.3 / width, right=0.99, top=1 - 0.9 / height, bottom=0.01, wspace=0.04, hspace=0.2
        )
        for ax in axes.flat:
            ax.axis("off")
        for b, (title, idx, kind) in enumerate(blocks):
            dose = ds.meta(idx[0])["dose"]
            for c, i in enumerate(idx):
                check_stop()  # a Ctrl-C Python swallowed (h5py drops objects) ends it here, no sheet
                m = ds.meta(i)
                clean = _crop(ds.clean(i), ds.columns(i), crop)
                label = f"C1 {m['defocus_nm']:g} nm" if kind == "defocus" else f"t {m['thickness_nm']:g} nm"
                if m["contrast_class"] >= 0:
                    label += " " + "BIW"[m["contrast_class"]]
                rows = (
                    clean,
                    poisson_counts(clean, dose, rng, np.int32),
                    poisson_counts(clean, FRAMES * dose, rng, np.int32),
                )
                for r, img in enumerate(rows):
                    axes[3 * b + r, c].imshow(img, cmap="gray", interpolation="nearest")
                axes[3 * b, c].set_title(label, fontsize=7, pad=2)
            for r, text in enumerate(
                (f"{title}\nclean", f"1 frame\n({dose:.2f} e/px)", f"sum of {FRAMES}\nframes")
            ):
                box = axes[3 * b + r, 0].get_position()
                fig.text(box.x0 - 0.01, (box.y0 + box.y1) / 2, text, fontsize=7, ha="right", va="center")
        px = ds.meta(blocks[0][1][0])["pixel_size_A"]
        fig.suptitle(
            f"{data.name}: clean vs Poisson-noisy, {crop} px crops at {px:.3f} A/px\n"
            "C1 = +defocus (overfocus), Cs = -13 um; B/I/W = majority black/intermediate/white Pt columns",
            fontsize=7,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        fig.savefig(buf, dpi=80)
        plt.close(fig)
    # Grey levels only: an 8-bit greyscale PNG is ~3x smaller than matplotlib's RGBA.
    Image.open(buf).convert("L").save(out, optimize=True)
    return out


def _crop(img: np.ndarray, columns: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Square crop centred on the Pt columns (the particle and the support just below it)."""
    h, w = img.shape
    size = min(size, h, w)
    pt = columns["xy"][columns["species"] == 78]
    cy, cx = (pt.mean(0) if len(pt) else np.array([h / 2, w / 2])) + np.array([size * 0.15, 0])
    r0 = int(np.clip(round(cy - size / 2), 0, h - size))
    c0 = int(np.clip(round(cx - size / 2), 0, w - size))
    return img[r0 : r0 + size, c0 : c0 + size]
