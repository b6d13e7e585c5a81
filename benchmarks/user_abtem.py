"""Clean frames made the way a user of abTEM would make them: held-out data the project did not shape.

Why: the project's test split comes from the same generator as its training set, so it cannot show
whether the engine learnt the specimen or the generator. A microscopist checking the product writes
their own few lines of ASE + abTEM inside the paper's ranges and runs ``sbd-train evaluate-images``
on the result. This script is that user, written apart from ``training.sim`` on purpose (nothing is
imported from it): ASE's fluorite CeO2 cut with ``ase.build.cut``, ``ase.cluster`` particles (an
octahedron, a truncated octahedron, a decahedron, an icosahedron), abTEM's own quasi-coherent focal
spread and convergence envelopes (the training world averages focus explicitly), Pt[110] on
CeO2(111) seen along CeO2[1-10], support steps and vacancies, a tilt by the plane wave, C10 = +5..+10 nm
with Cs = -13 um, and the 50 pm vibration as a Gaussian blur of the image. The support lies along a
random side of the frame (a real frame's support is not always at the bottom).

``python -m benchmarks.user_abtem --out DIR`` writes one ``.npy`` per frame (vacuum = 1) and
``frames.json`` with every parameter; then ``sbd-train evaluate-images DIR --pixel-size <printed>``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

A_CEO2 = 5.411
A_PT = 3.924
# rows = the lab axes in crystal coordinates: x = [11-2], y = [111] (surface normal), z = [1-10] (beam)
ROT = np.array([[1, 1, -2], [1, 1, 1], [1, -1, 0]], dtype=float)
ROT /= np.linalg.norm(ROT, axis=1, keepdims=True)


def support(n_x: int, trilayers: int, n_z: int, rng: np.random.Generator):
    """CeO2 slab, (111) up, O-terminated; one surface step over part of the width and a few vacancies."""
    from ase.build import bulk, cut

    cubic = bulk("CeO2", "fluorite", a=A_CEO2, cubic=True)
    # one period along [111] holds 3 trilayers (a * sqrt(3)); cut generously, then keep whole trilayers
    slab = cut(cubic, a=(1, 1, -2), b=(1, 1, 1), c=(1, -1, 0), extend=1.0, tolerance=0.01)
    lengths = np.linalg.norm(slab.cell[:], axis=1)
    slab.set_positions(slab.get_positions() @ ROT.T)  # crystal axes -> lab axes (the cell is orthogonal)
    slab.set_cell(np.diag(lengths))
    slab.wrap()
    slab = slab.repeat((n_x, (trilayers + 2) // 3 + 1, n_z))
    pos = slab.get_positions()
    ce_y = np.sort(np.unique(np.round(pos[slab.numbers == 58, 1], 2)))
    keep_ce = ce_y[:trilayers]
    lo, hi = keep_ce[0] - 0.9, keep_ce[-1] + 0.9  # each Ce plane with its two O planes (+-0.78 A)
    slab = slab[(pos[:, 1] > lo) & (pos[:, 1] < hi)]
    pos = slab.get_positions()
    pos[:, 1] -= pos[:, 1].min()
    slab.set_positions(pos)
    top_ce = float(pos[slab.numbers == 58, 1].max())
    width = slab.cell[0, 0]
    if rng.random() < 0.6:  # a one-trilayer step: remove the top trilayer over part of the width
        x0 = rng.uniform(0, width)
        span = rng.uniform(0.25, 0.5) * width
        in_step = ((slab.positions[:, 0] - x0) % width) < span
        top = slab.positions[:, 1] > top_ce - 1.0  # the top Ce plane and its O
        slab = slab[~(in_step & top)]
    o_idx = np.flatnonzero(slab.numbers == 8)
    drop = rng.choice(o_idx, size=int(0.01 * len(o_idx)), replace=False)  # 1 % oxygen vacancies
    keep = np.ones(len(slab), bool)
    keep[drop] = False
    return slab[keep]


def particle(kind: str, rng: np.random.Generator):
    """A Pt cluster from ase.cluster turned so that its [110] runs along the beam and (111) faces down."""
    from ase.cluster import Decahedron, Icosahedron, Octahedron

    if kind == "octahedron":
        p = Octahedron("Pt", length=int(rng.integers(5, 8)), cutoff=0, latticeconstant=A_PT)
    elif kind == "truncated-octahedron":
        length = int(rng.integers(6, 10))
        cutoff = int(rng.integers(1, (length - 1) // 2 + 1))
        p = Octahedron("Pt", length=length, cutoff=cutoff, latticeconstant=A_PT)
    elif kind == "decahedron":
        p = Decahedron("Pt", p=int(rng.integers(4, 7)), q=1, r=0, latticeconstant=A_PT)
    else:
        p = Icosahedron("Pt", noshells=int(rng.integers(4, 6)), latticeconstant=A_PT)
    pos = p.get_positions() - p.get_positions().mean(0)
    if kind in ("octahedron", "truncated-octahedron"):
        pos = pos @ ROT.T  # cubic fcc axes -> lab axes
    else:  # five-fold clusters: a random in-plane turn, their axis along the beam
        t = rng.uniform(0, 2 * np.pi)
        pos = pos @ np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]).T
    p.set_positions(pos)
    p.set_cell(np.zeros((3, 3)))
    return p


PARTICLE_KINDS = ("octahedron", "truncated-octahedron", "decahedron", "icosahedron")


def specimen(rng: np.random.Generator, kinds: tuple[str, ...] = PARTICLE_KINDS) -> tuple[Atoms, dict]:
    from ase import Atoms

    trilayers = int(rng.integers(6, 11))  # 2 of them (MARGIN_A) fall below the field
    n_z = int(rng.integers(4, 8))  # 30.6-53.6 A along the beam: the paper's 3-6 nm
    slab = support(4, trilayers, n_z, rng)
    kind = str(rng.choice(list(kinds)))
    pt = particle(kind, rng)
    width, depth = slab.cell[0, 0], slab.cell[2, 2]
    height = width  # a square field
    x_c = rng.uniform(0.2, 0.8) * width
    # the particle rests on the local surface (a step may have lowered it under its centre)
    near = np.abs(((slab.positions[:, 0] - x_c + width / 2) % width) - width / 2) < 6.0
    surface_y = float(slab.positions[near, 1].max()) if near.any() else float(slab.positions[:, 1].max())
    pos = pt.get_positions()
    pos[:, 0] += x_c
    pos[:, 1] += surface_y + 2.4 - pos[:, 1].min()
    pos[:, 2] += depth / 2
    pt.set_positions(pos)
    atoms = Atoms(slab) + pt
    atoms.set_cell([width, height, depth])
    atoms.pbc = True
    atoms.wrap()
    meta = {
        "support_trilayers": trilayers,
        "thickness_A": round(float(depth), 2),
        "particle": kind,
        "particle_atoms": len(pt),
        "particle_diameter_A": round(float(np.ptp(pt.positions[:, 0])), 1),
        "atoms": len(atoms),
    }
    return atoms, meta


MARGIN_A = 6.0  # vacuum below the support and above the field, cropped away (the cell is periodic)


def images(
    atoms,
    pixel_A: float,
    tilt_mrad: tuple[float, float],
    c10s_A: list[float],
    seed: int,
    focal: str = "envelope",
    focal_spread_A: float = 40.0,
    vibration_pm: float = 50.0,
) -> list[np.ndarray]:
    """One exit wave (4 frozen-phonon configurations), imaged at each C10; square, support at the bottom.

    The specimen is simulated in a cell ``MARGIN_A`` taller at both ends than the field and cropped, so
    that the support's cut-off bottom face and its periodic image above the field stay out of the frame.
    ``focal``: abTEM's quasi-coherent focal-spread envelope (what its CTF offers), or ``explicit``: the
    coherent image averaged over 8 Gauss-Hermite focus nodes (Dr. Probe's way, as the training world).
    ``focal_spread_A`` (1/e half-width) and ``vibration_pm`` (RMS per axis) are the paper's 40 A and 50 pm
    by default; users vary both.
    """
    import abtem
    from abtem.measurements import Images
    from scipy.ndimage import gaussian_filter

    width = float(atoms.cell[0, 0])
    shifted = atoms.copy()  # the support from y = 0; the field spans y = MARGIN_A .. MARGIN_A + width
    shifted.set_cell([width, width + 2 * MARGIN_A, atoms.cell[2, 2]])
    gx = round(width / pixel_A)
    gy = round((width + 2 * MARGIN_A) / pixel_A)
    frozen = abtem.FrozenPhonons(shifted, num_configs=4, sigmas=0.08, seed=seed)
    potential = abtem.Potential(frozen, gpts=(gx, gy), slice_thickness=1.0, projection="infinite")
    waves = abtem.PlaneWave(energy=300e3, tilt=tilt_mrad).multislice(potential)
    assert isinstance(waves, abtem.Waves)  # no detectors: the exit waves themselves
    exit_wave = waves.compute()
    assert isinstance(exit_wave, abtem.Waves)  # no profilers: compute returns no tuple
    crop = round(MARGIN_A / (width + 2 * MARGIN_A) * gy)
    out = []
    for c10 in c10s_A:
        if focal == "envelope":
            nodes, weights = [0.0], [1.0]
            spread = focal_spread_A
        else:  # 1/e half-width s: weights exp(-(d / s)^2)
            x, w = np.polynomial.hermite.hermgauss(8)
            nodes, weights, spread = list(focal_spread_A * x), list(w / w.sum()), 0.0
        parts = []
        for dz, wt in zip(nodes, weights, strict=True):
            ctf = abtem.CTF(
                energy=300e3, defocus=-(c10 + dz), Cs=-13e4, C5=5e7, focal_spread=spread, angular_spread=0.2
            )
            intensity = exit_wave.apply_ctf(ctf).intensity().reduce_ensemble().compute()
            assert isinstance(intensity, Images)  # no profilers: compute returns no tuple
            parts.append(wt * np.asarray(intensity.array))
        img = sum(parts[1:], start=parts[0])  # the weighted sum, added in the nodes' order
        if vibration_pm > 0:
            img = gaussian_filter(
                np.asarray(img, np.float64), vibration_pm / 100.0 / (width / gx), mode="wrap"
            )
        img = img.T[::-1]  # abTEM arrays are [x, y]: rows = y, row 0 at the top
        out.append(img[gy - crop - gx : gy - crop])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--specimens", type=int, default=8)
    ap.add_argument("--defocus-per-specimen", type=int, default=2)
    ap.add_argument("--gpts", type=int, default=1060, help="grid points across the 53 A field")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--focal", choices=["envelope", "explicit"], default="envelope")
    ap.add_argument("--only", type=int, nargs="*", help="simulate only these specimens (same draws)")
    ap.add_argument(
        "--name-prefix",
        default="",
        help="prefix of the frame names; frames of other prefixes in --out are kept",
    )
    ap.add_argument("--focal-spread", type=float, default=40.0, help="focal spread, 1/e half-width in A")
    ap.add_argument("--vibration-pm", type=float, default=50.0, help="RMS image vibration per axis; 0: none")
    ap.add_argument(
        "--particles",
        default=",".join(PARTICLE_KINDS),
        help="comma-separated particle kinds to draw from (" + ", ".join(PARTICLE_KINDS) + ")",
    )
    args = ap.parse_args(argv)
    kinds = tuple(k.strip() for k in args.particles.split(",") if k.strip())
    if not kinds or set(kinds) - set(PARTICLE_KINDS):
        ap.error(f"--particles: choose from {', '.join(PARTICLE_KINDS)}")

    import abtem

    abtem.config.set({"diagnostics.progress_bar": False})
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    frames = []
    pixel = 53.0 / args.gpts
    for s in range(args.specimens):
        atoms, meta = specimen(rng, kinds)
        axis = int(rng.integers(0, 2))
        tilt = [0.0, 0.0]
        tilt[axis] = float(np.deg2rad(rng.uniform(1.0, 3.0)) * 1e3 * rng.choice([-1, 1]))
        turn = int(rng.integers(0, 4))  # which side of the frame the support lies on
        c10s = sorted(float(rng.uniform(50.0, 100.0)) for _ in range(args.defocus_per_specimen))
        if args.only and s not in args.only:
            continue
        t0 = time.perf_counter()
        imgs = images(
            atoms,
            pixel,
            (tilt[0], tilt[1]),
            c10s,
            seed=s,
            focal=args.focal,
            focal_spread_A=args.focal_spread,
            vibration_pm=args.vibration_pm,
        )
        for d, (c10, img) in enumerate(zip(c10s, imgs, strict=True)):
            name = f"{args.name_prefix}user{s:02d}-{d}"
            np.save(args.out / f"{name}.npy", np.rot90(img, turn).astype(np.float32))
            frames.append(
                {
                    "name": name,
                    **meta,
                    "tilt_mrad": [round(t, 1) for t in tilt],
                    "c10_A": round(c10, 1),
                    "support_side": ["bottom", "right", "top", "left"][turn],
                    "focal": args.focal,
                    "focal_spread_A": args.focal_spread,
                    "vibration_pm": args.vibration_pm,
                    "seconds": round((time.perf_counter() - t0) / len(c10s), 1),
                }
            )
            print(json.dumps(frames[-1]), flush=True)
    pixel = float(atoms.cell[0, 0] / round(atoms.cell[0, 0] / pixel))
    listing = args.out / "frames.json"
    if listing.is_file():  # other runs' frames in the same folder (another --name-prefix) stay listed
        old = json.loads(listing.read_text())
        if abs(old["pixel_size_A"] - pixel) > 1e-6:
            raise SystemExit(f"{listing} lists frames at {old['pixel_size_A']} A, not {pixel:.5f} A")
        names = {f["name"] for f in frames}
        frames = [f for f in old["frames"] if f["name"] not in names] + frames
    listing.write_text(json.dumps({"pixel_size_A": pixel, "frames": frames}, indent=1))
    print(
        f"pixel size {pixel:.5f} A; next: sbd-train evaluate-images {args.out} --pixel-size {pixel:.5f} "
        f"--resize {pixel / 0.06:.4f}"
    )


if __name__ == "__main__":
    main()
