"""`sbd-train evaluate-images` on clean images in the formats other simulators write."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from click.testing import Result
from typer.testing import CliRunner

from sbd_stream.engines.card import FAST_ENGINE
from sbd_stream.sources.emulator import resample
from training.cli import app
from training.evaluate.images import (
    ImageEvalConfig,
    _summary,
    evaluate_images,
    markdown,
    oracle_low_pass,
    read_images,
    strict,
)
from training.evaluate.regions import region_psnrs
from training.sim.samples import read_quality_frames

LP = ImageEvalConfig(folder=Path("."), pixel_size_A=1.0).lowpass_sigmas_A


def _clean_at(pixel_A: float) -> np.ndarray:
    images, _, px = read_quality_frames()
    return resample(images[0], px, pixel_A) * 0.45  # counts, as Dr. Probe users scale them


def test_reads_tiff_npy_hdf5_and_mrc(tmp_path: Path) -> None:
    import mrcfile

    img = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    tifffile.imwrite(tmp_path / "a.tif", img)
    np.save(tmp_path / "b.npy", img)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["entry/stack"] = np.stack([img, img + 1])
        f["entry/small"] = np.zeros((4, 4))  # not an image
    with mrcfile.new(tmp_path / "d.mrc") as m:
        m.set_data(img)
    (tmp_path / "notes.txt").write_text("ignored")
    got = read_images(tmp_path)
    assert [n for n, _ in got] == ["a.tif", "b.npy", "c.h5", "c.h5[1]", "d.mrc"]
    assert all(a.shape == (64, 48) for _, a in got)
    np.testing.assert_array_equal(got[3][1], img + 1)


def test_evaluate_images_command_writes_table_and_figure(tmp_path: Path) -> None:
    src = tmp_path / "clean"
    src.mkdir()
    tifffile.imwrite(src / "frame.tif", _clean_at(0.048).astype(np.float32))  # the paper's TIFF sampling
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "evaluate-images",
            str(src),
            "--pixel-size",
            "0.048",
            "--resize",
            "0.8",
            "--draws",
            "2",
            "--out-dir",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "evaluate_images.json").read_text())
    assert abs(data["detector_pixel_A"] - 0.06) < 1e-9 and len(data["rows"]) == 2
    s = data["summary"]
    for region in ("whole", "support", "particle"):
        assert s[region]["sbd_mean"] > s[region]["low_pass_mean"] + 1.0, (region, s[region])
    for row in data["rows"]:  # the working pixel's ceiling: the clean frame binned and back, far above
        assert row["binning_ceiling"]["support"] > row["sbd"]["support"] + 5.0, row["binning_ceiling"]
    assert (out / "evaluate_images.png").stat().st_size > 10_000
    assert "| mean | SBD | low-pass |" in (out / "evaluate_images.md").read_text()


# --- scoring at any dose, strict JSON, user errors, files that are not clean simulations ---------------

FAST = ["--engine", FAST_ENGINE, "--orientations", "1", "--draws", "1"]
"""The cheapest engine path: the live CPU engine, one orientation, one draw."""


def _small_clean() -> np.ndarray:
    """256 x 256 at 0.060 A of a bundled frame: vacuum on top, a particle, the support below (counts)."""
    return _clean_at(0.06)[240:496, 220:476].astype(np.float32)


def _folder(tmp_path: Path, name: str = "clean") -> Path:
    src = tmp_path / name
    src.mkdir()
    tifffile.imwrite(src / "frame.tif", _small_clean())
    return src


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, ["evaluate-images", *args])


def _one_error_line(res: Result, *words: str) -> str:
    """The command ended with exit status 2 and one line on stderr that names ``words``; no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _strict_load(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_scores_at_the_paper_scale_identity_at_045_finite_at_2_counts(tmp_path: Path) -> None:
    """The paper metric is scored on counts rescaled to 0.45 per vacuum pixel: unchanged at 0.45 (the
    old formula, bit for bit), and finite at 2 counts/px, where the [0, 1] clamp made every score inf."""
    src = _folder(tmp_path)
    for cpp in (0.45, 2.0):
        cfg = ImageEvalConfig(
            folder=src, pixel_size_A=0.06, counts_per_px=cpp, draws=1, engine=FAST_ENGINE, orientations=1
        )
        res = evaluate_images(cfg, log=lambda _m: None)
        (ex,) = res.pop("_examples")
        row = res["rows"][0]
        s = 0.45 / cpp
        assert res["score_scale"] == s and "0.45 counts per vacuum pixel" in res["note"]
        clean, den, noisy, regions = ex["clean"], ex["denoised"], ex["noisy"], ex["regions"]
        if cpp == 0.45:  # exactly what the unscaled scoring gave
            assert row["sbd"] == region_psnrs(clean, den, regions)
            assert row["low_pass_oracle"] == oracle_low_pass(clean, noisy, regions, [x / 0.06 for x in LP])
        else:
            assert region_psnrs(clean, den, regions)["support"] == np.inf  # unscaled: all clamped to 1
            assert row["sbd"] == pytest.approx(region_psnrs(clean * s, den * s, regions), abs=1e-9)
        for k in ("whole", "vacuum", "support", "particle"):
            assert np.isfinite(row["sbd"][k]) and np.isfinite(row["low_pass_oracle"][k]["paper_psnr"]), k
            assert res["summary"][k]["sbd_mean"] is not None
        json.dumps(res, allow_nan=False)


def test_high_dose_writes_strict_json_and_a_full_mean_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _run(
        str(_folder(tmp_path)), "--pixel-size", "0.06", "--counts-per-px", "2", *FAST, "--out-dir", str(out)
    )
    assert res.exit_code == 0, res.output
    data = _strict_load(out / "evaluate_images.json")
    assert data["config"]["counts_per_px"] == 2.0 and data["note"] and data["skipped"] == []
    assert all(v is not None for v in data["rows"][0]["sbd"].values())
    md = (out / "evaluate_images.md").read_text()
    table = md.split("| mean | SBD |")[1]
    for k in ("whole", "vacuum", "support", "particle"):
        assert f"| {k} | " in table, md
    assert "inf" not in md


def test_absent_region_is_null_and_the_mean_table_keeps_its_row() -> None:
    """A region no image has (NaN) and a perfect score (inf) become null; the markdown prints n/a."""
    row = {
        "image": "a",
        "draw": 0,
        "fractions": {"vacuum": 0.5, "support": 0.5, "particle": 0.0},
        "sbd": {"whole": 30.0, "vacuum": np.inf, "support": 28.0, "particle": np.nan},
        "low_pass_oracle": {
            "whole": {"paper_psnr": 29.0, "sigma_px": 3.0},
            "vacuum": {"paper_psnr": np.inf, "sigma_px": 9.0},
            "support": {"paper_psnr": 27.0, "sigma_px": 3.0},
        },
        "margin_dB": {"whole": 1.0, "support": 1.0},
    }
    res = strict(
        {
            "folder": "f",
            "detector_pixel_A": 0.06,
            "config": {"counts_per_px": 2.0, "draws": 1},
            "engine": "e",
            "backend": "b",
            "geometry": {},
            "score_scale": 0.225,
            "rows": [row],
            "summary": _summary([row]),
            "skipped": [{"path": "x.tif", "reason": "broken"}],
        }
    )
    text = json.dumps(res, allow_nan=False)
    assert res["rows"][0]["sbd"]["particle"] is None and res["rows"][0]["sbd"]["vacuum"] is None
    assert res["summary"]["particle"]["sbd_mean"] is None and res["summary"]["whole"]["sbd_mean"] == 30.0
    md = markdown(json.loads(text), "cmd")
    means = md.split("| mean | SBD |")[1]
    assert "| particle | n/a | n/a | n/a | n/a |" in means and "| vacuum | n/a | n/a | n/a | n/a |" in means
    assert "| whole | 30.00 | 29.00 | +1.00 | +1.00 |" in means
    assert "`x.tif`: broken" in md


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--resize", "0"], ["--resize", "greater than 0"]),
        (["--resize", "-1"], ["--resize", "greater than 0"]),
        (["--pixel-size", "0"], ["--pixel-size", "greater than 0"]),
        (["--counts-per-px", "0"], ["--counts-per-px", "greater than 0"]),
        (["--draws", "0"], ["--draws", "greater than or equal to 1"]),
        (["--orientations", "3"], ["--orientations", "1, 2, 4 or 8"]),
        (["--backend", "foo"], ["--backend", "onnxruntime"]),
        (["--pixel-size", "0.5"], ["--pixel-size", "coarser than the engine's working pixel"]),
    ],
)
def test_invalid_options_end_in_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    base = ["--pixel-size", "0.06", "--engine", FAST_ENGINE, "--out-dir", str(tmp_path / "out")]
    _one_error_line(_run(str(_folder(tmp_path)), *base, *args), *words)
    assert not (tmp_path / "out").exists()


def test_missing_empty_and_unreadable_folders_end_in_one_line(tmp_path: Path) -> None:
    _one_error_line(_run(str(tmp_path / "nope"), "--pixel-size", "0.06"), "nope", "no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    _one_error_line(_run(str(empty), "--pixel-size", "0.06"), "no images", ".tif", str(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.tif").write_bytes(b"not a tiff")
    _one_error_line(_run(str(bad), "--pixel-size", "0.06"), "no readable clean image", "broken.tif")


def test_unreadable_files_are_skipped_with_a_warning_and_listed(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    (src / "broken.tif").write_bytes(b"not a tiff")
    (src / "empty.npy").write_bytes(b"")
    tifffile.imwrite(src / "dark.tif", np.zeros((64, 64), np.float32))  # read, but no vacuum level
    _record(src)
    out = tmp_path / "out"
    res = _run(str(src), "--pixel-size", "0.06", *FAST, "--out-dir", str(out))
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 4 and any("broken.tif" in w and "TIFF" in w for w in warnings), res.stderr
    data = _strict_load(out / "evaluate_images.json")
    assert [r["image"] for r in data["rows"]] == ["frame.tif"]
    skipped = {Path(s["path"]).name if "path" in s else s["image"]: s["reason"] for s in data["skipped"]}
    assert set(skipped) == {"broken.tif", "empty.npy", "acq.nxs", "dark.tif"}, skipped
    assert all(skipped.values()), skipped
    assert "recording" in skipped["acq.nxs"] and "vacuum" in skipped["dark.tif"]
    assert "broken.tif" in (out / "evaluate_images.md").read_text()


def _record(directory: Path) -> Path:
    """A real `sbd-stream serve` recording: raw uint16 counts, denoised and LLR frames of 40 x 40."""
    from sbd_stream.config import RecordSettings
    from sbd_stream.metrics import Metrics
    from sbd_stream.sinks.recorder import Recorder, RecordItem

    sampling = {"pixel_size_A": 0.06, "dose_e_per_A2": 125.0, "counts_per_px": 0.45}
    rec = Recorder(RecordSettings(directory=directory), Metrics(), sampling=sampling)
    for q in range(3):
        raw = np.random.default_rng(q).poisson(0.45, (40, 40)).astype(np.uint16)
        rec.write(RecordItem("raw", "acq", q, 100.0 + q, raw))
        rec.write(RecordItem("denoised", "acq", q, 100.0 + q, np.full((40, 40), 0.45, np.float32)))
        rec.write(RecordItem("llr", "acq", q, 100.0 + q, np.zeros((40, 40), np.float32)))
    rec.close_all()
    return directory / "acq.nxs"


def test_hdf5_rule_float_images_only_and_sbd_stream_files_refused(tmp_path: Path) -> None:
    from sbd_stream.sources.stacks import create_output

    img = np.linspace(0.5, 1.5, 64 * 48, dtype=np.float32).reshape(64, 48)
    with h5py.File(tmp_path / "sim.h5", "w") as f:
        f["clean"] = img
        f["counts"] = np.ones((2, 64, 48), np.uint16)  # detector counts: not a clean image
        f["coords"] = np.zeros((500, 2), np.float32)  # not an image
    with h5py.File(tmp_path / "den.h5", "w") as f:  # what `sbd-stream denoise` writes
        create_output(f, (2, 40, 40), {"engine_id": "x", "engine_card": {"name": "x"}})
    _record(tmp_path)
    skipped: list[dict[str, str]] = []
    got = read_images(tmp_path, skipped=skipped)
    assert [n for n, _ in got] == ["sim.h5"]
    np.testing.assert_array_equal(got[0][1], img)
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert set(reasons) == {"acq.nxs", "den.h5"}
    assert "sbd-stream recording" in reasons["acq.nxs"] and "not a clean simulation" in reasons["acq.nxs"]
    assert "sbd-stream denoise" in reasons["den.h5"]
    skipped.clear()  # --dataset: that dataset only, whatever its dtype; files without it are skipped
    got = read_images(tmp_path, dataset="counts", skipped=skipped)
    assert [n for n, _ in got] == ["sim.h5", "sim.h5[1]"] and got[0][1].shape == (64, 48)
    assert len(skipped) == 2


def test_a_recording_alone_is_refused_in_one_line(tmp_path: Path) -> None:
    src = tmp_path / "rec"
    src.mkdir()
    _record(src)
    _one_error_line(_run(str(src), "--pixel-size", "0.06"), "no readable clean image", "acq.nxs", "recording")


def test_a_channel_last_series_is_read_as_images_and_an_exit_wave_is_refused(tmp_path: Path) -> None:
    """A prismatic / MATLAB (H, W, n) defocus series was read along its first axis (600 strips of 600 x 3,
    173 scored); a complex exit wave was scored by its real part with only numpy's ComplexWarning."""
    from training.evaluate.clean_images import Unusable, read_file

    series = np.random.default_rng(0).random((3, 64, 48)).astype(np.float32)
    np.save(tmp_path / "last.npy", np.moveaxis(series, 0, -1))  # (64, 48, 3)
    np.save(tmp_path / "first.npy", series)  # (3, 64, 48)
    for name in ("last.npy", "first.npy"):
        got = read_file(tmp_path / name)
        assert len(got) == 3 and all(g.shape == (64, 48) for g in got)
        np.testing.assert_array_equal(np.stack(got), series)
    with h5py.File(tmp_path / "prismatic.h5", "w") as f:  # found without --dataset too
        f["4DSTEM_simulation/data/realslices/HRTEM_virtual/data"] = np.moveaxis(series, 0, -1)
    assert len(read_file(tmp_path / "prismatic.h5")) == 3
    np.save(tmp_path / "strips.npy", np.zeros((600, 20, 3), np.float32))  # no image side >= 32 both ways
    with pytest.raises(Unusable, match="no images"):
        read_file(tmp_path / "strips.npy")
    np.save(tmp_path / "psi.npy", np.ones((64, 64), np.complex64))
    with pytest.raises(Unusable, match="complex"):
        read_file(tmp_path / "psi.npy")


def test_regions_without_support_but_mostly_particle_are_doubted() -> None:
    from training.evaluate.images import region_doubt

    thin = {"vacuum": 0.27, "support": 0.0, "particle": 0.73}  # the audit's 6 A amorphous carbon slab
    assert "no support region but 73% particle" in (region_doubt("a", thin) or "")
    assert region_doubt("b", {"vacuum": 0.18, "support": 0.71, "particle": 0.11}) is None
    assert region_doubt("c", {"vacuum": 0.9, "support": 0.0, "particle": 0.1}) is None  # a lone particle


def test_a_file_stating_another_pixel_size_is_warned_and_listed(tmp_path: Path) -> None:
    """--pixel-size is the user's word for the folder; an MRC whose header says 0.05 A is scored at it,
    but not silently: one warning naming the file and both values, and the JSON lists it. A file that
    agrees (within 1 %) and one that states nothing are not listed."""
    import mrcfile

    src = _folder(tmp_path)  # frame.tif: states no pixel size
    for name, px in (("other.mrc", 0.05), ("same.mrc", 0.0602)):
        with mrcfile.new(src / name) as m:
            m.set_data(_small_clean())
            m.voxel_size = px
    out = tmp_path / "out"
    res = _run(str(src), "--pixel-size", "0.06", *FAST, "--out-dir", str(out))
    assert res.exit_code == 0, res.output
    warned = [ln for ln in res.stderr.splitlines() if "states" in ln]
    assert len(warned) == 1 and "other.mrc" in warned[0] and "0.05 A" in warned[0] and "0.06" in warned[0]
    listed = _strict_load(out / "evaluate_images.json")["sampling_disagreements"]
    assert [Path(d["path"]).name for d in listed] == ["other.mrc"]
    assert listed[0]["stated_pixel_size_A"] == pytest.approx(0.05) and listed[0]["pixel_size_A"] == 0.06


def test_a_full_disk_never_replaces_the_previous_figure(tmp_path: Path) -> None:
    """Each artefact is written under a temporary name and renamed: a file size limit (EFBIG, as a full
    disk) cut ``evaluate_images.png`` short in place, destroying the previous run's good figure."""
    src, out = _folder(tmp_path), tmp_path / "out"
    args = [str(src), "--pixel-size", "0.06", *FAST, "--out-dir", str(out)]
    assert _run(*args).exit_code == 0
    png = (out / "evaluate_images.png").read_bytes()
    assert len(png) > 20_000

    def limited() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # the JSON and MD fit, the PNG not

    cmd = [sys.executable, "-m", "training.cli", "evaluate-images", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limited, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "File too large" in res.stderr.splitlines()[-1]
    assert (out / "evaluate_images.png").read_bytes() == png  # was a truncated 20,000-byte PNG
    assert json.loads((out / "evaluate_images.json").read_text())["rows"]  # whole, old or new
    assert sorted(p.name for p in out.iterdir()) == [
        "evaluate_images.json", "evaluate_images.md", "evaluate_images.png",
    ]  # fmt: skip
