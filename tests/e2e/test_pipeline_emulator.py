"""Emulator sources: a simulated dataset (training's file format), a recording, the synthetic fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem
from sbd_stream.sources.emulator import EmulatorSettings, FrameSource, SourceKind

pytestmark = pytest.mark.integration


def _simulated_file(path: Path, n: int, shape=(40, 30)) -> list[np.ndarray]:
    from conftest import fake_sim_task as _task

    from training.sim.dataset import SimulatedDatasetWriter

    task = _task("k", "s0", n, shape=shape)
    with SimulatedDatasetWriter(path, shape, {"preset": "test"}) as w:
        w.append_task(task)
    return [im.clean for im in task.images]


def test_simulated_dataset_source_gives_exact_truth_and_poisson_counts(tmp_path: Path) -> None:
    cleans = _simulated_file(tmp_path / "sim.h5", 3)
    cfg = EmulatorSettings(source=tmp_path / "sim.h5", shape=(80, 50), dose=2.0, dtype="uint8")
    src = FrameSource(cfg)
    assert src.kind is SourceKind.simulated and len(src) == 3
    truth0 = src.truth(0)
    assert truth0 is not None and truth0.shape == (80, 50)
    np.testing.assert_allclose(truth0[:40, :30], cleans[0] * 2.0, rtol=1e-6)  # wrap-tiled to 80x50
    np.testing.assert_allclose(truth0[40:, 30:], cleans[0][:, :20] * 2.0, rtol=1e-6)
    frames = src.frames()
    counts = [next(frames) for _ in range(60)]
    assert all(c.dtype == np.uint8 and t is not None for c, t in counts)
    same_image = np.stack([c for k, (c, _) in enumerate(counts) if k % 3 == 1]).astype(np.float64)
    # mean of 20 Poisson draws of the same image is close to its expected counts
    err = same_image.mean(0) - src.truth(1)
    assert abs(err.mean()) < 0.05 and np.abs(err).max() < 2.5


def test_recording_source_resends_recorded_counts(tmp_path: Path) -> None:
    rec = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0), Metrics())
    raw = [np.full((16, 16), q, np.uint16) for q in range(5)]
    for q, fr in enumerate(raw):
        rec.write(RecordItem("raw", "r", q, 0.0, fr))
    rec.close_all()
    src = FrameSource(EmulatorSettings(source=tmp_path / "r.nxs", dtype="uint16"))  # recordings are .nxs
    assert src.kind is SourceKind.recording and src.truth(0) is None
    it = src.frames()
    got = [next(it)[0] for _ in range(7)]
    assert [int(g[0, 0]) for g in got] == [0, 1, 2, 3, 4, 0, 1]


def test_synthetic_fallback_is_labelled_and_rejects_foreign_files(tmp_path: Path) -> None:
    src = FrameSource(EmulatorSettings(shape=(64, 64)))
    assert src.kind is SourceKind.synthetic
    t = src.truth(0)
    assert t is not None and t.max() == pytest.approx(0.45) and t.min() < 0.45
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="neither"):
        FrameSource(EmulatorSettings(source=tmp_path / "other.h5"))
