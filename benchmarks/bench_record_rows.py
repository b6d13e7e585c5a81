"""What one recorded row costs the writer thread, per kind, and how much of it holds the GIL.

python -m benchmarks.bench_record_rows [--quick] [--dir /path/on/the/target/disk] [--old DIR] [--tag NAME]

A row as the recorder writes it with the default settings (``RecordSettings()``: bitshuffle-LZ4, the
pool's precompressed chunk stored as is, a flush per row): ``AcqFile.append`` then ``AcqFile.flush``, on
a real file in ``--dir``, for each kind at a 256 x 256 working frame and a 1024 x 1024 frame:

* ``raw``: uint16 counts with the producer's ``meta`` (~200 B of JSON, appended to ``raw/meta``) and
  its ``exposure_s``;
* ``denoised``: float16, with its frame flags;
* ``llr``: float32, with a 200-column table (``llr/columns``), ``vacuum_counts`` and flags.

Columns: ``append_ms`` / ``flush_ms`` / ``row_ms`` (wall, median per row), ``cpu_ms`` (the writer
thread's CPU time per row, ``time.thread_time``: HDF5 work on the page cache is CPU), and ``gil_ms``:
the time per row a competing pure-Python thread could NOT run while the writer wrote (h5py holds the
GIL through every HDF5 call, flush included), estimated from that thread's stalls (gaps between its
iterations) against the same paced loop without writes: it includes the GIL hand-over's own cost, so it
is a competitor's loss, larger than the hold time itself, and noisy on a shared machine. The writer paces
its rows (a short sleep between them, as rows come at the detector rate), so the competing thread runs
whenever the writer does not hold the GIL.

``--old DIR``: a directory holding copies of ``recording.py`` (and ``column_table.py``, ``frame_meta.py``,
``nexus.py``, ``group_templates.py`` where they changed) from before a change; they are loaded beside the
current code and measured interleaved with it (a shared machine's load drifts), rows labelled ``old`` /
``new``. ``--tag before`` writes ``bench_record_rows_before.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.common import table, write_result
from sbd_stream.config import RecordSettings
from sbd_stream.formats import dectris_codec as codec
from sbd_stream.formats import recording

KINDS = ("raw", "denoised", "llr")
META = {
    "stage_temperature_K": 293.41,
    "gas_pressure_Pa": 12.5,
    "alpha_tilt_deg": -0.35,
    "beam_current_pA": 101.7,
    "series_id": 17,
    "frame_number": 1234,
    "start_time": "2026-12-07T05:44:25.123456+00:00",
    "note": "in-situ heating run, holder 3",
}
PACE_S = 0.002
"""Sleep between rows: the competing thread runs then (rows come at the detector's rate, not back to back)."""
GAP_S = 50e-6
"""A competitor iteration takes ~1 us: a longer gap is a stall (the GIL held elsewhere, or preemption)."""


def _load_old(directory: Path) -> ModuleType:
    """The ``recording`` module copied to ``directory`` (with its ``column_table`` / ``frame_meta`` copies
    where present), loaded under private names beside the current one."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"_old_{name}", directory / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod

    old = load("recording")
    for name in ("column_table", "frame_meta", "nexus"):
        if (directory / f"{name}.py").exists():
            setattr(old, name, load(name))
    if (directory / "group_templates.py").exists():  # the groups as the old nexus lays them out
        templates = load("group_templates")
        templates.nexus = old.nexus  # type: ignore[attr-defined]  # modules loaded from the old files
        templates._names = itertools.count(10**6)  # type: ignore[attr-defined]  # in-memory names unique
        old.GROUPS = templates.GroupTemplates(old.WRITE_LIBVER)  # type: ignore[attr-defined]  # as above
    return old


def _rows(shape: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """Each kind's ``append`` arguments, with the pool's bitshuffle-LZ4 chunk of its frame."""
    rng = np.random.default_rng(0)
    raw = rng.poisson(0.45, shape).astype(np.uint16)
    den = (raw + rng.normal(0, 0.02, shape)).astype(np.float16)
    llr = rng.normal(0, 1, shape).astype(np.float32)
    parts = (rng.uniform(0, shape[0], 200), rng.uniform(0, shape[1], 200), rng.normal(5, 2, 200))
    table_ = np.column_stack([*parts, rng.uniform(0.3, 0.6, 200)]).astype(np.float32)
    flags = {"blank": 0, "vacuum_not_flat": 0}
    return {
        "raw": {"data": raw, "chunk": codec.compress_framed(raw), "meta": META, "exposure_s": 0.025},
        "denoised": {"data": den, "chunk": codec.compress_framed(den), **flags},
        "llr": {
            "data": llr,
            "chunk": codec.compress_framed(llr),
            "table": table_,
            "evidence_frames": 4,
            "vacuum_counts": 0.45,
            **flags,
        },
    }


class _Competitor:
    """A pure-Python loop on its own thread that notes every stall: the seconds it spent in gaps longer
    than ``GAP_S`` between two of its iterations (it waited for the GIL, or the OS ran something else)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.stalled = 0.0
        self.thread = threading.Thread(target=self._run, name="competitor", daemon=True)

    def _run(self) -> None:
        clock, last = time.perf_counter, time.perf_counter()
        while not self.stop.is_set():
            now = clock()
            if now - last > GAP_S:
                self.stalled += now - last
            last = now

    def __enter__(self) -> _Competitor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _paced(n: int, body: Any) -> float:
    """Seconds the competitor stalled during ``n`` paced calls of ``body``."""
    with _Competitor() as comp:
        time.sleep(0.01)
        s0 = comp.stalled
        for i in range(n):
            body(i)
            time.sleep(PACE_S)
        return comp.stalled - s0


def measure(impl: ModuleType, kind: str, shape: tuple[int, int], n: int, directory: Path) -> dict:
    """Median ms per row of ``kind`` (append, flush, row, thread CPU) and the GIL ms per row."""
    args = _rows(shape)
    d = Path(tempfile.mkdtemp(dir=directory))
    try:
        attrs = {"acq": "bench", "created": 0.0, "t0": 0.0, "pixel_size_A": 0.06, "series_meta": "{}"}
        af = impl.AcqFile(d / "bench.nxs", shape, np.uint16, RecordSettings(directory=d), attrs)
        seq = [0]

        def row(kind_: str, timed: list[list[float]] | None) -> None:
            a = dict(args[kind_])
            s = seq[0]
            seq[0] += 1
            t0, c0 = time.perf_counter(), time.thread_time()
            af.append(kind_, s, float(s), a.pop("data"), a.pop("chunk"), a.pop("table", None),
                      a.pop("meta", None), **a)  # fmt: skip
            t1 = time.perf_counter()
            af.flush()
            t2, c2 = time.perf_counter(), time.thread_time()
            if timed is not None:
                timed.append([t1 - t0, t2 - t1, t2 - t0, c2 - c0])

        for k in KINDS:  # the groups exist (the first output of a kind adds its group) and caches are warm
            for _ in range(3):
                row(k, None)
        timed: list[list[float]] = []
        idle = _paced(n, lambda i: None)  # the same loop without writes: sleeps, wake-ups, OS noise
        busy = _paced(n, lambda i: row(kind, timed))
        af.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    lost = busy - idle  # seconds the competitor could not run because of the writes
    med = [1e3 * statistics.median(col) for col in zip(*timed, strict=True)]
    return {"kind": kind, "shape": f"{shape[0]}x{shape[1]}", "rows": n, "append_ms": med[0],
            "flush_ms": med[1], "row_ms": med[2], "cpu_ms": med[3], "gil_ms": 1e3 * lost / n}  # fmt: skip


def _median_rows(runs: list[dict]) -> list[dict]:
    """One row per (code, kind, shape): the median of each number over the repeats."""
    keys: dict[tuple, list[dict]] = {}
    for r in runs:
        keys.setdefault((r["code"], r["shape"], r["kind"]), []).append(r)
    out = []
    for (code, shape, kind), rs in keys.items():
        nums = {c: statistics.median(r[c] for r in rs) for c in ("append_ms", "flush_ms", "row_ms",
                                                                  "cpu_ms", "gil_ms")}  # fmt: skip
        out.append({"code": code, "shape": shape, "kind": kind, "repeats": len(rs), **nums})
    return sorted(out, key=lambda r: (r["shape"], KINDS.index(r["kind"]), r["code"]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the files go")
    ap.add_argument("--old", type=Path, default=None, help="copies of the modules before a change")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--tag", default="", help="results file bench_record_rows_<tag>.json")
    a = ap.parse_args(argv)
    a.dir.mkdir(parents=True, exist_ok=True)
    repeats = a.repeats or (1 if a.quick else 5)
    impls = [("new", recording)] + ([("old", _load_old(a.old))] if a.old else [])
    if not a.old:
        impls = [("current", recording)]
    sizes = (((256, 256), 60 if a.quick else 200), ((1024, 1024), 20 if a.quick else 60))
    runs = []
    for r in range(repeats):
        for shape, n in sizes:
            for kind in KINDS:
                # interleaved (a shared machine's load drifts), and each code first every other repeat: the
                # second of a pair meets the page cache's writeback of the first one's frames
                for code, impl in impls if r % 2 == 0 else impls[::-1]:
                    runs.append({"code": code, **measure(impl, kind, shape, n, a.dir)})
    rows = _median_rows(runs)
    name = "bench_record_rows" + (f"_{a.tag}" if a.tag else "")
    path = write_result(
        name,
        {"directory": str(a.dir), "settings": "RecordSettings() defaults, pool chunks, flush per row",
         "pace_s": PACE_S, "repeats": repeats, "rows": rows, "runs": runs},
    )  # fmt: skip
    cols = ["code", "shape", "kind", "repeats", "append_ms", "flush_ms", "row_ms", "cpu_ms", "gil_ms"]
    print(table(rows, cols))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
