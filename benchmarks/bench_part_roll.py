"""What a new recording part costs the writer, where that time goes, and whether the live lane feels it.

python -m benchmarks.bench_part_roll [--quick] [--dir /path/on/the/target/disk] [--tag NAME]

Default recording settings (``RecordSettings()``: bitshuffle-LZ4, denoised as float16, raw + denoised +
llr recorded, a flush per frame), real HDF5 files, frames written as the recorder thread writes them
(``Recorder.write``, the pool's precompressed chunks for every kind, as with ``compress_threads`` > 0):

* ``parts``: per new part (a new acquisition, or a size roll: the same ``_open``), the writer's ms for
  its first raw frame (file, NeXus entry and ``raw`` group, then the frame), its first denoised frame
  and its first llr map (each adds its group: the file leaves SWMR, is reopened, and the group made),
  against ``steady_ms``, one more raw + denoised + llr row in an open part;
* ``size_roll``: a raw frame that rolls an acquisition past ``max_file_bytes`` (flush, then a new part);
* ``steps``: the primitives of a new part on their own, for where the time goes: creating and closing
  an empty file, the NeXus entry, one NXdata group built by ``nexus.add_data`` against copied from its
  template (``formats/group_templates.py``), the reopen that adds a group (close, open, flush, SWMR on),
  the SWMR switch, a flush, and an ``fsync`` (which the recorder never calls: HDF5's flush is a write);
* ``live``: a stand-in for the live lane on a thread of its own (a 1024 x 1024 float32 frame's numpy
  work, then a ZeroMQ PUB send to a SUB on loopback every 25 ms), its per-frame ms from tick to the
  frame received, while the recorder's thread writes nothing, writes a 40 Hz acquisition into one part,
  or opens a new part for every frame (a new acquisition each 25 ms, the worst case): the recorder holds
  the GIL the live lane needs for its Python and h5py time.

``layout``: ``copy`` is the recorder as it is (groups copied from templates), ``build`` the same code with
each part's groups built by ``nexus.add_data`` as before the templates, interleaved in one process so that
both meet the same load (a shared machine's load drifts by 3x within minutes). ``--tag before`` writes
``bench_part_roll_before.json`` (run on the code before a change: every row ``build (code before)``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import zmq

from benchmarks.common import table, write_result
from sbd_stream.config import RecordSettings
from sbd_stream.formats import dectris_codec as codec
from sbd_stream.formats import nexus
from sbd_stream.formats import recording as rec_file
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

KINDS = ("raw", "denoised", "llr")


def _frames(shape: tuple[int, int]) -> dict[str, tuple[np.ndarray, bytes]]:
    """Each kind's frame as the recorder stores it, with the pool's bitshuffle-LZ4 chunk of it."""
    rng = np.random.default_rng(0)
    raw = rng.poisson(0.45, shape).astype(np.uint16)
    den = (raw + rng.normal(0, 0.02, shape)).astype(np.float16)
    llr = rng.normal(0, 1, shape).astype(np.float32)
    arrays: tuple[np.ndarray, ...] = (raw, den, llr)
    return {k: (a, codec.compress_framed(a)) for k, a in zip(KINDS, arrays, strict=True)}


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50": 1e3 * statistics.median(values), "max": 1e3 * max(values)}


class _Built:
    """The layout as made before ``formats/group_templates.py``: each part's groups by ``nexus.add_data``."""

    @staticmethod
    def add(*args: object) -> h5py.Group:
        return nexus.add_data(*args)  # type: ignore[arg-type]  # add_data's own arguments, passed on


@contextlib.contextmanager
def _layout(layout: str) -> Iterator[str]:
    """Groups copied from templates (``copy``, the recorder now) or built by ``nexus.add_data`` per part
    (``build``, as before), A/B in one process so that both meet the same load on a shared machine."""
    templates = getattr(rec_file, "GROUPS", None)
    if templates is None:  # the code before formats/group_templates.py
        yield "build (code before)"
        return
    if layout == "build":
        rec_file.GROUPS = _Built()  # type: ignore[assignment]  # a stand-in with the same method
    try:
        yield layout
    finally:
        rec_file.GROUPS = templates


def parts(shape: tuple[int, int], n: int, directory: Path, layout: str = "copy") -> dict:
    """The writer's ms per new part, per kind's first frame, against a steady row of three kinds."""
    with _layout(layout) as used:
        return {"layout": used, **_parts(shape, n, directory)}


def _parts(shape: tuple[int, int], n: int, directory: Path) -> dict:
    fr = _frames(shape)
    d = Path(tempfile.mkdtemp(dir=directory))
    first: dict[str, list[float]] = {k: [] for k in KINDS}
    steady: list[float] = []
    try:
        rec = Recorder(RecordSettings(directory=d), Metrics())
        for k in range(-1, n):  # part -1 warms the templates and caches, as a running service has them
            for seq in range(3):
                t_row = time.perf_counter()
                for kind in KINDS:
                    t0 = time.perf_counter()
                    data, chunk = fr[kind]
                    rec.write(RecordItem(kind, f"acq{k + 1}", seq, float(seq), data, rx=seq), chunk)
                    if seq == 0 and k >= 0:
                        first[kind].append(time.perf_counter() - t0)
                if seq == 2 and k >= 0:
                    steady.append(time.perf_counter() - t_row)
            rec.close_all()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    new = [sum(first[kind][i] for kind in KINDS) for i in range(n)]
    return {
        "shape": f"{shape[0]}x{shape[1]}",
        "parts": n,
        **{f"first_{kind}_ms": _ms(first[kind])["p50"] for kind in KINDS},
        "new_part_ms": _ms(new)["p50"],
        "new_part_max_ms": _ms(new)["max"],
        "steady_ms": _ms(steady)["p50"],
    }


def size_roll(shape: tuple[int, int], n: int, directory: Path, layout: str = "copy") -> dict:
    """ms of the raw frame that rolls a part past ``max_file_bytes`` (then its outputs), against the rest."""
    with _layout(layout) as used:
        return {"layout": used, **_size_roll(shape, n, directory)}


def _size_roll(shape: tuple[int, int], n: int, directory: Path) -> dict:
    fr = _frames(shape)
    d = Path(tempfile.mkdtemp(dir=directory))
    roll: list[float] = []
    rows: list[float] = []
    try:
        rec = Recorder(RecordSettings(directory=d, max_file_bytes=1), Metrics())  # every raw frame rolls
        plain = Recorder(RecordSettings(directory=d / "plain"), Metrics())
        for seq in range(n + 1):
            for r, times in ((rec, roll), (plain, rows)):
                t0 = time.perf_counter()
                for kind in KINDS:
                    data, chunk = fr[kind]
                    r.write(RecordItem(kind, "roll", seq, float(seq), data, rx=seq), chunk)
                if seq:
                    times.append(time.perf_counter() - t0)
        rolls = rec.metrics.value("sbd_record_rolls_total", {"reason": "size"})
        rec.close_all()
        plain.close_all()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {"shape": f"{shape[0]}x{shape[1]}", "rolls": rolls, "roll_row_ms": _ms(roll)["p50"],
            "plain_row_ms": _ms(rows)["p50"]}  # fmt: skip


def _timed(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def steps(shape: tuple[int, int], n: int, directory: Path) -> dict[str, float | None]:
    """Median ms of each primitive a new part is made of, on real files in ``directory``."""
    s = RecordSettings()
    comp = rec_file._compression(s.compression)
    lib = rec_file.WRITE_LIBVER
    d = Path(tempfile.mkdtemp(dir=directory))
    names = (d / f"f{i}.nxs" for i in range(10**6))
    attrs = {"t0": 1.0, "created": 1.0, "acq": "a", "pixel_size_A": 0.06, "series_meta": "{}"}

    def entry_file() -> h5py.File:
        f = h5py.File(next(names), "x", libver=lib)
        for k, v in attrs.items():
            f.attrs[k] = v
        nexus.create_entry(f, attrs)
        return f

    def with_file(body: Callable[[h5py.File], object]) -> Callable[[], None]:
        def run() -> None:
            f = entry_file()
            t0 = time.perf_counter()
            body(f)
            spent.append(time.perf_counter() - t0)
            f.close()

        return run

    def median_of(body: Callable[[h5py.File], object]) -> float:
        spent.clear()
        _timed(with_file(body), n)
        return 1e3 * statistics.median(spent)

    def reopen() -> None:
        with entry_file() as f:  # a part as named: its entry and raw group, in SWMR mode
            nexus.add_data(f, "raw", shape, np.uint16, comp)
            path = Path(f.filename)
        f = rec_file._open_rw(path)
        f.swmr_mode = True
        t0 = time.perf_counter()
        f.close()
        f = rec_file._open_rw(path)
        f.flush()
        f.swmr_mode = True
        spent.append(time.perf_counter() - t0)
        f.close()

    def swmr_on(f: h5py.File) -> None:
        f.swmr_mode = True

    def fsync(f: h5py.File) -> None:
        f.flush()
        fd = os.open(f.filename, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    spent: list[float] = []
    groups = getattr(rec_file, "GROUPS", None)
    try:
        empty = _timed(lambda: h5py.File(next(names), "x", libver=lib).close(), n)
        out: dict[str, float | None] = {
            "create_close_empty_file": empty,
            "root_attrs_and_entry": _timed(lambda: entry_file().close(), n) - empty,
            "group_built_add_data": median_of(lambda f: nexus.add_data(f, "raw", shape, np.uint16, comp)),
            "group_copied_template": median_of(lambda f: groups.add(f, "raw", shape, np.uint16, comp))
            if groups is not None
            else None,  # the code before formats/group_templates.py
            "swmr_switch": median_of(swmr_on),
            "flush": median_of(lambda f: f.flush()),
            "fsync_not_used": median_of(fsync),
        }
        spent.clear()
        _timed(reopen, n)
        out["reopen_close_open_flush_swmr"] = 1e3 * statistics.median(spent)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return out


def live(mode: str, seconds: float, directory: Path, layout: str = "copy") -> dict:
    """The live stand-in's ms from tick to frame received, while the recorder does ``mode``."""
    with _layout(layout) as used:
        return {"layout": used, **_live(mode, seconds, directory)}


def _live(mode: str, seconds: float, directory: Path) -> dict:
    big = np.random.default_rng(2).random((1024, 1024), dtype=np.float32)
    fr = _frames((256, 256))
    ctx: zmq.Context = zmq.Context.instance()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.3)  # the subscription reaches the publisher
    d = Path(tempfile.mkdtemp(dir=directory))
    rec = Recorder(RecordSettings(directory=d), Metrics(), queue_frames=100_000)
    rec.start()
    lat: list[float] = []
    stop = threading.Event()

    def lane() -> None:
        nxt = time.perf_counter()
        while not stop.is_set():
            nxt += 0.025
            t0 = time.perf_counter()
            out = np.clip(big * 1.5 + 0.1, 0, 2).astype(np.float16)  # the frame's numpy work
            pub.send(out.tobytes(), copy=False)
            sub.recv()
            lat.append(time.perf_counter() - t0)
            if (wait := nxt - time.perf_counter()) > 0:
                time.sleep(wait)

    th = threading.Thread(target=lane, name="live-lane")
    th.start()
    t_end, seq = time.perf_counter() + seconds, 0
    while time.perf_counter() < t_end:
        if mode != "idle":
            acq = "steady" if mode == "steady" else f"new{seq}"
            for kind in KINDS:
                data, chunk = fr[kind]
                own = chunk if kind == "raw" else None  # a detector's chunk; the pool compresses outputs
                rec.submit(RecordItem(kind, acq, seq, float(seq), data, chunk=own))
        seq += 1
        time.sleep(0.025)
    stop.set()
    th.join()
    rec.stop()
    rec.join()
    pub.close(0)
    sub.close(0)
    shutil.rmtree(d, ignore_errors=True)
    a = np.array(lat[4:]) * 1e3
    return {"recorder": mode, "frames": len(a), "p50_ms": float(np.median(a)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--tag", default="", help="results file bench_part_roll_<tag>.json")
    a = ap.parse_args(argv)
    k = 1 if a.quick else 4
    part_rows = []
    for layout in ("build", "copy", "build", "copy"):  # interleaved: a shared machine's load drifts
        part_rows += [parts((32, 32), 5 * k, a.dir, layout), parts((1024, 1024), 3 * k, a.dir, layout)]
    rolls = [size_roll((256, 256), 5 * k, a.dir, layout) for layout in ("build", "copy")]
    step = steps((32, 32), 10 * k, a.dir)
    modes = [
        ("idle", "copy"),
        ("steady", "copy"),
        ("new_part_per_frame", "build"),
        ("new_part_per_frame", "copy"),
    ]
    lanes = [live(m, 1.0 * k, a.dir, layout) for m, layout in modes]
    name = "bench_part_roll" + (f"_{a.tag}" if a.tag else "")
    path = write_result(
        name,
        {
            "directory": str(a.dir),
            "settings": "RecordSettings() defaults",
            "parts": part_rows,
            "size_roll": rolls,
            "steps_ms": step,
            "live": lanes,
        },
    )
    cols = [*(f"first_{kind}_ms" for kind in KINDS), "new_part_ms", "new_part_max_ms", "steady_ms"]
    print(table(part_rows, ["layout", "shape", "parts", *cols]))
    print(table(rolls, ["layout", "shape", "rolls", "roll_row_ms", "plain_row_ms"]))
    print(table([{"step": s, "ms": v} for s, v in step.items()], ["step", "ms"]))
    print(table(lanes, ["layout", "recorder", "frames", "p50_ms", "p99_ms", "max_ms"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
