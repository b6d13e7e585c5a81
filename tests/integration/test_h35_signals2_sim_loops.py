"""``sbd-train scenes`` / ``contact-sheet`` / ``demo-samples``: a Ctrl-C Python swallowed still stops them.

Every ``sbd-train`` command runs inside ``stops_raise((SIGINT,))`` (``training/cli/errors.py``): Ctrl-C
raises ``Interrupted`` and is recorded. A raise that lands in a weakref callback or a ``__del__`` (h5py and
abTEM's Dask drop objects all the time) is dropped by Python ("Exception ignored in ..."), and these loops
ran on and wrote their output after the stop. Now each checks (``check_stop``) before its next item. Here
the signal is raised inside a real weakref callback, in the main thread, while the real loop reads its
first image from a real simulated dataset (a real scene bundle takes minutes of abTEM: its loop is driven
through its own ``log`` callback after a real one-image variant of the ``paper`` world, ~15 s).
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_sim_task
from helpers_signals import signal_inside_a_weakref_callback

from training.sim.dataset import SimulatedDataset, SimulatedDatasetWriter
from training.train.stop import Interrupted, stops_raise

pytestmark = pytest.mark.integration


def _dataset(path: Path, n_structures: int = 10, per: int = 3) -> Path:
    """Untilted fake images (no abTEM) of ``n_structures`` structures: a test split, defocus series."""
    with SimulatedDatasetWriter(path, (24, 24), {"preset": "test"}) as w:
        for s in range(n_structures):
            task = fake_sim_task(f"t{s}", f"s{s}", per, shape=(24, 24))
            for im in task.images:
                im.meta["tilt_y_deg"] = 0.0
            w.append_task(task)
    return path


@pytest.fixture
def reads_swallowing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The real ``SimulatedDataset.clean``; Ctrl-C arrives (and is swallowed) during the first read."""
    clean = SimulatedDataset.clean
    reads: list[int] = []

    def swallowing(self: SimulatedDataset, i: int) -> np.ndarray:
        reads.append(i)
        image = clean(self, i)
        if len(reads) == 1:
            signal_inside_a_weakref_callback(signal.SIGINT)
        return image

    monkeypatch.setattr(SimulatedDataset, "clean", swallowing)
    return reads


@pytest.mark.usefixtures("default_stop_signals")
def test_demo_samples_stop_at_the_next_image(
    tmp_path: Path, reads_swallowing: list[int], swallowed: list[BaseException | None]
) -> None:
    from training.sim.samples import write_demo_samples

    data, out = _dataset(tmp_path / "d.h5"), tmp_path / "samples.h5"
    with pytest.raises(Interrupted) as info, stops_raise((signal.SIGINT,)):
        write_demo_samples(data, out, n=4)
    assert [type(e) for e in swallowed] == [Interrupted]  # the case: the handler's raise was dropped
    assert info.value.signum == signal.SIGINT and len(reads_swallowing) == 1
    assert not out.exists()  # before: all four read and the bundle written after the stop


@pytest.mark.usefixtures("default_stop_signals")
def test_the_contact_sheet_stops_at_the_next_image(
    tmp_path: Path, reads_swallowing: list[int], swallowed: list[BaseException | None]
) -> None:
    from training.sim.contact_sheet import make_contact_sheet

    data, out = _dataset(tmp_path / "d.h5"), tmp_path / "sheet.png"
    with pytest.raises(Interrupted) as info, stops_raise((signal.SIGINT,)):
        make_contact_sheet(data, out, crop=16)
    assert [type(e) for e in swallowed] == [Interrupted]
    assert info.value.signum == signal.SIGINT and len(reads_swallowing) == 1
    assert not out.exists()  # before: every image read and the sheet written after the stop


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("default_stop_signals")
def test_scenes_stop_before_the_next_variant(tmp_path: Path, swallowed: list[BaseException | None]) -> None:
    """One real abTEM variant (one defocus) of the ``paper`` world; the stop is swallowed in the ``log``
    line after it: before, the other two variants were simulated and the bundle written."""
    from training.sim.scenes import write_scenes

    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if len(lines) == 1:
            signal_inside_a_weakref_callback(signal.SIGINT)

    out = tmp_path / "scenes.h5"
    with pytest.raises(Interrupted), stops_raise((signal.SIGINT,)):
        write_scenes(out, n_models=1, defocus_nm=[0.0], preset_name="paper", log=log)
    assert [type(e) for e in swallowed] == [Interrupted]
    assert len(lines) == 1 and " base: " in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []  # no .tmp.h5 left either
