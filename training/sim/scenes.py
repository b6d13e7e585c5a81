"""Scene bundles for the emulator: one held-out atomic model of the paper world, imaged over a defocus
series, plus event variants of the same model (a Pt surface column vanishes, or hops to a neighbouring
empty surface site), each imaged the same way.

Why: a microscope shows one specimen for seconds at a time, drifting and slowly changing focus; the
emulator (``sbd_stream/sources/scene.py``) plays such a bundle instead of a different image every frame,
so multi-frame methods (evidence frames) see a realistic stream. Events are physical: the atoms are
deleted or moved in the model and the exit wave recomputed, not painted into the image. The event
column's atoms are put last in the model so abTEM's frozen-phonon draws (one normal triple per atom, in
order) give every other atom the same displacements in all variants: the variants differ only where
the event happened.

Only test-split models (``training.sim.splits`` over the paper plan) are used, so an engine is never shown
a specimen it was trained on. Format (read by ``sbd_stream.sources.scene.SceneBundle``)::

    attrs: format = "sbd-scenes/1", pixel_size_A, dose_e_per_A2, preset, source
    scenes/<structure_id>/            attrs: thickness_nm, tilt_x_deg, tilt_y_deg, split = "test", ...
        defocus_nm                    (D,) float32
        <variant>/images              (D, 220, 220) float32, vacuum = 1, gzip
        <variant>/columns/{xy, species, is_surface}   xy [row, col] in the bundle's pixels
        <variant>                     attrs: event (JSON: kind, atoms, xy_px, to_xy_px), "" for "base"
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.sources.stacks import atomic_h5
from sbd_stream.stop_pending import check_stop
from training.sim.splits import split_structures
from training.sim.structures import A_PT, FCC, Z_PT, _lattice, cluster_columns
from training.sim.worlds import WORLDS, TaskSpec, World, plan

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "sbd_stream" / "samples" / "scenes.h5"
DEFOCUS_SERIES_NM = [float(d) for d in np.arange(0.0, 20.01, 2.5)]
"""0-20 nm in 2.5 nm steps: neighbours close enough that the emulator's linear blend between them is a
fair focus change (the 4 nm focal spread makes the image smooth in focus)."""
QUANTUM = 2.0**-14
"""Images are rounded to this (6e-5 of vacuum, far below shot noise) so gzip can shrink them."""


def test_tasks(
    preset: World, n: int, classes: tuple[str, ...] = ("PtNp1", "PtNp2", "PtNp3")
) -> list[TaskSpec]:
    """The untilted task of ``n`` test-split models (small particles first: cheaper and more surface)."""
    tasks = plan(preset)
    test = set(split_structures(np.array([t.structure.structure_id for t in tasks]), preset.split)["test"])
    picked = [
        t
        for t in tasks
        if t.structure.structure_id in test
        and t.tilt_deg == (0.0, 0.0)
        and t.structure.particle_class.value in classes
    ]
    picked.sort(key=lambda t: (classes.index(t.structure.particle_class.value), t.structure.structure_id))
    return picked[:n]


def _nn_vectors_3d() -> np.ndarray:
    """3-D fcc nearest-neighbour vectors whose projection is a nearest projected column (2.40 A)."""
    pos = _lattice(A_PT, FCC, np.array([-4.0, -4, -4]), np.array([4.0, 4, 4]))
    d3 = np.linalg.norm(pos, axis=1)
    nn = pos[np.abs(d3 - A_PT / math.sqrt(2)) < 0.05]
    d2 = np.linalg.norm(nn[:, :2], axis=1)
    first = d2[d2 > 0.1].min()
    return nn[np.abs(d2 - first) < 0.05]


def choose_events(atoms: Any, thickness_A: float, y_interface: float) -> dict[str, dict[str, Any]]:
    """Event columns of one model: ``vanish`` the longest Pt surface column away from the interface
    (the strongest contrast to lose); ``hop`` a surface column with an empty neighbour site above the
    interface held by the most occupied neighbour sites (at least 2), and the 3-D fcc step to it."""
    pos, num = atoms.positions, atoms.numbers
    pt = np.flatnonzero((num == Z_PT) & (pos[:, 2] < thickness_A))
    labels = cluster_columns(pos[pt, :2])
    k = labels.max() + 1
    cnt = np.bincount(labels, minlength=k)
    cxy = np.stack([np.bincount(labels, pos[pt, i], k) / cnt for i in range(2)], 1)
    vecs = _nn_vectors_3d()

    def occupied(site: np.ndarray, skip: int = -1) -> bool:
        d = np.linalg.norm(cxy - site, axis=1)
        if skip >= 0:
            d[skip] = np.inf
        return bool((d < 0.5).any())

    def empty_sites(c: int) -> list[np.ndarray]:
        return [v for v in vecs if not occupied(cxy[c] + v[:2]) and cxy[c, 1] + v[1] > y_interface + 0.5]

    free = [
        c for c in np.argsort(-(cnt + 0.1 * cxy[:, 1])) if cxy[c, 1] > y_interface + 3.0 and empty_sites(c)
    ]
    if not free:
        raise ValueError("no Pt surface column above the interface")
    vanish = int(free[0])
    hops = [
        (sum(occupied(cxy[c] + v[:2] + w[:2], skip=c) for w in vecs), int(c), v)
        for c in free
        if c != vanish and cnt[c] >= 2
        for v in empty_sites(c)
    ]
    hops = [h for h in hops if h[0] >= 2]
    if not hops:
        raise ValueError("no surface column with a supported empty neighbour site")
    _, hop, v = max(hops, key=lambda h: (h[0], cnt[h[1]]))
    z = pos[pt[labels == hop], 2]
    dz = v[2] if (z + v[2]).min() > 0.5 and (z + v[2]).max() < thickness_A - 0.5 else -v[2]
    return {
        "vanish": {"atoms": pt[labels == vanish], "xy_A": cxy[vanish]},
        "hop": {"atoms": pt[labels == hop], "xy_A": cxy[hop], "shift_A": np.array([v[0], v[1], dz])},
    }


def variants(atoms: Any, events: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """base / vanish / hop models, ordered others + hop column + vanish column, so abTEM's per-atom
    phonon draws are the same for every atom the event does not touch."""
    gone, moved = events["vanish"]["atoms"], events["hop"]["atoms"]
    order = np.concatenate([np.setdiff1d(np.arange(len(atoms)), np.concatenate([gone, moved])), moved, gone])
    base = atoms[order]
    hop = base.copy()
    hop.positions[len(base) - len(gone) - len(moved) : len(base) - len(gone)] += events["hop"]["shift_A"]
    return {"base": base, "vanish": base[: len(base) - len(gone)], "hop": hop}


def image_series(atoms: Any, spec: TaskSpec, preset: World, thickness_A: float, y_interface: float,
                 defocus_nm: list[float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    """Exit wave once (one thickness), every defocus at the preset's working view, and the columns."""
    from training.sim import imaging

    sp = preset.sampling
    tilt = (float(np.deg2rad(spec.tilt_deg[0]) * 1e3), float(np.deg2rad(spec.tilt_deg[1]) * 1e3))
    seed = int(
        np.random.default_rng([spec.structure.seed, *np.round(spec.tilt_deg).astype(int)]).integers(2**31)
    )
    waves = imaging.exit_waves(atoms, [thickness_A], sp, tilt, seed, preset.optics.energy_eV)
    extent, view = float(atoms.cell[0, 0]), sp.view()
    assert view is not None, "scenes are rendered at a working-pixel view"
    imager = imaging.CoherentImager(waves, preset.optics)
    vib = preset.optics.vibration_pm / 100.0
    images = np.stack([imaging.render_view(imager.images(df), extent, view, vib)[0] for df in defocus_nm])
    truth = imaging.column_truth(
        atoms.positions, atoms.numbers, thickness_A, tilt, extent, sp.image_px, y_interface, view=view
    )
    return np.round(images / QUANTUM) * QUANTUM, truth


def _to_px(xy_A: np.ndarray, preset: World, extent: float) -> list[float]:
    """Model (x, y) in A -> [row, col] in the working view's pixels (imaging.View's convention)."""
    view = preset.sampling.view()
    assert view is not None
    x_lo, y_lo = view.origin_A(extent)
    n, p = view.image_px, view.pixel_A
    return [float(n - 0.5 - (xy_A[1] - y_lo) / p), float((xy_A[0] - x_lo) / p - 0.5)]


def write_scenes(
    out: Path = DEFAULT_OUT,
    n_models: int = 1,
    thickness_nm: float = 4.0,
    defocus_nm: list[float] | None = None,
    preset_name: str = "paper",
    log: Any = print,
) -> Path:
    """Simulate ``n_models`` test-split scenes (base + vanish + hop) and write the bundle."""
    from training.sim.structures import Z_PERIOD, build, support_layers_for

    preset = WORLDS[preset_name]
    defocus = defocus_nm or DEFOCUS_SERIES_NM
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(out) as f:  # renamed into place complete; a stop or failure leaves nothing (was *.tmp.h5)
        f.attrs.update(
            format="sbd-scenes/1", pixel_size_A=preset.pixel_size_A(), dose_e_per_A2=preset.dose_per_area(),
            preset=preset.name, source=f"training.sim.scenes: {preset.name} world, test split, abTEM",
        )  # fmt: skip
        for spec in test_tasks(preset, n_models):
            t0 = time.perf_counter()
            thick_A = support_layers_for(thickness_nm) * Z_PERIOD
            atoms, desc = build(spec.structure, thick_A)
            events = choose_events(atoms, thick_A, desc["y_interface_A"])
            extent = float(atoms.cell[0, 0])
            g = f.create_group(f"scenes/{spec.structure.structure_id}")
            g.attrs.update(
                structure_id=spec.structure.structure_id, split="test", thickness_nm=thickness_nm,
                tilt_x_deg=spec.tilt_deg[0], tilt_y_deg=spec.tilt_deg[1],
                particle_class=spec.structure.particle_class.value,
                defect_class=spec.structure.defect_class.value, structure_json=json.dumps(desc),
            )  # fmt: skip
            g["defocus_nm"] = np.asarray(defocus, np.float32)
            gone, hop = events["vanish"], events["hop"]
            descs = {
                "base": "",
                "vanish": {
                    "kind": "vanish",
                    "atoms": len(gone["atoms"]),
                    "xy_px": _to_px(gone["xy_A"], preset, extent),
                    "what": "Pt surface column removed",
                },
                "hop": {
                    "kind": "hop",
                    "atoms": len(hop["atoms"]),
                    "xy_px": _to_px(hop["xy_A"], preset, extent),
                    "to_xy_px": _to_px(hop["xy_A"] + hop["shift_A"][:2], preset, extent),
                    "what": "Pt surface column moved to a neighbouring empty surface site",
                },
            }
            for name, model in variants(atoms, events).items():
                check_stop()  # a Ctrl-C Python swallowed (abTEM's Dask drops objects): not ~5 min more
                images, truth = image_series(model, spec, preset, thick_A, desc["y_interface_A"], defocus)
                v = g.create_group(name)
                v.create_dataset("images", data=images.astype(np.float32), chunks=(1, *images.shape[1:]),
                                 compression="gzip", compression_opts=9, shuffle=True)  # fmt: skip
                for key, dt in (("xy", np.float32), ("species", np.uint8), ("is_surface", bool)):
                    v[f"columns/{key}"] = np.asarray(truth[key], dt)
                v.attrs["event"] = json.dumps(descs[name]) if descs[name] else ""
                sid, secs = spec.structure.structure_id, time.perf_counter() - t0
                log(f"{sid} {name}: {len(images)} images, {secs:.0f} s")
        check_stop()  # one swallowed during the last variant: no bundle, as for any stop
    return out
