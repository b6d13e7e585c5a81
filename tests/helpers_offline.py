"""Data of the offline ``denoise`` tests: an HDF5 stack, a recording, a job stopped mid-run, and the
bit-for-bit comparison of two outputs.

Why one module (session 35): ``test_offline_failure``, ``test_offline_interrupt`` and
``test_offline_bookkeeping`` imported these from ``test_offline_dask`` / ``test_offline_failure``, test
modules themselves: running one file collected (and ran the module fixtures of) another's, and a helper
changed for one test module broke the others unseen. Tests import helpers, never other tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from sbd_stream.config import DenoiseSettings, RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.service import offline_dask as od
from sbd_stream.sinks.recorder import Recorder, RecordItem

SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script
SAMPLING = {"pixel_size_A": 0.06, "counts_per_px": 0.45}  # the paper's K2: bins 4 x 4 on the test engine


def write_stack(path: Path, n: int, shape: tuple[int, int], seed: int = 0) -> Path:
    """An HDF5 stack of ``n`` Poisson frames (``/frames``, uint16) with ``SAMPLING`` as its attributes."""
    with h5py.File(path, "w") as f:
        f["frames"] = np.random.default_rng(seed).poisson(0.45, (n, *shape)).astype(np.uint16)
        f.attrs.update(SAMPLING)
    return path


def assert_same_output(a: Path, b: Path, skip_attrs: tuple[str, ...] = ()) -> None:
    """Datasets bit for bit, attributes equal (denoise_file writes no timing)."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa["denoised"].dtype == fb["denoised"].dtype == np.float32
        assert fa["denoised"].chunks == fb["denoised"].chunks
        assert np.array_equal(fa["denoised"][:], fb["denoised"][:])
        assert dict(fa["denoised"].attrs) == dict(fb["denoised"].attrs)
        attrs_a = {k: v for k, v in fa.attrs.items() if k not in skip_attrs}
        assert attrs_a == {k: v for k, v in fb.attrs.items() if k not in skip_attrs}


def write_recording(directory: Path, n: int, shape: tuple[int, int], **settings: Any) -> Path:
    """A recording of series ``run/9``: ``n`` Poisson frames (seed 5), closed; its ``.nxs`` file."""
    rec = Recorder(
        RecordSettings(directory=directory, min_free_bytes=0, compress_threads=0, **settings),
        Metrics(),
        card={"name": "tiny"},
        run_config={},
        sampling={"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45},
    )
    rec.write(RecordItem("series_start", "run/9"))
    rng = np.random.default_rng(5)
    for q in range(n):
        rec.write(
            RecordItem("raw", "run/9", q, 100.0 + 0.025 * q, rng.poisson(0.45, shape).astype(np.uint16))
        )
    rec.write(RecordItem("series_end", "run/9"))  # closes the files
    return directory / "run_9.nxs"  # recordings are .nxs


def frames_done(side: Path) -> int:
    """The ``frames_done`` of a partial's sidecar (0 where it is missing or unreadable)."""
    try:
        return int(json.loads(side.read_text())["frames_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def interrupted(monkeypatch: pytest.MonkeyPatch, src: od.Source, out: Path, es: DenoiseSettings) -> None:
    """A run of 20 frames in chunks of 4 stopped after frame 12 (frames_done 12)."""
    real = od.denoise_chunk

    def dies_at_12(*args: Any) -> Any:
        if args[3] == 12:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(od, "denoise_chunk", dies_at_12)
    with pytest.raises(KeyboardInterrupt):
        od.denoise_distributed(src, out, es, scheduler="none", batch=2, chunk_frames=4)
    monkeypatch.setattr(od, "denoise_chunk", real)
    assert frames_done(Path(f"{out}.partial.json")) == 12
