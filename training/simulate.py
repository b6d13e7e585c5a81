"""Presets, the parameter grid and Dask orchestration of the training-set simulation.

One Dask task per (structure, tilt): it builds the model at the largest thickness, runs one multislice
pass with an exit plane per support thickness, and images every selected defocus from those exit waves.
Workers return images; only this process writes the HDF5 file, one committed task at a time, so a rerun
skips finished tasks and a killed run loses at most the tasks in flight.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, model_validator

from training.dataset import ImageRecord, SimulatedDatasetWriter, TaskResult
from training.imaging import Optics, Sampling, View
from training.splits import SplitSpec
from training.structures import DefectClass, ParticleClass, StructureParams, SupportVariation

NONZERO_TILTS = [(float(t), 0.0) for t in range(1, 5)] + [(0.0, float(t)) for t in range(1, 5)]
ALL_TILTS = [(0.0, 0.0), *NONZERO_TILTS]
"""Appendix A.2: 0-4 degrees about x or about y, one axis at a time (9 orientations)."""


class Preset(BaseModel):
    """A simulation grid. ``*_per_*`` fields subsample the full grid with the seeded RNG."""

    name: str
    seed: int = 2026
    n_structures: int = Field(ge=1)
    particle_classes: list[ParticleClass]
    defect_classes: list[DefectClass] = list(DefectClass)
    cell_periods_x: int = 6
    support_trilayers: int = 4
    support_variation: SupportVariation | None = Field(
        None, description="None: a flat support of support_trilayers; else heights, steps and vacancies drawn"
    )
    thicknesses_nm: list[float] = [3.0, 4.0, 5.0, 6.0]
    tilts_deg: list[tuple[float, float]] = ALL_TILTS
    extra_tilts_per_structure: int | None = Field(None, description="None: all tilts; k: (0,0) plus k")
    defocus_nm: list[float] = [float(d) for d in range(21)]
    defocus_per_task: int | None = Field(None, description="None: all; k: one per equal-width bin")
    sampling: Sampling = Sampling()
    optics: Optics = Optics()
    dose: float = Field(0.45, gt=0, description="counts per pixel in vacuum per frame (derived if per area)")
    dose_e_per_A2: float | None = Field(
        None, gt=0, description="dose per frame per area; when set, dose = dose_e_per_A2 * pixel^2"
    )
    test_view: View | None = Field(
        None,
        description="also render the test split's images at this view (e.g. the detector's 0.060 A "
        "pixels) into <out>-test<pixel>.h5",
    )
    split: SplitSpec = Field(SplitSpec(), description="structure split that decides the test structures")

    @model_validator(mode="after")
    def _derive_dose(self) -> Preset:
        if self.dose_e_per_A2 is not None:
            self.dose = self.dose_e_per_A2 * self.pixel_size_A() ** 2
        return self

    def extent_A(self) -> float:
        from training.structures import A_CEO2

        return self.cell_periods_x * A_CEO2 * np.sqrt(6) / 2

    def pixel_size_A(self) -> float:
        if self.sampling.pixel_A is not None:
            return self.sampling.pixel_A
        return self.extent_A() / self.sampling.image_px

    def dose_per_area(self) -> float:
        """e/A^2 per frame: the stated one, or counts per pixel over the pixel area."""
        return self.dose_e_per_A2 or self.dose / self.pixel_size_A() ** 2

    def test_dose(self) -> float:
        """Counts per pixel in vacuum at the test view's pixel (same dose per area)."""
        assert self.test_view is not None
        return self.dose_per_area() * self.test_view.pixel_A**2


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        n_structures=2,
        particle_classes=[ParticleClass.PtNp3],
        defect_classes=[DefectClass.D0, DefectClass.D1],
        cell_periods_x=4,
        support_trilayers=2,
        thicknesses_nm=[1.5, 2.0],
        tilts_deg=[(0.0, 0.0), (2.0, 0.0)],
        defocus_nm=[0.0, 6.0, 12.0],
        sampling=Sampling(gpts=128, slice_thickness_A=3.826, n_phonons=2, image_px=96),
    ),
    "mini": Preset(
        name="mini",
        n_structures=18,
        particle_classes=[ParticleClass.PtNp1, ParticleClass.PtNp2, ParticleClass.PtNp3],
        cell_periods_x=6,
        support_trilayers=4,
        extra_tilts_per_structure=2,
        defocus_per_task=5,
        sampling=Sampling(gpts=400, n_phonons=4, image_px=256),
        optics=Optics(focal_mode="envelope"),  # as data/mini.h5 was made (before explicit averaging)
    ),
    # The detector's real sampling, binned: working pixel 0.24 A = 4 x 0.060 A detector pixels, the
    # paper's 125 e/A^2 per frame (= 7.2 counts per working pixel in vacuum). A 66.3 A cell (10 periods),
    # 256 px windows of 61.4 A; the test structures are also rendered at 0.060 A (1024 px, same window)
    # for evaluation through the product's binning. Explicit focal averaging (Dr. Probe).
    "detector": Preset(
        name="detector",
        n_structures=20,
        particle_classes=list(ParticleClass),
        cell_periods_x=10,
        support_trilayers=4,
        extra_tilts_per_structure=1,
        defocus_per_task=4,
        sampling=Sampling(gpts=640, n_phonons=4, image_px=256, pixel_A=0.24),
        optics=Optics(focal_mode="explicit"),
        dose_e_per_A2=125.0,
        test_view=View(image_px=1024, pixel_A=0.060),
    ),
    # Appendix A.2/A.3: a 5 x 5 nm field (8 periods = 53.0 A cell, 220 px of 0.24 A = 52.8 A window),
    # a CeO2(111) support of 4-8 trilayers (12-25 A: up to half the field) that is flat, stepped or
    # with surface vacancies, 100 atomic models (PtNp1-4 x D0-Ds, 5 of each), the particle anywhere in
    # the middle 30 % of the field, support 3-6 nm along the beam, tilt 0-4 deg about x or y (0,0 + two
    # more per model), defocus 0-20 nm (7 per exit wave), explicit focal averaging. The test models are
    # also rendered at the detector's 0.060 A (880 px, same window).
    "paper": Preset(
        name="paper",
        n_structures=100,
        particle_classes=list(ParticleClass),
        cell_periods_x=8,
        support_trilayers=6,
        support_variation=SupportVariation(),
        extra_tilts_per_structure=2,
        defocus_per_task=7,
        sampling=Sampling(gpts=512, n_phonons=4, image_px=220, pixel_A=0.24),
        optics=Optics(focal_mode="explicit"),
        dose_e_per_A2=125.0,
        test_view=View(image_px=880, pixel_A=0.060),
    ),
}
"""tiny: tests. mini: ~1000 images at 0.155 A px in well under an hour on 2 cores. detector: the binned
detector (0.24 A working pixel, 125 e/A^2) plus a 0.060 A test split; mostly vacuum (history). paper:
the paper's world (App. A.2/A.3) at the working pixel: 100 models, ~7,900 images, + a 0.060 A test split."""


class TaskSpec(BaseModel):
    key: str
    structure: StructureParams
    tilt_deg: tuple[float, float]
    thicknesses_nm: list[float]
    defocus_nm: list[float]
    test_view: bool = Field(False, description="a test-split structure: also render the preset's test_view")


def plan(preset: Preset) -> list[TaskSpec]:
    """The full, seeded list of tasks of a preset (independent of what is already done)."""
    from training.splits import split_structures
    from training.structures import make_params

    tasks: list[TaskSpec] = []
    n_pc = len(preset.particle_classes)
    for i in range(preset.n_structures):
        pc = preset.particle_classes[i % n_pc]
        dc = preset.defect_classes[(i // n_pc) % len(preset.defect_classes)]
        params = make_params(
            i, pc, dc, preset.seed, preset.cell_periods_x, preset.support_trilayers, preset.support_variation
        )
        rng = np.random.default_rng([preset.seed, i, 7])
        tilts = list(preset.tilts_deg)
        if preset.extra_tilts_per_structure is not None:
            others = [t for t in tilts if t != (0.0, 0.0)]
            pick = rng.choice(
                len(others), size=min(preset.extra_tilts_per_structure, len(others)), replace=False
            )
            tilts = [(0.0, 0.0)] + [others[j] for j in sorted(pick)]
        for tilt in tilts:
            defocus = list(preset.defocus_nm)
            if preset.defocus_per_task is not None and preset.defocus_per_task < len(defocus):
                bins = np.array_split(np.array(defocus), preset.defocus_per_task)
                defocus = [float(rng.choice(b)) for b in bins]
            key = f"{params.structure_id}-tx{tilt[0]:g}-ty{tilt[1]:g}"
            tasks.append(
                TaskSpec(
                    key=key,
                    structure=params,
                    tilt_deg=tilt,
                    thicknesses_nm=list(preset.thicknesses_nm),
                    defocus_nm=defocus,
                )
            )
    if preset.test_view is not None:
        test = set(
            split_structures(np.array([t.structure.structure_id for t in tasks]), preset.split)["test"]
        )
        for t in tasks:
            t.test_view = t.structure.structure_id in test
    return tasks


def run_task(spec_json: str, preset_json: str) -> TaskResult:
    """Worker side: model, exit waves, every defocus image and its ground truth."""
    from training import imaging
    from training.structures import Z_PERIOD, build, support_layers_for

    t0 = time.perf_counter()
    spec = TaskSpec.model_validate_json(spec_json)
    preset = Preset.model_validate_json(preset_json)
    sp = preset.sampling
    thick_A = [support_layers_for(t) * Z_PERIOD for t in spec.thicknesses_nm]
    atoms, desc = build(spec.structure, max(thick_A))
    z_pt_max = float(atoms.positions[atoms.numbers == 78, 2].max())
    keep = [i for i, t in enumerate(thick_A) if t >= z_pt_max + 0.5]  # the whole particle must be crossed
    thick_A = [thick_A[i] for i in keep]
    thick_nm = [spec.thicknesses_nm[i] for i in keep]
    tilt_mrad = (float(np.deg2rad(spec.tilt_deg[0]) * 1e3), float(np.deg2rad(spec.tilt_deg[1]) * 1e3))
    seed = int(
        np.random.default_rng([spec.structure.seed, *np.round(spec.tilt_deg).astype(int)]).integers(2**31)
    )
    waves = imaging.exit_waves(atoms, thick_A, sp, tilt_mrad, seed, preset.optics.energy_eV)
    extent = float(atoms.cell[0, 0])
    vib_A = preset.optics.vibration_pm / 100.0
    view = sp.view()
    # (view or None = whole cell, pixel, dose, records): the training images, and the test view
    outputs: list[tuple[imaging.View | None, float, float, list[ImageRecord]]] = [
        (view, preset.pixel_size_A(), preset.dose, [])
    ]
    if spec.test_view and preset.test_view is not None:
        outputs.append((preset.test_view, preset.test_view.pixel_A, preset.test_dose(), []))
    truths = [
        [
            imaging.column_truth(
                atoms.positions,
                atoms.numbers,
                t,
                tilt_mrad,
                extent,
                sp.image_px,
                desc["y_interface_A"],
                view=v,
            )
            for t in thick_A
        ]
        for v, _, _, _ in outputs
    ]
    imager = imaging.CoherentImager(waves, preset.optics) if preset.optics.focal_mode == "explicit" else None
    for df in spec.defocus_nm:
        stack = imager.images(df) if imager is not None else imaging.envelope_images(waves, df, preset.optics)
        for (v, pixel, dose, records), vtruths in zip(outputs, truths, strict=True):
            if v is None:
                images = imaging.to_detector(imaging.vibration_blur(stack, extent, vib_A), sp.image_px)
            else:
                images = imaging.render_view(stack, extent, v, vib_A)
            for j, (t_nm, truth) in enumerate(zip(thick_nm, vtruths, strict=True)):
                contrast = imaging.contrast_classes(images[j], truth["xy"], pixel, periodic=v is None)
                meta = {
                    "structure_id": spec.structure.structure_id,
                    "task_key": spec.key,
                    "particle_class": spec.structure.particle_class.value,
                    "defect_class": spec.structure.defect_class.value,
                    "contrast_class": imaging.image_contrast_class(contrast, truth["species"]),
                    "thickness_nm": t_nm,
                    "tilt_x_deg": spec.tilt_deg[0],
                    "tilt_y_deg": spec.tilt_deg[1],
                    "defocus_nm": df,
                    "pixel_size_A": pixel,
                    "dose": dose,
                }
                records.append(
                    ImageRecord(clean=images[j], meta=meta, columns={**truth, "contrast": contrast})
                )
    desc |= {"tilt_deg": list(spec.tilt_deg), "thicknesses_A": thick_A, "phonon_seed": seed}
    extra = {"test_view": outputs[1][3]} if len(outputs) > 1 else {}
    return TaskResult(
        key=spec.key, structure=desc, images=outputs[0][3], seconds=time.perf_counter() - t0, extra=extra
    )


def file_attrs(preset: Preset, view: str = "train") -> dict[str, Any]:
    """What must match for a rerun to append to an existing file (``view``: "train" or "test_view")."""
    attrs: dict[str, Any] = {
        "preset": preset.name,
        "preset_json": preset.model_dump_json(),
        "pixel_size_A": preset.pixel_size_A(),
        "dose": preset.dose,
        "dose_e_per_A2": preset.dose_per_area(),
        "view": view,
    }
    if view == "test_view":
        assert preset.test_view is not None
        attrs |= {
            "pixel_size_A": preset.test_view.pixel_A,
            "dose": preset.test_dose(),
            "split": "test",
            "binning_to_train": round(preset.pixel_size_A() / preset.test_view.pixel_A),
        }
    return attrs


def sampled_test_path(preset: Preset, out: Path) -> Path:
    """Where the test split at the preset's ``test_view`` goes: ``<out stem>-test<pm>pm.h5``."""
    assert preset.test_view is not None
    return out.with_name(f"{out.stem}-test{round(preset.test_view.pixel_A * 1000)}pm{out.suffix}")


def _client(scheduler: str | None, workers: int) -> Any:
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    if workers == 1:  # in-process (inproc:// transport): nothing listens, a kill stops everything
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    else:
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
    return Client(cluster)


def simulate(
    preset: Preset,
    out: Path,
    scheduler: str | None = None,
    workers: int = 1,
    max_tasks: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a preset into ``out``; returns counts and timings."""
    from distributed import as_completed

    tasks = plan(preset)
    writer = SimulatedDatasetWriter(out, (preset.sampling.image_px,) * 2, file_attrs(preset))
    done = writer.done_keys()
    aux = None
    if preset.test_view is not None:
        aux_path = sampled_test_path(preset, out)
        aux = SimulatedDatasetWriter(
            aux_path, (preset.test_view.image_px,) * 2, file_attrs(preset, "test_view")
        )
        aux_done = aux.done_keys()
        done = {k for k in done if k in aux_done or not any(t.key == k and t.test_view for t in tasks)}
        _log(f"test split at {preset.test_view.pixel_A} A -> {aux_path}")
    todo = [t for t in tasks if t.key not in done]
    if max_tasks is not None:
        todo = todo[:max_tasks]
    _log(f"{preset.name}: {len(tasks)} tasks, {len(done)} done, {len(todo)} to run -> {out}")
    t0 = time.perf_counter()
    failed: list[str] = []
    n_new = 0
    if todo:
        client = _client(scheduler, workers)
        preset_json = preset.model_dump_json()
        n_slots = max(1, 2 * len(client.scheduler_info().get("workers", {}) or [1]))
        queue = list(todo)
        futures = as_completed()
        for _ in range(min(n_slots, len(queue))):
            spec = queue.pop(0)
            futures.add(_submit(client, spec, preset_json))
        bar = _Bar(len(todo), enabled=progress)
        try:
            for fut in futures:
                try:
                    res: TaskResult = fut.result()
                    if aux is not None and "test_view" in res.extra and res.key not in aux.done_keys():
                        aux.append_task(
                            TaskResult(res.key, res.structure, res.extra["test_view"], res.seconds)
                        )
                    if res.key not in writer.done_keys():
                        writer.append_task(res)
                    n_new += len(res.images)
                    bar.advance(f"{res.key}: {len(res.images)} images, {res.seconds:.1f} s")
                except Exception as exc:  # one bad task must not stop a long run
                    failed.append(str(fut.key))
                    bar.advance(f"FAILED {fut.key}: {exc!r}")
                if queue:
                    spec = queue.pop(0)
                    futures.add(
                        client.submit(run_task, spec.model_dump_json(), preset_json, key=f"task-{spec.key}")
                    )
        finally:
            bar.close()
            client.close()
    total = len(writer)
    writer.close()
    if aux is not None:
        aux.close()
    summary = {
        "out": str(out),
        "tasks_total": len(tasks),
        "tasks_run": len(todo) - len(failed),
        "failed": failed,
        "images_new": n_new,
        "images_total": total,
        "seconds": time.perf_counter() - t0,
    }
    _log(f"done: {summary}")
    return summary


def _submit(client: Any, spec: TaskSpec, preset_json: str) -> Any:
    return client.submit(run_task, spec.model_dump_json(), preset_json, key=f"task-{spec.key}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Bar:
    """Rich progress bar with ETA on a terminal; one line per task otherwise (log files)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.n, self.t0 = total, 0, time.perf_counter()
        self._progress = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task("simulating", total=total)

    def advance(self, msg: str) -> None:
        self.n += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.n * (self.total - self.n)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=msg[:40])
        else:
            _log(f"[{self.n}/{self.total}] {msg} | elapsed {elapsed:.0f} s, ETA {eta:.0f} s")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def describe(preset: Preset) -> str:
    """Grid size of a preset, before the particle-depth rule drops thin supports."""
    tasks = plan(preset)
    n_img = sum(len(t.thicknesses_nm) * len(t.defocus_nm) for t in tasks)
    text = (
        f"preset {preset.name}: {preset.n_structures} structures, {len(tasks)} exit-wave tasks "
        f"(structure x tilt), up to {n_img} images of {preset.sampling.image_px}^2 px at "
        f"{preset.pixel_size_A():.4f} A/px; dose {preset.dose_per_area():.4g} e/A^2 per frame = "
        f"{preset.dose:.4g} counts/px; multislice {preset.sampling.gpts}^2 gpts "
        f"({preset.extent_A() / preset.sampling.gpts:.4f} A), {preset.sampling.slice_thickness_A:.3f} A "
        f"slices, {preset.sampling.n_phonons} phonon configs; focal average {preset.optics.focal_mode}"
        + (f" ({preset.optics.focal_points} nodes)" if preset.optics.focal_mode == "explicit" else "")
    )
    if preset.test_view is not None:
        tv = preset.test_view
        n_test = sum(len(t.thicknesses_nm) * len(t.defocus_nm) for t in tasks if t.test_view)
        text += (
            f"; test split ({len({t.structure.structure_id for t in tasks if t.test_view})} structures, "
            f"up to {n_test} images) also at {tv.pixel_A} A: {tv.image_px}^2 px, "
            f"{preset.test_dose():.4g} counts/px"
        )
    return text
