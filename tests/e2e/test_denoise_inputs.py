"""`sbd-stream denoise` on the inputs users actually have: flagged pixels, TIFF / MRC sampling, recordings,
and the paths and option values that must be refused before any work (each once a silent defect)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - the outputs are bitshuffle-LZ4
import numpy as np
import pytest
import tifffile
from conftest import denoise_cli, denoise_summary
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.config import RecordSettings
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration
runner = CliRunner()


_denoise, _summary = denoise_cli, denoise_summary


def _denoise_logged(frames: np.ndarray, tmp_path: Path, engine: Path, scheduler: str, caplog) -> dict:
    """``frames`` saved as ``in.npy``, denoised into ``o.h5`` with ``scheduler``, warnings captured: the
    command's JSON summary."""
    np.save(tmp_path / "in.npy", frames)
    with caplog.at_level(logging.WARNING):
        return _summary(_denoise(tmp_path / "in.npy", tmp_path / "o.h5", engine, "--scheduler", scheduler))


def _counts(n: int = 2, shape: tuple[int, int] = (48, 40), dtype: str = "uint16") -> np.ndarray:
    return np.random.default_rng(1).poisson(0.45, (n, *shape)).astype(dtype)


@pytest.mark.parametrize("scheduler", ["none", "local"])
@pytest.mark.parametrize("flag", ["nan", "max", "hot"])
def test_flagged_pixels_are_replaced_counted_and_do_not_spread(
    flag: str, scheduler: str, tiny_engine_dir: Path, tmp_path: Path, caplog
) -> None:
    """One NaN made the whole frame NaN; one 65535 lifted a 60 px disc; one hot pixel (500 counts where
    the paper's 0.45 counts/px make 27 impossible) spread over 20-28 A: all replaced, per frame."""
    frames = _counts(dtype="float32" if flag == "nan" else "uint16")
    frames[1, 20, 20] = {"nan": np.nan, "max": 65535, "hot": 500}[flag]
    s = _denoise_logged(frames, tmp_path, tiny_engine_dir, scheduler, caplog)
    assert s["replaced_pixels"] == 1 and s["frames_with_replaced"] == 1
    assert "replaced by their frame's mean" in caplog.text
    assert ("1 hot (>= 27 counts" in caplog.text) is (flag == "hot")
    with h5py.File(tmp_path / "o.h5") as f:
        np.testing.assert_array_equal(f["replaced_pixels"][:], [0, 1])
        den = f["denoised"][:]
    ref = frames.copy()  # what the engine should have seen: the pixel at its frame's mean of the others
    others = np.delete(frames[1].ravel(), 20 * 40 + 20).astype(np.float64).mean()
    ref[1, 20, 20] = others if flag == "nan" else round(others)
    np.save(tmp_path / "ref.npy", ref)
    _summary(_denoise(tmp_path / "ref.npy", tmp_path / "r.h5", tiny_engine_dir, "--scheduler", scheduler))
    with h5py.File(tmp_path / "r.h5") as f:
        np.testing.assert_allclose(den, f["denoised"][:], rtol=1e-5, atol=1e-6)
    assert np.isfinite(den).all()


@pytest.mark.parametrize("scheduler", ["none", "local"])
def test_frames_brighter_than_the_dose_are_not_mangled_by_the_hot_pixel_rule(
    scheduler: str, tiny_engine_dir: Path, tmp_path: Path, caplog
) -> None:
    """At 4x the configured dose no pixel reaches the hot threshold; at 40x a few % do, which is the
    dose, not hot pixels: nothing replaced, the output as without the rule, one warning naming them."""
    rng = np.random.default_rng(3)
    frames = np.stack([rng.poisson(lam, (48, 40)) for lam in (0.45, 1.8, 18.0)]).astype(np.uint16)
    s = _denoise_logged(frames, tmp_path, tiny_engine_dir, scheduler, caplog)
    assert s["replaced_pixels"] == 0
    with h5py.File(tmp_path / "o.h5") as f:
        np.testing.assert_array_equal(f["replaced_pixels"][:], [0, 0, 0])
    said = [r.getMessage() for r in caplog.records if r.name == "sbd_stream.service.edge"]
    assert len(said) == 1 and said[0].startswith("1 frames (first: [2]) had pixels at >= 27 counts"), said
    assert "not hot pixels but a dose far from the configured one" in said[0]


def test_negative_pixels_are_counted_and_warned(tiny_engine_dir: Path, tmp_path: Path, caplog) -> None:
    frames = _counts(dtype="int32")
    frames[0, :2, :3] = -4
    np.save(tmp_path / "in.npy", frames)
    with caplog.at_level(logging.WARNING):
        s = _summary(_denoise(tmp_path / "in.npy", tmp_path / "o.h5", tiny_engine_dir))
    assert s["negative_pixels"] == 6 and "negative" in caplog.text


@pytest.mark.parametrize(
    ("unit", "per_unit", "expected_A"),
    [("angstrom", 1 / 0.12, 0.12), ("nm", 1 / 0.012, 0.12), ("\\u00C5", 1 / 0.24, 0.24)],
)
def test_a_tiff_states_its_pixel_size(
    unit: str, per_unit: float, expected_A: float, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """An exported TIFF denoised again took the paper's 0.060 A instead of its own."""
    tifffile.imwrite(
        tmp_path / "in.tif", _counts(), imagej=True, resolution=(per_unit, per_unit),
        metadata={"unit": unit, "axes": "TYX"},
    )  # fmt: skip
    s = _summary(_denoise(tmp_path / "in.tif", tmp_path / "o.h5", tiny_engine_dir))
    assert s["pixel_size_A"] == pytest.approx(expected_A)
    s = _summary(_denoise(tmp_path / "in.tif", tmp_path / "o2.h5", tiny_engine_dir, "--pixel-size", "0.05"))
    assert s["pixel_size_A"] == pytest.approx(0.05)  # the option wins


def test_a_tiff_without_a_length_unit_and_an_mrc_stack(tiny_engine_dir: Path, tmp_path: Path) -> None:
    import mrcfile

    tifffile.imwrite(tmp_path / "plain.tif", _counts(), resolution=(300, 300))  # dots per inch: no sampling
    s = _summary(_denoise(tmp_path / "plain.tif", tmp_path / "o.h5", tiny_engine_dir))
    assert s["pixel_size_A"] == pytest.approx(0.06)
    with mrcfile.new(tmp_path / "in.mrc") as m:
        m.set_data(_counts())
        m.voxel_size = 0.12
    s = _summary(_denoise(tmp_path / "in.mrc", tmp_path / "o2.h5", tiny_engine_dir))
    assert s["pixel_size_A"] == pytest.approx(0.12) and s["frames"] == 2


@pytest.mark.parametrize("scheduler", ["none", "local"])  # local: one chunk, in-process (offline_dask)
def test_an_option_that_replaces_the_stated_pixel_size_says_so(
    tiny_engine_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, scheduler: str
) -> None:
    """The option wins (it is how a wrong header is corrected), but it was silent (audit h30): a habitual
    ``--pixel-size`` outranked the MRC's 0.12 A without a word. The same value, or none given: no line."""
    import mrcfile

    with mrcfile.new(tmp_path / "in.mrc") as m:
        m.set_data(_counts())
        m.voxel_size = 0.12
    said = []
    for i, args in enumerate((["--pixel-size", "0.06"], ["--pixel-size", "0.12"], [])):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            res = _denoise(
                tmp_path / "in.mrc", tmp_path / f"o{i}.h5", tiny_engine_dir, *args, "--scheduler", scheduler
            )
            s = _summary(res)
        said.append([r.getMessage() for r in caplog.records if "the input states" in r.getMessage()])
        assert s["pixel_size_A"] == pytest.approx(float(args[1]) if args else 0.12)
    assert said[0] == ["--pixel-size 0.06 replaces the 0.12 A the input states"]
    assert said[1] == said[2] == []


def test_a_colour_tiff_is_refused(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """An RGB TIFF was read as 256 frames of 256 x 3."""
    tifffile.imwrite(tmp_path / "rgb.tif", _counts(1, (32, 32, 3)).astype(np.uint8)[0], photometric="rgb")
    res = _denoise(tmp_path / "rgb.tif", tmp_path / "o.h5", tiny_engine_dir)
    assert res.exit_code == 2 and "colour TIFF" in res.output and not (tmp_path / "o.h5").exists()
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    res = _denoise(tmp_path / "bad.tif", tmp_path / "o.h5", tiny_engine_dir)
    assert res.exit_code == 2 and "bad.tif: not a readable TIFF" in res.output


def test_a_recording_is_read_as_its_raw_frames(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """Without --dataset a recording was refused as ambiguous (raw, denoised, llr)."""
    rec = Recorder(RecordSettings(directory=tmp_path), Metrics(), sampling={"pixel_size_A": 0.06})
    for q in range(3):
        rec.write(RecordItem("raw", "acq", q, 100.0 + 0.025 * q, _counts(1)[0]))
        rec.write(RecordItem("denoised", "acq", q, 100.0 + 0.025 * q, np.zeros((48, 40), np.float32)))
    rec.close_all()
    s = _summary(_denoise(tmp_path / "acq.nxs", tmp_path / "o.h5", tiny_engine_dir))
    assert s["frames"] == 3 and s["input"].endswith("raw/frames")
    with h5py.File(tmp_path / "o.h5") as f:
        np.testing.assert_array_equal(f["seq"][:], [0, 1, 2])


def test_paths_that_would_lose_data_are_refused_before_work(tiny_engine_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "in.npy", _counts())
    h5 = tmp_path / "in.h5"
    with h5py.File(h5, "w") as f:
        f["data"] = _counts()
    res = _denoise(h5, h5, tiny_engine_dir, "--overwrite")  # destroyed the input
    assert res.exit_code == 2 and "is the input" in res.output
    with h5py.File(h5) as f:
        assert f["data"].shape == (2, 48, 40)
    res = _denoise(tmp_path / "in.npy", tmp_path, tiny_engine_dir, "--overwrite")
    assert res.exit_code == 2 and "is a folder" in res.output
    res = _denoise(tmp_path / "in.npy", tmp_path / "no" / "o.h5", tiny_engine_dir)
    assert res.exit_code == 2 and "does not exist" in res.output


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--pixel-size", "0"), "--pixel-size"),
        (("--dose", "-125"), "--dose"),
        (("--counts-per-px", "0"), "--counts-per-px"),
        (("--orientations", "3"), "--orientations"),
    ],
)
def test_an_invalid_value_is_one_line_naming_its_flag(
    args: tuple[str, str], flag: str, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "in.npy", _counts())
    res = _denoise(tmp_path / "in.npy", tmp_path / "o.h5", tiny_engine_dir, *args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}: "), res.output
    assert "pydantic" not in res.output


def test_a_dose_outside_the_trained_range_is_warned(tmp_path: Path, caplog) -> None:
    """`serve` warned about an off-range dose; `denoise` said nothing at 11x the engine's dose."""
    np.save(tmp_path / "in.npy", _counts())
    engine = Path(__file__).parents[2] / "engines" / "sbd-unet3s2-paper-twins"  # states its dose range
    with caplog.at_level(logging.WARNING):
        s = _summary(_denoise(tmp_path / "in.npy", tmp_path / "o.h5", engine, "--counts-per-px", "5"))
    assert s["dose_in_range"] is False and "outside its trained range" in caplog.text
    with h5py.File(tmp_path / "o.h5") as f:
        assert not f.attrs["dose_in_range"]


def test_info_describes_the_named_engine_alone_and_refuses_an_unknown_one(tiny_engine_dir: Path) -> None:
    """`info --model X` printed every engine under the root, whatever X was (rc 0 for a missing one)."""
    res = runner.invoke(app, ["info", "--model", str(tiny_engine_dir)])
    assert res.exit_code == 0, res.output
    engines = json.loads(res.output)["engines"]
    assert [e["path"] for e in engines] == [str(tiny_engine_dir)] and engines[0]["name"] == "tiny-unet2"
    res = runner.invoke(app, ["info", "--model", "/no/such/engine"])
    assert res.exit_code == 2 and res.output.count("/no/such/engine") == 2  # the name and the place


def test_an_engine_no_backend_can_run_is_one_line_with_each_reason(tmp_path: Path) -> None:
    card_only = tmp_path / "card-only"
    card_only.mkdir()
    card = Path(__file__).parents[2] / "engines" / "sbd-unet3s2-paper-twins" / "card.json"
    (card_only / "card.json").write_bytes(card.read_bytes())
    np.save(tmp_path / "in.npy", _counts())
    res = runner.invoke(
        app, ["denoise", str(tmp_path / "in.npy"), str(tmp_path / "o.h5"), "--model", str(card_only)]
    )
    assert res.exit_code == 2 and "no engine backend can run" in res.output and "torch:" in res.output


def test_a_sampling_no_one_stated_is_warned_about(tiny_engine_dir: Path, tmp_path: Path, caplog) -> None:
    """An abTEM TIFF at 0.05 A (sampling in a description sbd-stream does not read) was denoised at the
    paper's 0.060 A without a word."""
    tifffile.imwrite(tmp_path / "in.tif", _counts())
    with caplog.at_level(logging.WARNING):
        _summary(_denoise(tmp_path / "in.tif", tmp_path / "o.h5", tiny_engine_dir))
    assert "does not state the pixel size (--pixel-size" in caplog.text and "the dose" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _summary(_denoise(tmp_path / "in.tif", tmp_path / "o2.h5", tiny_engine_dir, "--pixel-size", "0.06"))
    assert "--pixel-size" not in caplog.text and "does not state the dose" in caplog.text


def test_abtem_tiffs_state_their_sampling_and_a_planar_series_is_frames(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """abTEM's ``to_tiff`` keeps the sampling in a JSON description ("units": "Å"), and writes a
    (3, H, W) defocus series as planar samples: the first ran at 0.060 A, the second was refused as a
    colour TIFF. An ImageJ TIFF whose unit is Å (ImageJ writes it escaped) reads too."""
    axis = {"type": "RealSpaceAxis", "sampling": 0.05, "units": "\u00c5"}
    desc = json.dumps({"label": "intensity", "axes": {"axis_0": axis, "axis_1": {**axis, "label": "y"}}})
    tifffile.imwrite(tmp_path / "abtem.tif", _counts(1)[0], description=desc, metadata=None)
    s = _summary(_denoise(tmp_path / "abtem.tif", tmp_path / "o.h5", tiny_engine_dir))
    assert s["pixel_size_A"] == pytest.approx(0.05)
    planar = _counts(3).astype(np.uint8)
    tifffile.imwrite(tmp_path / "series.tif", planar, photometric="rgb", planarconfig="separate")
    s = _summary(_denoise(tmp_path / "series.tif", tmp_path / "o2.h5", tiny_engine_dir))
    assert s["frames"] == 3
    tifffile.imwrite(
        tmp_path / "ij.tif", _counts(), imagej=True, resolution=(1 / 0.12, 1 / 0.12),
        metadata={"unit": "\\u00C5", "axes": "TYX"},  # as ImageJ itself writes Å: escaped
    )  # fmt: skip
    assert _summary(_denoise(tmp_path / "ij.tif", tmp_path / "o3.h5", tiny_engine_dir))["pixel_size_A"] == (
        pytest.approx(0.12)
    )


@pytest.mark.parametrize("scheduler", ["none", "local"])
def test_a_blank_frame_is_flagged_in_the_output_and_the_summary(
    scheduler: str, tiny_engine_dir: Path, tmp_path: Path, caplog
) -> None:
    """`denoise` wrote a blank frame only as zeros, and its warning named `meta.blank` and a metric that
    do not exist there (audit 24): now `/blank_frames`, `blank_frames` in the summary, and the warning
    names where each path records it."""
    frames = _counts(3)
    frames[1] = 0  # no beam
    s = _denoise_logged(frames, tmp_path, tiny_engine_dir, scheduler, caplog)
    assert s["blank_frames"] == 1
    with h5py.File(tmp_path / "o.h5") as f:
        np.testing.assert_array_equal(f["blank_frames"][:], [False, True, False])
        assert not f["denoised"][1].any()
    if scheduler == "none":  # the local cluster's workers log in their own processes
        assert "denoise: /blank_frames" in caplog.text
