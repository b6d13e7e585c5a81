"""``denoise --orientations 1 --upsample bilinear`` reproduces a CPU's live lane; both outputs say which
upsampling ran.

The audit (equivalence, defect 5): README said ``--orientations 1`` is "as the live lane", but offline
``auto`` is bicubic and the live lane on a CPU bilinear (2 % apart on the 4 x 4-binned K2), there was no
flag to choose, the offline HDF5 had no ``upsample`` attribute and the recording's ``run_config`` said
``"auto"``, so neither file told why they differed.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq
from conftest import make_settings, stream_through
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import BackpressurePolicy
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.formats.recording import open_recording
from sbd_stream.service.build import build_pipeline
from sbd_stream.sources.emulator import Emulator, EmulatorSettings

pytestmark = pytest.mark.integration


def _denoise(inp: Path, out: Path, engine_dir: Path, *extra: str) -> dict:
    """``sbd-stream denoise`` in-process on the test engine behind ONNX Runtime, as the service ran it."""
    args = ["denoise", str(inp), str(out), "--model", str(engine_dir), "--engine", "onnxruntime"]
    res = CliRunner().invoke(app, [*args, "--orientations", "1", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{") :])


@pytest.mark.timeout(180)
def test_denoise_with_bilinear_and_one_orientation_equals_the_live_lane(
    tmp_path: Path, binning_engine_dir: Path
) -> None:
    ctx = zmq.Context.instance()
    shape = (130, 98)  # the paper's K2 on an engine at 0.24 A: 4 x 4 bins, so the return path matters
    emu = Emulator(
        EmulatorSettings(endpoint="tcp://127.0.0.1:*", shape=shape, n_frames=6, rate_hz=50, keep_truth=True),
        ctx,
    )
    s = make_settings(tmp_path, emu.endpoint, policy=BackpressurePolicy.latest)  # the live lane
    s.detector = type(s.detector)()  # 0.060 A, 125 e/A^2
    den = Denoiser.load(engine="onnxruntime", engine_dir=binning_engine_dir)
    pipe = build_pipeline(s, den, context=ctx)
    live_method = pipe.stage.upsample
    assert live_method == ("bilinear" if den.device.type == "cpu" else "bicubic")
    col = stream_through(pipe, emu, ctx)
    live = {r.seq: r.data for r in col.frames(b"denoised")}  # float32 on the wire: as computed
    assert live, "the live lane published nothing"
    rec = tmp_path / "rec" / f"{emu.cfg.acq}.nxs"
    with open_recording(rec) as f:  # the method auto became, not "auto"
        assert json.loads(f.attrs["run_config"])["denoise"]["upsample"] == live_method
        assert json.loads(f.attrs["run_config"])["denoise"]["engine_id"] == str(den.engine_id)  # what ran

    # the recording's raw frames offline, one engine call per frame, the live lane's return path
    _denoise(rec, tmp_path / "same.h5", binning_engine_dir, "--upsample", live_method, "--scheduler", "none")
    # auto: bicubic offline, whatever the device
    _denoise(rec, tmp_path / "auto.h5", binning_engine_dir, "--scheduler", "none")
    # a plain stack of the same frames (the Dask path's in-process chunk)
    stack = tmp_path / "stack.npy"
    np.save(stack, np.stack([emu.sent[q] for q in range(6)]))
    _denoise(
        stack, tmp_path / "stack.h5", binning_engine_dir, "--upsample", live_method,
        "--pixel-size", "0.060", "--dose", "125", "--scheduler", "local",
    )  # fmt: skip

    with h5py.File(tmp_path / "same.h5") as f, h5py.File(tmp_path / "auto.h5") as a:
        assert f.attrs["upsample"] == live_method and a.attrs["upsample"] == "bicubic"
        row = {int(q): i for i, q in enumerate(f["seq"][:])}
        assert set(live) <= set(row)
        for q, frame in live.items():
            np.testing.assert_array_equal(f["denoised"][row[q]], frame)  # bit for bit
        if live_method != "bicubic":  # bicubic offline differs from the live lane, as the attributes say
            q = next(iter(live))
            assert not np.array_equal(a["denoised"][row[q]], live[q])
    with h5py.File(tmp_path / "stack.h5") as f:
        assert f.attrs["upsample"] == live_method
        for q, frame in live.items():
            np.testing.assert_array_equal(f["denoised"][q], frame)


def test_an_unknown_upsample_is_one_line_and_status_2(tmp_path: Path) -> None:
    stack = tmp_path / "s.npy"
    np.save(stack, np.zeros((1, 8, 8), np.uint16))
    res = CliRunner().invoke(app, ["denoise", str(stack), str(tmp_path / "o.h5"), "--upsample", "cubic"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: denoise.upsample: Input should be 'auto', 'bicubic' or 'bilinear' (got 'cubic')"
    ]
