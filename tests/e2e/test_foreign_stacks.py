"""`sbd-stream denoise` (and `evaluate-images`) on stacks other tools write the way they write them.

Each case was a defect an audit found by feeding the offline commands files made with tifffile, PIL,
mrcfile, h5py and HyperSpy's normal APIs: a TIFF written a page at a time denoised as its first frame,
big-endian frames refused by torch when a batch held one, a cut-short compressed TIFF as a traceback
(PackBits: one frame silently lost), a DECTRIS master file whose pixel mask was denoised instead of the
frames behind its external link, IMOD's unsigned mode-0 MRC read as signed, a damaged HDF5 chunk named
neither file nor frame, non-square ImageJ pixels taken as square, ``-d`` ignored for an NPY, a
``.hspy`` refused, and evaluate-images rows named by stem only.
"""

from __future__ import annotations

import struct
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - the outputs are bitshuffle-LZ4
import numpy as np
import pytest
import tifffile
from conftest import denoise_cli, denoise_summary

pytestmark = pytest.mark.integration


_denoise, _summary = denoise_cli, denoise_summary


def _refusal(res, *words: str) -> str:
    """The one ``error:`` line of a refused input (exit 2, no traceback), holding ``words``."""
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1, res.output[-3000:]
    assert "Traceback" not in res.output, res.output[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def _counts(n: int = 3, shape: tuple[int, int] = (48, 40), dtype: str = "uint16") -> np.ndarray:
    return np.random.default_rng(1).poisson(0.45, (n, *shape)).astype(dtype)


def _denoised(inp: Path, engine_dir: Path, *extra: str) -> np.ndarray:
    out = inp.with_name(inp.name + ".out.h5")
    _summary(_denoise(inp, out, engine_dir, "--pixel-size", "0.06", "--counts-per-px", "0.45", *extra))
    with h5py.File(out) as f:
        return f["denoised"][()]


def test_a_tiff_written_page_by_page_is_every_frame(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """tifffile files a TiffWriter loop or imwrite(append=True) as one series per page; series[0] alone
    was read: 1 frame of 3, exit 0."""
    frames = _counts()
    np.save(tmp_path / "ref.npy", frames)
    with tifffile.TiffWriter(tmp_path / "loop.tif") as tw:
        for fr in frames:
            tw.write(fr)
    for fr in frames:
        tifffile.imwrite(tmp_path / "append.tif", fr, append=True, compression="zlib")
    ref = _denoised(tmp_path / "ref.npy", tiny_engine_dir)
    for name in ("loop.tif", "append.tif"):
        with tifffile.TiffFile(tmp_path / name) as t:
            assert len(t.series) == 3  # the layout the defect was about
        np.testing.assert_array_equal(_denoised(tmp_path / name, tiny_engine_dir), ref)

    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tw:
        tw.write(frames[0])
        tw.write(frames[1, :32, :32])
    _refusal(
        _denoise(tmp_path / "mixed.tif", tmp_path / "o.h5", tiny_engine_dir), "mixed.tif", "2 image series"
    )


def test_evaluate_images_reads_every_page_and_names_rows_by_file_name(tmp_path: Path) -> None:
    """evaluate-images scored 1 image of a page-by-page TIFF, and named a.tif, a.npy, a.mrc all ``a``."""
    import mrcfile

    from training.evaluate.clean_images import read_images

    img = np.ones((64, 48), np.float32)
    img[10:40, 10:30] = 0.7
    with tifffile.TiffWriter(tmp_path / "a.tif") as tw:
        for k in range(3):
            tw.write(img * (1 + k))
    np.save(tmp_path / "a.npy", img)
    with mrcfile.new(tmp_path / "a.mrc") as m:
        m.set_data(img)
    got = read_images(tmp_path)
    assert [n for n, _ in got] == ["a.mrc", "a.npy", "a.tif", "a.tif[1]", "a.tif[2]"]
    np.testing.assert_array_equal(got[4][1], img * 3)


@pytest.mark.parametrize("kind", ["tif", "npy", "mrc", "h5"])
def test_one_big_endian_frame_is_denoised(kind: str, tiny_engine_dir: Path, tmp_path: Path) -> None:
    """A batch of one big-endian frame reached torch in '>' order: "byte order different from the
    native byte order", exit 2 (2+ frames passed: np.stack returns native order)."""
    import mrcfile

    frame = _counts(1)[0]
    np.save(tmp_path / "le.npy", frame)
    path = tmp_path / f"be.{kind}"
    if kind == "tif":
        tifffile.imwrite(path, frame, byteorder=">")
    elif kind == "npy":
        np.save(path, frame.astype(">u2"))
    elif kind == "mrc":
        with mrcfile.new(path) as m:
            m.set_data(frame.astype(">u2"))
    else:
        with h5py.File(path, "w") as f:
            f["frames"] = frame.astype(">u2")
    ref = _denoised(tmp_path / "le.npy", tiny_engine_dir)
    np.testing.assert_array_equal(_denoised(path, tiny_engine_dir), ref)


def test_a_cut_short_compressed_tiff_is_one_line(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """zlib / LZMA cut short: a 190-line traceback, exit 1; PackBits cut short: 2 of 3 frames, exit 0."""
    from PIL import Image

    frames = _counts(3, (256, 192))
    for comp in ("zlib", "lzma"):
        tifffile.imwrite(tmp_path / f"{comp}.tif", frames, compression=comp)
        raw = (tmp_path / f"{comp}.tif").read_bytes()
        (tmp_path / f"cut_{comp}.tif").write_bytes(raw[:-3000])
        res = _denoise(tmp_path / f"cut_{comp}.tif", tmp_path / "o.h5", tiny_engine_dir)
        _refusal(res, f"cut_{comp}.tif", "frame", "cut short")
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(tmp_path / "pb.tif", compression="packbits", save_all=True, append_images=ims[1:])
    (tmp_path / "cut_pb.tif").write_bytes((tmp_path / "pb.tif").read_bytes()[:-3000])
    _refusal(
        _denoise(tmp_path / "cut_pb.tif", tmp_path / "o.h5", tiny_engine_dir), "cut_pb.tif", "after page 2"
    )
    assert not (tmp_path / "o.h5").exists()
    assert _denoised(tmp_path / "pb.tif", tiny_engine_dir).shape == (3, 256, 192)  # whole: read whole


@pytest.mark.parametrize("scheduler", ["none", "local"])
def test_a_damaged_compressed_page_names_its_frame(
    scheduler: str, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """A zlib page whose bytes are damaged inside the file: read lazily, page by page, its decoder's
    error is one line naming the file and the frame, also from a Dask worker."""
    frames = _counts(12)
    tifffile.imwrite(tmp_path / "z.tif", frames, compression="zlib")
    with tifffile.TiffFile(tmp_path / "z.tif") as t:
        off, n = t.pages[7].dataoffsets[0], t.pages[7].databytecounts[0]
    with open(tmp_path / "z.tif", "r+b") as fh:
        fh.seek(off)
        fh.write(b"\xff" * n)
    res = _denoise(tmp_path / "z.tif", tmp_path / "o.h5", tiny_engine_dir, "--scheduler", scheduler)
    _refusal(res, "z.tif: frame 7: cannot decode")
    assert not (tmp_path / "o.h5").exists()


def _master(
    d: Path, name: str, *calibration: str, links: tuple[str, ...] = ("1",), missing: str = ""
) -> Path:
    """A DECTRIS / NXmx-style master file: frames behind external links (``data_00000K`` ->
    ``run_data_00000K.h5``; those in ``missing`` not written), calibration datasets beside them."""
    with h5py.File(d / name, "w") as f:
        g = f.create_group("entry/data")
        for k in links:
            if k not in missing:
                with h5py.File(d / f"run_data_00000{k}.h5", "w") as data:
                    data.create_dataset("entry/data/data", data=_counts())
            g[f"data_00000{k}"] = h5py.ExternalLink(f"run_data_00000{k}.h5", "/entry/data/data")
        s = f.create_group("entry/instrument/detector/detectorSpecific")
        for c in calibration:
            s.create_dataset(c, data=np.zeros((48, 40), np.uint32 if c == "pixel_mask" else np.float32))
        f["entry/instrument/detector/loop"] = h5py.SoftLink("/entry")  # a cycle, followed once
        f["entry/frames_again"] = h5py.SoftLink("/entry/data/data_000001")  # the same dataset again
    return d / name


def test_frames_behind_an_external_link_are_found_and_a_mask_never_chosen(
    tiny_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 2-D pixel_mask was denoised as the only frame (exit 0); with a flatfield too the refusal
    listed only those two, never the link to the frames."""
    monkeypatch.chdir(tmp_path.parent)  # the link's file is found beside the master, not in the cwd
    for calibration in (("pixel_mask",), ("pixel_mask", "flatfield")):
        master = _master(tmp_path, "master.h5", *calibration)
        s = _summary(_denoise(master, tmp_path / "o.h5", tiny_engine_dir, "--overwrite"))
        assert s["frames"] == 3 and s["input"].endswith("master.h5:entry/data/data_000001")
    only_mask = tmp_path / "mask.h5"
    with h5py.File(only_mask, "w") as f:
        f["entry/detectorSpecific/pixel_mask"] = np.zeros((48, 40), np.uint32)
    _refusal(_denoise(only_mask, tmp_path / "o2.h5", tiny_engine_dir), "pixel_mask (48, 40)", "--dataset")
    two = _master(tmp_path, "two.h5", "pixel_mask", links=("1", "2"))
    line = _refusal(
        _denoise(two, tmp_path / "o2.h5", tiny_engine_dir), "data_000001 (3, 48, 40)", "--dataset"
    )
    assert "entry/data/data_000002 (3, 48, 40)" in line and "pixel_mask" not in line
    gone = _master(tmp_path, "gone.h5", "pixel_mask", links=("1", "3"), missing="3")  # a file not copied
    line = _refusal(  # a partial stack is not denoised as if whole: the user names the dataset to accept it
        _denoise(gone, tmp_path / "o3.h5", tiny_engine_dir),
        "may be incomplete",
        "--dataset entry/data/data_000001",
    )
    assert "entry/data/data_000003 (external link to run_data_000003.h5:/entry/data/data" in line
    s = _summary(_denoise(gone, tmp_path / "o3.h5", tiny_engine_dir, "--dataset", "entry/data/data_000001"))
    assert s["frames"] == 3
    none = _master(tmp_path, "none.h5", "pixel_mask", links=("4",), missing="4")
    line = _refusal(
        _denoise(none, tmp_path / "o4.h5", tiny_engine_dir), "only detector calibration", "pixel_mask"
    )
    assert "skipped: entry/data/data_000004 (external link to run_data_000004.h5" in line


def test_an_imod_unsigned_mode0_mrc_is_read_as_uint8(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """Summed counts stored as mode 0 with IMOD's stamp and imodFlags bit 0 clear (unsigned): 128-255
    were read as -128..-1, warned as dark-subtracted, mean 20 where the counts' was 150."""
    import mrcfile

    u8 = np.random.default_rng(1).poisson(150.0, (3, 48, 40)).clip(0, 254).astype(np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    with mrcfile.new(tmp_path / "m.mrc") as m:
        m.set_data(u8.view(np.int8))
        m.set_image_stack()
    with open(tmp_path / "m.mrc", "r+b") as fh:  # IMOD's stamp + flags, as the audit's repro wrote them
        fh.seek(152)
        fh.write(struct.pack("<ii", 1146047817, 0))
    opts = ("--counts-per-px", "150")
    s = _summary(
        _denoise(tmp_path / "m.mrc", tmp_path / "o.h5", tiny_engine_dir, "--pixel-size", "0.06", *opts)
    )
    assert s["negative_pixels"] == 0
    np.testing.assert_array_equal(
        _denoised(tmp_path / "m.mrc", tiny_engine_dir, *opts),
        _denoised(tmp_path / "u8.npy", tiny_engine_dir, *opts),
    )
    with open(tmp_path / "m.mrc", "r+b") as fh:  # bit 0 set: IMOD says signed, read as int8
        fh.seek(156)
        fh.write(struct.pack("<i", 1))
    s = _summary(
        _denoise(tmp_path / "m.mrc", tmp_path / "o3.h5", tiny_engine_dir, "--pixel-size", "0.06", *opts)
    )
    assert s["negative_pixels"] > 0


def test_a_damaged_hdf5_chunk_names_file_dataset_and_frame(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """'Can't synchronously read data (filter returned failure during read)' named neither."""
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("frames", data=_counts(), chunks=(1, 48, 40), compression="gzip")
    with h5py.File(tmp_path / "bad.h5") as f:
        off = f["frames"].id.get_chunk_info(1).byte_offset
    with open(tmp_path / "bad.h5", "r+b") as fh:
        fh.seek(off + 10)
        fh.write(b"\xff" * 200)
    _refusal(
        _denoise(tmp_path / "bad.h5", tmp_path / "o.h5", tiny_engine_dir),
        "bad.h5:frames: frame 1: cannot read",
    )


def test_non_square_imagej_pixels_are_refused(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """X 0.06 A, Y 0.12 A: taken as 0.06 A square pixels without a word."""
    tifffile.imwrite(
        tmp_path / "aniso.tif", _counts(), imagej=True, resolution=(1 / 0.06, 1 / 0.12),
        metadata={"axes": "TYX", "unit": "angstrom"},
    )  # fmt: skip
    _refusal(
        _denoise(tmp_path / "aniso.tif", tmp_path / "o.h5", tiny_engine_dir), "non-square", "0.06 A", "0.12 A"
    )


def test_dataset_for_a_file_without_datasets_hspy_and_lzw(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """-d on an NPY / TIFF was ignored (exit 0); a HyperSpy .hspy was refused for its extension; LZW's
    refusal now says how to read it."""
    from PIL import Image

    frames = _counts()
    np.save(tmp_path / "x.npy", frames)
    tifffile.imwrite(tmp_path / "x.tif", frames)
    for name in ("x.npy", "x.tif"):
        res = _denoise(tmp_path / name, tmp_path / "o.h5", tiny_engine_dir, "-d", "no/such/dataset")
        _refusal(res, name, "--dataset 'no/such/dataset' names an HDF5 dataset")
    with h5py.File(tmp_path / "x.hspy", "w") as f:  # HyperSpy's layout: /Experiments/<title>/data
        f.attrs["file_format"] = "HyperSpy"
        f["Experiments/__unnamed__/data"] = frames
        f["Experiments/__unnamed__/axis-0"] = h5py.Empty("f")
    s = _summary(_denoise(tmp_path / "x.hspy", tmp_path / "o.h5", tiny_engine_dir))
    assert s["frames"] == 3 and s["input"].endswith("x.hspy:Experiments/__unnamed__/data")
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(tmp_path / "lzw.tif", compression="tiff_lzw", save_all=True, append_images=ims[1:])
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        _refusal(
            _denoise(tmp_path / "lzw.tif", tmp_path / "o2.h5", tiny_engine_dir), "pip install imagecodecs"
        )
    else:
        assert _denoised(tmp_path / "lzw.tif", tiny_engine_dir).shape == (3, 48, 40)
