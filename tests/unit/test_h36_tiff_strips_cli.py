"""`sbd-stream denoise` of a TIFF whose zlib or LZMA strip inflates beyond its page: one error line,
exit 2, no output, in bounded memory; the same stack written legitimately is denoised (exit 0).

Why (session 36): tifffile decoded the strip whole, with no bound, and kept the bytes its page needs: the
crafted stack was denoised, exit 0, after decoding 128 MiB for an 8 kB page (1 GiB from a 1 MB file
peaked at 2.1 GB). The address space of the command is limited, as ``test_tiff_crafted_cli.py`` does.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
from test_h36_tiff_strips import _bomb, _legit  # tests/unit is on sys.path, as pytest imports it

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
BIN = Path(sys.executable).parent
AS_LIMIT = 4 * 1024**3


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _denoise(inp: Path, out: Path, engine: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "sbd-stream"), "denoise", str(inp), str(out), "--model", str(engine), "--engine",
         "onnxruntime", "--orientations", "1", "--scheduler", "none", "--pixel-size", "0.3"],
        capture_output=True, text=True, timeout=280, cwd=cwd, preexec_fn=_limited,
    )  # fmt: skip


@pytest.mark.parametrize("codec", ["zlib", "lzma"])
def test_denoise_refuses_a_strip_inflating_beyond_its_page(
    codec: str, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    bomb = _bomb(tmp_path / "bomb.tif", codec)
    res = _denoise(bomb, tmp_path / "out.h5", tiny_engine_dir, tmp_path)
    assert res.returncode >= 0, f"killed by signal {-res.returncode}: {res.stderr[-400:]}"
    assert "Traceback" not in res.stderr, res.stderr[-800:]
    assert res.returncode == 2, res.stderr[-800:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr[-800:]
    name = "zlib" if codec == "zlib" else "LZMA"
    for word in ("bomb.tif", "frame 1", f"its {name} strip 0 of", "more than the 8192 bytes a strip holds"):
        assert word in errors[0], errors[0]
    assert not (tmp_path / "out.h5").exists()


def test_denoise_reads_the_legitimate_stack(tiny_engine_dir: Path, tmp_path: Path) -> None:
    inp = _legit(tmp_path / "ok.tif", "lzma", predictor=2, rowsperstrip=10)
    res = _denoise(inp, tmp_path / "out.h5", tiny_engine_dir, tmp_path)
    assert res.returncode == 0, res.stderr[-800:]
    assert (tmp_path / "out.h5").exists()
