"""bench_simulation --quick times a slab the timed particle fits in (a 2-layer slab did not)."""

from __future__ import annotations

import pytest

from benchmarks import bench_simulation


@pytest.mark.parametrize("quick", [True, False])
def test_every_timed_slab_holds_the_timed_particle(quick: bool) -> None:
    from training.sim.structures import Z_PERIOD, build

    for preset, layers in bench_simulation.slabs(quick):
        atoms, _ = build(bench_simulation.timed_specimen(preset), layers * Z_PERIOD)  # raises if not
        assert len(atoms) > 0
