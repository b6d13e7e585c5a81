"""Grid planning, the Dask run, and resumption after a hard kill (real subprocess, real HDF5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import hup_default

from training.sim.dataset import SimulatedDataset
from training.sim.worlds import WORLDS, plan

CLI = [sys.executable, "-c", "from training.cli import app; app()"]


def test_plan_is_seeded_unique_and_splittable() -> None:
    for name in ("mini", "paper"):
        a, b = plan(WORLDS[name]), plan(WORLDS[name])
        assert [t.model_dump() for t in a] == [t.model_dump() for t in b]
        keys = [t.key for t in a]
        assert len(set(keys)) == len(keys) and max(map(len, keys)) <= 64
    mini = plan(WORLDS["mini"])
    structures = {t.structure.structure_id for t in mini}
    assert len(structures) >= 12  # room for >= 3-4 structures each in val and test
    assert {t.structure.particle_class.value for t in mini} == {"PtNp1", "PtNp2", "PtNp3"}
    assert {t.structure.defect_class.value for t in mini} == {"D0", "D1", "D2", "Dh", "Ds"}
    assert all(t.tilt_deg[0] == 0 or t.tilt_deg[1] == 0 for t in mini)
    assert all(len(t.defocus_nm) == 5 and all(0 <= d <= 20 for d in t.defocus_nm) for t in mini)
    paper = plan(WORLDS["paper"])
    n = sum(len(t.thicknesses_nm) * len(t.defocus_nm) for t in paper)
    n_pt4 = sum(len(t.defocus_nm) for t in paper if t.structure.particle_class.value == "PtNp4")
    assert n - n_pt4 >= 6000  # >= 6,000 images even after PtNp4 loses its 3-nm support
    models = {t.structure.structure_id: t.structure for t in paper}
    assert len(models) >= 100  # Appendix A.3: ~100 atomic models
    assert {s.particle_class.value for s in models.values()} == {"PtNp1", "PtNp2", "PtNp3", "PtNp4"}
    # the support varies: heights up to about half the 5 nm field, steps, vacancies, flat ones too
    assert {s.support_trilayers for s in models.values()} >= {4, 5, 6, 7, 8}
    assert 0.2 < np.mean([s.support_step_trilayers > 0 for s in models.values()]) < 0.8
    assert any(s.support_vacancies for s in models.values())
    assert any(not s.support_step_trilayers and not s.support_vacancies for s in models.values())
    assert 49.0 < WORLDS["paper"].extent_A() < 55.0 and WORLDS["paper"].pixel_size_A() == 0.24


HOLD_AFTER_FIRST_TASK = """
import sys, threading
from pathlib import Path
from training.sim.dataset import SimulatedDatasetWriter

append = SimulatedDatasetWriter.append_task
out = Path(sys.argv[sys.argv.index("--out") + 1]).resolve()  # the run's file (not a test-view file beside it)
written = []


def append_then_hold(self, task):
    append(self, task)  # the real write and commit
    if self.path.resolve() == out and not written:
        written.append(task.key)
        print("held after", task.key, file=sys.stderr, flush=True)
        threading.Event().wait()  # until the test's SIGKILL; the run's other tasks never get written


SimulatedDatasetWriter.append_task = append_then_hold
from training.cli import app

app()
"""


def _run(out: Path, hold: bool = False) -> subprocess.Popen:
    """``simulate --preset tiny`` (4 tasks of 6 images); ``hold``: its main thread stops for good once
    the first task is committed, so the test's SIGKILL lands at a known point, not wherever a race put it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = ["simulate", "--preset", "tiny", "--out", str(out), "--workers", "1"]
    cmd = [sys.executable, "-c", HOLD_AFTER_FIRST_TASK, *args] if hold else [*CLI, *args]
    return subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, preexec_fn=hup_default
    )


@pytest.mark.slow
@pytest.mark.integration
def test_resumes_after_sigkill(tmp_path: Path) -> None:
    """A run killed hard (SIGKILL) after its first task: the rerun keeps what was committed, byte for
    byte, runs only the other tasks, and ends with every task once.

    The kill used to come when the progress line "[1/4]" was read; the other three tasks take 0.2 s
    each after the first one's 4 s, so a reader a moment late found all 24 images written (the check
    ``6 <= n_first < 24`` failed on a busy machine) and the rerun had nothing to resume. Now the child
    holds after its first commit (a wrapper around the real writer: the write, the file and the kill
    are real) and the test waits for it to say so."""
    out = tmp_path / "tiny.h5"
    proc = _run(out, hold=True)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # ends at EOF if the child exits instead; the test's timeout bounds it
            seen.append(line)
            if line.startswith("held after"):
                break
        assert seen and seen[-1].startswith("held after"), "".join(seen[-20:])
        first_key = seen[-1].split()[-1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with SimulatedDataset(out) as ds:
        n_first = len(ds)
        assert n_first == 6, n_first  # the first task, committed, survived the kill; nothing else did
        before = {(ds.meta(i)["task_key"], i): ds.clean(i) for i in range(n_first)}
    assert {k for k, _ in before} == {first_key}
    proc = _run(out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    done_line = next(line for line in err.splitlines() if line.startswith("tiny:"))
    n_done = int(done_line.split(",")[1].split()[0])
    assert n_done == 1, done_line  # the rerun trusted the committed task and ran the 3 others
    with SimulatedDataset(out) as ds:
        assert len(ds) == 24
        keys = [ds.meta(i)["task_key"] for i in range(len(ds))]
        assert len(set(keys)) == 4 and all(keys.count(k) == 6 for k in set(keys))
        assert len(set(ds.structure_ids())) == 2
        assert all(np.isfinite(ds.clean(i)).all() for i in range(len(ds)))
        for (key, i), image in before.items():  # what was there before the kill is kept as it was
            assert ds.meta(i)["task_key"] == key and np.array_equal(ds.clean(i), image)


@pytest.mark.slow
@pytest.mark.integration
def test_runs_on_a_scheduler_address(tmp_path: Path) -> None:
    """The scale-out path: connect to an existing dask.distributed scheduler over TCP on loopback."""
    from distributed import LocalCluster

    from training.sim.simulate import simulate

    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        summary = simulate(
            WORLDS["tiny"], tmp_path / "t.h5", scheduler=cluster.scheduler_address, max_tasks=1
        )
    assert summary["failed"] == [] and summary["images_total"] == 6
    with SimulatedDataset(tmp_path / "t.h5") as ds:
        assert len(ds) == 6 and ds.attrs["preset"] == "tiny"
    from PIL import Image

    from training.sim.contact_sheet import make_contact_sheet

    png = make_contact_sheet(tmp_path / "t.h5", tmp_path / "sheet.png")
    assert png.stat().st_size < 500_000
    assert Image.open(png).mode == "L"
