"""`sbd-stream denoise` and `info` end to end on real files: HDF5, TIFF and NPY in, HDF5 out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.engines.symmetry import symmetrised

runner = CliRunner()


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).poisson(0.45, size=(3, 75, 61)).astype(np.uint16)


def _denoise(inp: Path, out: Path, engine_dir: Path, *extra: str):
    return runner.invoke(
        app, ["denoise", str(inp), str(out), "--model", str(engine_dir), "--engine", "torch", *extra]
    )


@pytest.mark.parametrize("fmt", ["h5", "npy", "tif"])
def test_denoise_formats(fmt: str, frames: np.ndarray, tiny_engine_dir: Path, tmp_path: Path) -> None:
    inp = tmp_path / f"in.{fmt}"
    if fmt == "h5":
        with h5py.File(inp, "w") as f:
            f["scan/frames"] = frames
            f["other"] = np.zeros(3)
        extra = ("--dataset", "scan/frames")
    elif fmt == "npy":
        np.save(inp, frames)
        extra = ()
    else:
        tifffile.imwrite(inp, frames, photometric="minisblack")
        extra = ()
    out = tmp_path / "out.h5"
    res = _denoise(inp, out, tiny_engine_dir, *extra)
    assert res.exit_code == 0, res.output
    den = Denoiser.load("torch", tiny_engine_dir)  # averaged over 8 orientations, as `denoise` does
    expected = symmetrised(den.denoise, __import__("torch").from_numpy(frames.astype(np.float32)), 8)
    with h5py.File(out, "r") as f:
        got = f["denoised"][:]
        card = json.loads(f.attrs["engine_card"])
        assert f.attrs["engine_id"].startswith("tiny-unet2@")
        assert card["field_of_view"] == 53
        assert f["denoised"].chunks == (1, 75, 61)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert json.loads(res.output[res.output.index("{") :])["frames"] == 3


def test_single_2d_frame_is_a_stack_of_one(tiny_engine_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.ones((40, 50), np.uint8))
    res = _denoise(tmp_path / "one.npy", tmp_path / "o.h5", tiny_engine_dir)
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "o.h5") as f:
        assert f["denoised"].shape == (1, 40, 50)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.zeros((0, 10, 10), np.uint16), "empty"),
        (np.zeros((2, 3, 10, 10), np.uint16), "expected a \\(frames, height, width\\)"),
        (np.zeros((2, 10, 10), np.complex64), "dtype"),
        (np.array([b"a", b"b"]), "dtype"),
    ],
    ids=["empty", "4d", "complex", "bytes"],
)
def test_bad_inputs_fail_clearly_without_output(
    content, message, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "bad.npy", content)
    out = tmp_path / "out.h5"
    res = _denoise(tmp_path / "bad.npy", out, tiny_engine_dir)
    assert res.exit_code == 2
    assert "error:" in res.output
    assert re.search(message, res.output)
    assert not out.exists()
    assert not list(tmp_path.glob(".*partial"))


def test_missing_file_and_ambiguous_dataset(tiny_engine_dir: Path, tmp_path: Path) -> None:
    res = _denoise(tmp_path / "nope.h5", tmp_path / "o.h5", tiny_engine_dir)
    assert res.exit_code == 2 and "no such file" in res.output
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.zeros((2, 8, 8))
        f["b"] = np.zeros((2, 8, 8))
    res = _denoise(tmp_path / "two.h5", tmp_path / "o.h5", tiny_engine_dir)
    assert res.exit_code == 2 and "--dataset" in res.output
    res = _denoise(tmp_path / "two.h5", tmp_path / "o.h5", tiny_engine_dir, "--dataset", "c")
    assert res.exit_code == 2 and "no dataset 'c'" in res.output
    (tmp_path / "x.txt").write_text("hi")
    res = _denoise(tmp_path / "x.txt", tmp_path / "o.h5", tiny_engine_dir)
    assert res.exit_code == 2 and "unsupported" in res.output


def test_pickled_npy_is_refused(tiny_engine_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    res = _denoise(tmp_path / "obj.npy", tmp_path / "o.h5", tiny_engine_dir)
    assert res.exit_code == 2 and "not a plain numeric" in res.output


def test_interrupted_run_leaves_no_complete_looking_file(
    tiny_engine_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from sbd_stream.config import DenoiseSettings
    from sbd_stream.service import offline

    np.save(tmp_path / "in.npy", np.ones((4, 32, 32), np.uint16))
    calls = {"n": 0}
    real = Denoiser.denoise

    def failing(self, frames, dose=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, frames, dose)

    monkeypatch.setattr(offline.Denoiser, "denoise", failing)
    with pytest.raises(KeyboardInterrupt):
        settings = DenoiseSettings(model=str(tiny_engine_dir), batch_frames=1)
        offline.denoise_file(tmp_path / "in.npy", tmp_path / "o.h5", settings=settings)
    assert not (tmp_path / "o.h5").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "in.npy"]


def test_existing_output_needs_overwrite(tiny_engine_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", np.ones((1, 16, 16), np.uint16))
    (tmp_path / "o.h5").write_bytes(b"keep me")
    res = _denoise(tmp_path / "in.npy", tmp_path / "o.h5", tiny_engine_dir)
    assert res.exit_code == 2 and (tmp_path / "o.h5").read_bytes() == b"keep me"


def test_info_lists_backends(tmp_path: Path, tiny_engine_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("SBD_ENGINE_DIR", str(tiny_engine_dir.parent))
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    names = [e["name"] for e in info["engines"]]
    assert "tiny-unet2" in names
    assert info["versions"]["torch"].startswith("2.13")
    backends = next(e for e in info["engines"] if e["name"] == "tiny-unet2")["backends"]
    assert backends["torch"] is None and backends["onnxruntime"] is None


def test_info_names_the_engines_used_when_none_is_named() -> None:
    """Live on a CPU: the fast engine; offline on a CPU: the default one (engines/card.py)."""
    import torch

    from sbd_stream.engines.card import DEFAULT_ENGINE, FAST_ENGINE

    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    defaults = json.loads(res.output)["default_engines"]
    if not torch.cuda.is_available():
        assert defaults == {"live": FAST_ENGINE, "offline": DEFAULT_ENGINE}
    else:
        assert defaults["live"] == DEFAULT_ENGINE
