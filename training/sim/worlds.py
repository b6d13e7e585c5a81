"""Simulation worlds: what a training set holds (specimen, sampling, optics, dose), and its seeded plan.

A *world* (``sbd-train simulate --preset NAME``) is the simulation's preset; training presets
(``training.train.presets``) are a different thing and never meet it. A world is pure data: planning
its tasks, its file attributes and its test-file name need no abTEM, Dask or HDF5, so the data-set
reader can re-plan a file from the world JSON stored in it (``preset_json``) without importing the
simulation machinery. HDF5 attribute names (``preset``, ``preset_json``) stay as stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, model_validator

from training.sim.imaging import Optics, Sampling, View
from training.sim.splits import SplitSpec
from training.sim.structures import (
    DefectClass,
    ParticleClass,
    ParticleShape,
    StructureParams,
    SupportVariation,
)

NONZERO_TILTS = [(float(t), 0.0) for t in range(1, 5)] + [(0.0, float(t)) for t in range(1, 5)]
ALL_TILTS = [(0.0, 0.0), *NONZERO_TILTS]
"""Appendix A.2: 0-4 degrees about x or about y, one axis at a time (9 orientations)."""


class World(BaseModel):
    """A simulation grid. ``*_per_*`` fields subsample the full grid with the seeded RNG."""

    name: str
    seed: int = 2026
    n_structures: int = Field(ge=1)
    particle_classes: list[ParticleClass]
    defect_classes: list[DefectClass] = list(DefectClass)
    particle_shapes: list[ParticleShape] = Field(
        [ParticleShape.fcc], description="cycled after classes and defects: fcc, decahedron, icosahedron"
    )
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
    def _derive_dose(self) -> World:
        if self.dose_e_per_A2 is not None:
            self.dose = self.dose_e_per_A2 * self.pixel_size_A() ** 2
        return self

    def extent_A(self) -> float:
        from training.sim.structures import A_CEO2

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


WORLDS: dict[str, World] = {
    "tiny": World(
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
    "mini": World(
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
    "detector": World(
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
    "paper": World(
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
# The paper's models (same seed: same models, same splits) imaged with abTEM's quasi-coherent focal-spread
# envelope instead of explicit focal averaging, one exit wave per model (no extra tilts): what a user who
# makes frames with abTEM's CTF(focal_spread=...) shows the engine. Engines trained on explicit averaging
# alone draw stripes on such supports (benchmarks/user_abtem.py, docs/training.md).
WORLDS["paper-envelope"] = WORLDS["paper"].model_copy(
    update={"name": "paper-envelope", "optics": Optics(focal_mode="envelope"), "extra_tilts_per_structure": 0}
)
# The same models imaged as different microscopes (and users) image them: abTEM's envelope with each
# image's focal spread drawn from 2-6 nm (1/e half-width; the paper's 4 nm in the middle) and its vibration
# from 0-60 pm (the paper's 50 pm; 0 = a user who leaves it out). Engines trained at 4 nm / 50 pm alone
# were no better than a blur in the support of frames made at 2.5 nm / 30 pm (user_abtem variants).
WORLDS["paper-optics"] = WORLDS["paper"].model_copy(
    update={
        "name": "paper-optics",
        "optics": Optics(
            focal_mode="envelope", focal_spread_range_nm=(2.0, 6.0), vibration_range_pm=(0.0, 60.0)
        ),
        "extra_tilts_per_structure": 0,
    }
)
# Five-fold twinned particles (decahedra, icosahedra; training/sim/twinned.py) of the paper's four sizes on
# the paper's varied support, imaged as paper-optics images (drawn focal spread and vibration), 64 models of
# their own (another seed: no model shared with the paper's splits). The paper's world holds fcc particles
# only; engines trained on it were no better than a blur on twinned particles (benchmarks/user_abtem.py).
WORLDS["paper-twins"] = WORLDS["paper-optics"].model_copy(
    update={
        "name": "paper-twins",
        "seed": 2027,
        "n_structures": 64,
        "defect_classes": [DefectClass.D0, DefectClass.D1],
        "particle_shapes": [ParticleShape.decahedron, ParticleShape.icosahedron],
    }
)
"""tiny: tests. mini: ~1000 images at 0.155 A px in well under an hour on 2 cores. detector: the binned
detector (0.24 A working pixel, 125 e/A^2) plus a 0.060 A test split; mostly vacuum (history). paper:
the paper's world (App. A.2/A.3) at the working pixel: 100 models, ~7,900 images, + a 0.060 A test split."""


class TaskSpec(BaseModel):
    key: str
    structure: StructureParams
    tilt_deg: tuple[float, float]
    thicknesses_nm: list[float]
    defocus_nm: list[float]
    test_view: bool = Field(False, description="a test-split structure: also render the world's test_view")


def plan(world: World) -> list[TaskSpec]:
    """The full, seeded list of tasks of a world (independent of what is already done)."""
    from training.sim.splits import split_structures
    from training.sim.structures import make_params

    tasks: list[TaskSpec] = []
    n_pc = len(world.particle_classes)
    for i in range(world.n_structures):
        pc = world.particle_classes[i % n_pc]
        dc = world.defect_classes[(i // n_pc) % len(world.defect_classes)]
        shape = world.particle_shapes[(i // (n_pc * len(world.defect_classes))) % len(world.particle_shapes)]
        params = make_params(
            i,
            pc,
            dc,
            world.seed,
            world.cell_periods_x,
            world.support_trilayers,
            world.support_variation,
            shape,
        )
        rng = np.random.default_rng([world.seed, i, 7])
        tilts = list(world.tilts_deg)
        if world.extra_tilts_per_structure is not None:
            others = [t for t in tilts if t != (0.0, 0.0)]
            pick = rng.choice(
                len(others), size=min(world.extra_tilts_per_structure, len(others)), replace=False
            )
            tilts = [(0.0, 0.0)] + [others[j] for j in sorted(pick)]
        for tilt in tilts:
            defocus = list(world.defocus_nm)
            if world.defocus_per_task is not None and world.defocus_per_task < len(defocus):
                bins = np.array_split(np.array(defocus), world.defocus_per_task)
                defocus = [float(rng.choice(b)) for b in bins]
            key = f"{params.structure_id}-tx{tilt[0]:g}-ty{tilt[1]:g}"
            tasks.append(
                TaskSpec(
                    key=key,
                    structure=params,
                    tilt_deg=tilt,
                    thicknesses_nm=list(world.thicknesses_nm),
                    defocus_nm=defocus,
                )
            )
    if world.test_view is not None:
        test = set(split_structures(np.array([t.structure.structure_id for t in tasks]), world.split)["test"])
        for t in tasks:
            t.test_view = t.structure.structure_id in test
    return tasks


def file_attrs(world: World, view: str = "train") -> dict[str, Any]:
    """What must match for a rerun to append to an existing file (``view``: "train" or "test_view")."""
    attrs: dict[str, Any] = {
        "preset": world.name,
        "preset_json": world.model_dump_json(),
        "pixel_size_A": world.pixel_size_A(),
        "dose": world.dose,
        "dose_e_per_A2": world.dose_per_area(),
        "view": view,
    }
    if world.support_variation is not None:
        # the generator's step cut changed in session 27 (whole trilayers; before, an extra O row on every
        # lowered terrace): a file made before lacks this key, so it is not resumed with models of both kinds
        attrs["support_steps"] = "whole trilayers"
    if view == "test_view":
        assert world.test_view is not None
        attrs |= {
            "pixel_size_A": world.test_view.pixel_A,
            "dose": world.test_dose(),
            "split": "test",
            "binning_to_train": round(world.pixel_size_A() / world.test_view.pixel_A),
        }
    return attrs


def sampled_test_path(world: World, out: Path) -> Path:
    """Where the test split at the world's ``test_view`` goes: ``<out stem>-test<pm>pm.h5``."""
    assert world.test_view is not None
    return out.with_name(f"{out.stem}-test{round(world.test_view.pixel_A * 1000)}pm{out.suffix}")


def describe(world: World) -> str:
    """Grid size of a world, before the particle-depth rule drops thin supports."""
    tasks = plan(world)
    n_img = sum(len(t.thicknesses_nm) * len(t.defocus_nm) for t in tasks)
    text = (
        f"preset {world.name}: {world.n_structures} structures, {len(tasks)} exit-wave tasks "
        f"(structure x tilt), up to {n_img} images of {world.sampling.image_px}^2 px at "
        f"{world.pixel_size_A():.4f} A/px; dose {world.dose_per_area():.4g} e/A^2 per frame = "
        f"{world.dose:.4g} counts/px; multislice {world.sampling.gpts}^2 gpts "
        f"({world.extent_A() / world.sampling.gpts:.4f} A), {world.sampling.slice_thickness_A:.3f} A "
        f"slices, {world.sampling.n_phonons} phonon configs; focal average {world.optics.focal_mode}"
        + (f" ({world.optics.focal_points} nodes)" if world.optics.focal_mode == "explicit" else "")
    )
    if world.test_view is not None:
        tv = world.test_view
        n_test = sum(len(t.thicknesses_nm) * len(t.defocus_nm) for t in tasks if t.test_view)
        text += (
            f"; test split ({len({t.structure.structure_id for t in tasks if t.test_view})} structures, "
            f"up to {n_test} images) also at {tv.pixel_A} A: {tv.image_px}^2 px, "
            f"{world.test_dose():.4g} counts/px"
        )
    return text
