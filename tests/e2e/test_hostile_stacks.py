"""Stacks whose headers declare sizes they do not hold: refused in one line, before anything is allocated.

An audit fed `sbd-stream denoise` a 200-byte TIFF declaring 65000 x 65000 pixels (7.9 GiB allocated,
MemoryError), MRC and NPY headers with sizes of 2^31 - 1 or negative (OverflowError tracebacks), an
HDF5 stack of 2 x 200000 x 200000 (149 GiB) or of 10^12 frames (``plan_chunks`` built 6 x 10^10
tuples), a 5 MB NPY header (numpy's three-line advice) and ``counts_per_px = inf`` (a pydantic dump
naming neither file nor attribute). Every check runs memory-capped in a child (hostile_files.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_files import h5, mrc, npy, one_error_line, run_capped, run_snippet, tiff

pytestmark = pytest.mark.integration


def _hostile(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words its one-line refusal holds)."""
    return {
        "npy_negative": (npy(d / "neg.npy", (-5, 64, 64)), "negative size"),
        "npy_frames": (npy(d / "frames.npy", (10**12, 64, 64)), "frames declared"),
        "npy_short": (npy(d / "short.npy", (10**6, 512, 512)), "file holds 64 bytes"),
        "npy_side": (npy(d / "side.npy", (10**9, 10**9)), "each side must be 1 to 16384"),
        "npy_header": (npy(d / "header.npy", (2, 64, 64), header_pad=5_000_000, version=2), "NPY array"),
        "npy_object": (npy(d / "object.npy", (2, 64, 64), descr="|O"), "Python objects"),
        "mrc_2e31": (mrc(d / "big.mrc", 2**31 - 1, 2**31 - 1, 2**31 - 1), "each side must be 1 to 16384"),
        "mrc_negative": (mrc(d / "neg.mrc", -64, 64, 2), "sizes must be > 0"),
        "mrc_extended": (mrc(d / "ext.mrc", 64, 64, 2, nsymbt=2**31 - 1), "extended header"),
        "mrc_short": (mrc(d / "short.mrc", 512, 512, 10**6), "file holds 64 bytes"),
        "tiff_65000": (tiff(d / "wide.tif", 65000, 65000), "each side must be 1 to 16384"),
        "tiff_short": (tiff(d / "short.tif", 4096, 4096), "holds"),
        "h5_frame": (h5(d / "frame.h5", (2, 200_000, 200_000)), "each side must be 1 to 16384"),
        "h5_frames": (h5(d / "frames.h5", (10**12, 64, 64)), "frames declared"),
        "h5_inf": (
            h5(d / "inf.h5", (), counts_per_px=float("inf")),
            "attribute counts_per_px: must be a finite",
        ),
        "h5_text": (h5(d / "text.h5", (), pixel_size_A="x" * 1000), "attribute pixel_size_A"),
    }


@pytest.mark.timeout(300)
def test_every_reader_refuses_a_lying_header_in_one_line_before_reading(tmp_path: Path) -> None:
    files = _hostile(tmp_path)
    code = f"""
import json
from pathlib import Path
from sbd_stream.service.offline_plan import inspect_stack
from sbd_stream.sources.stacks import StackError
out = {{}}
for name, path in {json.dumps({k: str(p) for k, (p, _) in files.items()})}.items():
    try:
        inspect_stack(Path(path))  # shape, dtype and sampling: what the offline job plans with
        out[name] = ["accepted", ""]
    except BaseException as e:  # a MemoryError or OverflowError is what this test is against
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""
    got = run_snippet(code)
    for name, (path, words) in files.items():
        kind, msg = got[name]
        assert kind == "StackError", (name, kind, msg)
        assert "\n" not in msg and msg.startswith(str(path)) and words in msg, (name, msg)


@pytest.mark.timeout(120)
def test_a_chunk_plan_is_lazy_and_bounded() -> None:
    """``plan_chunks`` of 10^9 frames is a sequence computed when asked (6 x 10^7 tuples before), and
    of more than 10^9 frames a one-line refusal. "When asked" is counted, not timed (it was < 1 s, which
    a loaded CI runner can miss): the Python steps taken (a walk over the chunks takes one per chunk,
    and is stopped at 10^5) and the memory allocated (a list of them: gigabytes)."""
    code = """
import json, sys, tracemalloc
from sbd_stream.service.offline_plan import plan_chunks
steps = 0
def count(frame, event, arg):
    global steps
    steps += 1
    if steps > 100_000:
        raise RuntimeError("more than 10^5 Python steps: the plan is walked, not computed when asked")
    return count
tracemalloc.start()
sys.settrace(count)
try:
    plan = plan_chunks(10**9, 16, 2)
    out = {"len": len(plan), "last": list(plan[-1]), "first": list(plan[0])}
finally:
    sys.settrace(None)
out["steps"], out["peak_bytes"] = steps, tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
out["small"] = plan_chunks(40, 5, 2) == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 30), (30, 36), (36, 40)]
try:
    plan_chunks(10**12, 16, 2)
    out["refused"] = ""
except ValueError as e:
    out["refused"] = str(e)
print(json.dumps(out))
"""
    got = run_snippet(code, timeout=60)
    assert got["len"] == 62_500_000 and got["first"] == [0, 16] and got["last"] == [999_999_984, 10**9]
    assert got["steps"] < 1000 and got["peak_bytes"] < 1_000_000 and got["small"], got
    assert "more than 1e+09" in got["refused"] and "\n" not in got["refused"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["tiff_65000", "h5_frame", "h5_inf", "npy_header"])
def test_denoise_refuses_a_lying_stack_in_one_line(name: str, tmp_path: Path, tiny_engine_dir: Path) -> None:
    path, words = _hostile(tmp_path)[name]
    r = run_capped(
        ["-m", "sbd_stream", "denoise", str(path), str(tmp_path / "out.h5"), "--model", str(tiny_engine_dir),
         "--engine", "onnxruntime", "--orientations", "1", "--scheduler", "none"]
    )  # fmt: skip
    line = one_error_line(r)
    assert str(path) in line and words in line, line
    assert not (tmp_path / "out.h5").exists()
