"""Cost of the training-set simulation on this machine: exit waves, defocus images, whole presets.

Run: python -m benchmarks.bench_simulation [--quick]
Writes benchmarks/results/simulation.json and prints a table. The paper-size exit wave is timed on a
thin slab (few slices, one phonon configuration) and scaled linearly in slices and configurations,
which is how multislice cost grows; this is an extrapolation and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.common import out_path, stamped

if TYPE_CHECKING:
    from training.sim.structures import StructureParams


def _time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def timed_specimen(preset_name: str) -> StructureParams:
    """The one model every preset is timed on: a PtNp3 particle at ``particle_z_A`` 5 with ``r111`` 3."""
    from training.sim.structures import DefectClass, ParticleClass, make_params
    from training.sim.worlds import WORLDS

    preset = WORLDS[preset_name]
    params = make_params(
        0, ParticleClass.PtNp3, DefectClass.D0, 1, preset.cell_periods_x, preset.support_trilayers
    )
    return params.model_copy(update={"particle_z_A": 5.0, "r111": 3.0})


def measure(preset_name: str, n_layers: int, reps: int) -> dict:
    """Seconds per phonon config per slice (exit wave) and per config per exit plane (defocus image)."""
    from training.sim import imaging
    from training.sim.structures import Z_PERIOD, build
    from training.sim.worlds import WORLDS

    preset = WORLDS[preset_name]
    sp = preset.sampling.model_copy(update={"n_phonons": 1})
    thick = n_layers * Z_PERIOD
    atoms, _ = build(timed_specimen(preset_name), thick)
    n_slices = max(1, round(thick / sp.slice_thickness_A))
    imaging.exit_waves(atoms, [thick], sp, (0.0, 0.0), 0)  # warm-up: numba compilation, FFTW plans
    waves = None

    def run_exit() -> None:
        nonlocal waves
        waves = imaging.exit_waves(atoms, [thick], sp, (0.0, 0.0), 0)

    t_exit = _time(run_exit, reps)

    stacks: list[np.ndarray] = []

    def run_ctf() -> None:  # CTF + intensity for one phonon configuration and exit plane
        stacks[:] = [imaging.defocus_images(waves, 8.0, preset.optics)]

    def run_post() -> None:  # once per image after the phonon average: vibration blur + binning
        view = sp.view()
        if view is not None:  # windowed presets: band-limited rendering at the pixel (blur included)
            imaging.render_view(stacks[0], float(atoms.cell[0, 0]), view, 0.5)
            return
        stack = imaging.vibration_blur(stacks[0], float(atoms.cell[0, 0]), 0.5)
        imaging.to_detector(stack, sp.image_px)

    run_ctf()
    t_ctf = _time(run_ctf, reps)
    t_post = _time(run_post, reps)
    return {
        "preset": preset_name,
        "gpts": sp.gpts,
        "image_px": sp.image_px,
        "pixel_size_A": preset.pixel_size_A(),
        "sampling_A": preset.extent_A() / sp.gpts,
        "slice_thickness_A": thick / n_slices,
        "timed_slices": n_slices,
        "s_per_slice_per_config": t_exit / n_slices,
        "s_ctf_per_config_per_plane": t_ctf,
        "s_blur_and_bin_per_image": t_post,
        "focal_mode": preset.optics.focal_mode,
        "focal_points": preset.optics.focal_points if preset.optics.focal_mode == "explicit" else None,
    }


def extrapolate(m: dict, workers: list[int]) -> dict:
    """Whole-preset cost from the unit costs: tasks x (exit wave + defocus images) / workers."""
    from training.sim.structures import Z_PERIOD, support_layers_for
    from training.sim.worlds import WORLDS, plan

    preset = WORLDS[m["preset"]]
    tasks = plan(preset)
    n_cfg = preset.sampling.n_phonons
    max_t = support_layers_for(max(max(t.thicknesses_nm) for t in tasks)) * Z_PERIOD
    slices = round(max_t / m["slice_thickness_A"])
    exit_s = m["s_per_slice_per_config"] * slices * n_cfg
    per_task_images = np.mean([len(t.thicknesses_nm) * len(t.defocus_nm) for t in tasks])
    image_s = (m["s_ctf_per_config_per_plane"] * n_cfg + m["s_blur_and_bin_per_image"]) * per_task_images
    task_s = exit_s + image_s
    total_core_s = task_s * len(tasks)
    return {
        "tasks": len(tasks),
        "images": int(per_task_images * len(tasks)),
        "phonon_configs": n_cfg,
        "slices_per_exit_wave": slices,
        "s_per_exit_wave": exit_s,
        "s_per_defocus_image": image_s / per_task_images,
        "s_per_task": task_s,
        "core_hours": total_core_s / 3600,
        "hours_on_workers": {str(n): total_core_s / 3600 / n for n in workers},
    }


def slabs(quick: bool) -> list[tuple[str, int]]:
    """(preset, slab layers) to time. --quick takes 3 paper layers (11.5 A), not fewer: the timed
    particle (``particle_z_A`` 5, ``r111`` 3) spans z 2.2-7.8 A, beyond a 2-layer slab's 7.65 A."""
    return [("mini", 16), ("detector", 16), ("paper", 3 if quick else 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="3 instead of 4 paper slab layers, one repetition")
    ap.add_argument("--out", type=Path, default=None, help="default: results/simulation.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    reps = 1 if args.quick else 2
    workers = [1, 2, 8, 32, 128]
    rows = []
    for name, layers in slabs(args.quick):
        m = measure(name, layers, reps)
        rows.append({**m, "extrapolated": extrapolate(m, workers)})
    args.out = out_path("simulation.json", args.out)
    result = {
        "command": "python -m benchmarks.bench_simulation" + (" --quick" if args.quick else ""),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_end": os.getloadavg(),
        },
        "note": (
            "Single worker, 1 FFTW thread, float32, 1 phonon configuration timed and scaled linearly to the "
            "preset's configurations and slices (paper size timed on a thin slab). Machine shared with other "
            "jobs: see loadavg; times are best of the repetitions. Extrapolation assumes one core per Dask "
            "worker and no scheduling overhead."
        ),
        "results": rows,
    }
    result = stamped("bench_simulation", result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    hdr = f"{'preset':6} {'gpts':>5} {'px':>4} {'A/px':>6} {'s/exit wave':>12} {'s/defocus img':>14}"
    hdr += f" {'tasks':>6}"
    hdr += f" {'images':>7} {'core-h':>7} " + " ".join(f"{'h@' + str(n):>7}" for n in workers)
    print(hdr)
    for r in rows:
        e = r["extrapolated"]
        line = f"{r['preset']:6} {r['gpts']:5d} {r['image_px']:4d} {r['pixel_size_A']:6.4f}"
        line += f" {e['s_per_exit_wave']:12.1f}"
        line += f" {e['s_per_defocus_image']:14.2f} {e['tasks']:6d} {e['images']:7d} {e['core_hours']:7.2f} "
        line += " ".join(f"{e['hours_on_workers'][str(n)]:7.2f}" for n in workers)
        print(line)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
