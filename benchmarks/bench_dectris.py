"""DECTRIS stream v1 (bitshuffle-LZ4) ingest vs raw wire format v1, at K2 frame size, on loopback.

Measures, on this machine:
  * ingest: frames/s and GB/s (uncompressed pixels; and bytes on the wire) through the real receive
    paths -- the one receiver with its DECTRIS stream v1 plug-in (PUSH -> PULL, JSON + bslz4 decode) vs its
    wire-v1 plug-in (PUB -> SUB, raw);
  * decompression of one frame per codec backend (dectris-compression, hdf5plugin);
  * recording one frame: h5py write through the bitshuffle filter (recompress) vs ``write_direct_chunk``
    of the detector's chunk.

Run:  python -m benchmarks.bench_dectris [--frames 40] [--dtype uint16]
(writes results/dectris.json; ``--dtype uint8`` writes results/dectris_uint8.json; ``--out`` elsewhere)
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import zmq

from benchmarks.common import out_path, stamped
from sbd_stream.config import DectrisInput, IngestSettings
from sbd_stream.formats import dectris_codec as codec
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_SERIES_END, TOPIC_SERIES_START, encode_frame, encode_series
from sbd_stream.sources.dectris.sim import v1_end, v1_frame, v1_header
from sbd_stream.sources.receiver import Receiver, open_receiver

K2 = (3838, 3710)
CMD = "python -m benchmarks.bench_dectris"


def _pool(dtype: str, k: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.poisson(0.45, K2).astype(dtype) for _ in range(k)]


def _run_ingest(kind: str, pool: list[np.ndarray], n: int) -> dict:
    """Send n frames as fast as the receiver takes them; time from first send to last frame handed on."""
    ctx = zmq.Context()
    got: list[float] = []
    done = threading.Event()

    def on_frame(_f: object) -> None:
        got.append(time.perf_counter())
        if len(got) == n:
            done.set()

    msgs: list[Sequence[bytes | memoryview]]
    if kind == "dectris-v1-bslz4":
        out = ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.SNDHWM, 8)
        port = out.bind_to_random_port("tcp://127.0.0.1")
        ing: Receiver = open_receiver(
            IngestSettings(
                endpoint=f"tcp://127.0.0.1:{port}",
                rcvhwm=8,
                input=DectrisInput(dialect="dectris-stream-v1"),
            ),
            Metrics(),
            on_frame,
            None,
            ctx,
        )
        msgs = [v1_header(1, None, "none")]
        msgs += [v1_frame(pool[i % len(pool)], 1, i) for i in range(n)]
        msgs.append(v1_end(1))
    else:
        out = ctx.socket(zmq.PUB)
        out.setsockopt(zmq.SNDHWM, 100000)  # PUB drops at its HWM; the benchmark must not lose frames
        port = out.bind_to_random_port("tcp://127.0.0.1")
        ing = open_receiver(
            IngestSettings(endpoint=f"tcp://127.0.0.1:{port}", rcvhwm=100000), Metrics(), on_frame, None, ctx
        )
        msgs = [encode_series(TOPIC_SERIES_START, "b", 0.0)]
        msgs += [encode_frame(pool[i % len(pool)], "b", i, 0.0) for i in range(n)]
        msgs.append(encode_series(TOPIC_SERIES_END, "b", 0.0))
    wire = sum(len(p) if isinstance(p, bytes) else p.nbytes for m in msgs for p in m)
    ing.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    for m in msgs:
        out.send_multipart(m, copy=kind != "wire-v1-raw")
    ok = done.wait(300)
    t1 = got[-1] if got else time.perf_counter()
    ing.stop()
    ing.join(5)
    out.close(linger=0)
    ctx.term()
    dt = t1 - t0
    px = n * pool[0].nbytes
    return {
        "input": kind,
        "frames": len(got),
        "complete": ok,
        "seconds": dt,
        "frames_per_s": len(got) / dt,
        "GB_per_s_pixels": px / dt / 1e9,
        "GB_per_s_wire": wire / dt / 1e9,
        "wire_bytes_per_frame": wire / max(1, n),
    }


def _decompress(pool: list[np.ndarray], reps: int = 5) -> list[dict]:
    chunk = codec.compress_framed(pool[0], "bslz4")
    out = []
    for be in codec.backends():
        codec.decompress_framed(chunk, "bslz4", pool[0].itemsize, pool[0].nbytes, be)  # warm up
        t = time.perf_counter()
        for _ in range(reps):
            codec.decompress_framed(chunk, "bslz4", pool[0].itemsize, pool[0].nbytes, be)
        s = (time.perf_counter() - t) / reps
        out.append({"backend": be, "ms_per_frame": s * 1e3, "GB_per_s": pool[0].nbytes / s / 1e9})
    return out


def _record(pool: list[np.ndarray], n: int = 8) -> list[dict]:
    chunks = [codec.compress_framed(a, "bslz4") for a in pool]
    res = []
    with tempfile.TemporaryDirectory() as d:
        for mode in ("recompress", "direct_chunk"):
            with h5py.File(Path(d) / f"{mode}.h5", "w", libver="latest") as f:
                ds = f.create_dataset(
                    "frames",
                    shape=(0, *K2),
                    maxshape=(None, *K2),
                    chunks=(1, *K2),
                    dtype=pool[0].dtype,
                    **hdf5plugin.Bitshuffle(cname="lz4"),
                )
                t = time.perf_counter()
                for i in range(n):
                    if mode == "recompress":
                        ds.resize(i + 1, axis=0)
                        ds[i] = pool[i % len(pool)]
                    else:
                        codec.append_chunk(ds, chunks[i % len(chunks)])
                    f.flush()
                s = (time.perf_counter() - t) / n
            res.append({"mode": mode, "ms_per_frame": s * 1e3, "frames_per_s": 1 / s})
    return res


def default_out(dtype: str) -> Path:
    """One results file per dtype, so that the uint8 run does not overwrite the uint16 one README shows
    beside it."""
    name = "dectris.json" if dtype == "uint16" else f"dectris_{dtype}.json"
    return out_path(name)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--dtype", default="uint16", choices=["uint8", "uint16"])
    ap.add_argument("--out", type=Path, help="default: results/dectris.json (uint16), dectris_uint8.json")
    a = ap.parse_args(argv)
    out = a.out or default_out(a.dtype)
    pool = _pool(a.dtype)
    chunk_len = len(codec.compress_framed(pool[0], "bslz4"))
    result: dict[str, Any] = {
        "command": f"{CMD} --frames {a.frames} --dtype {a.dtype}"
        + (f" --out {shlex.quote(str(a.out))}" if a.out else ""),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
        "frame": {"shape": list(K2), "dtype": a.dtype, "bytes": pool[0].nbytes, "bslz4_bytes": chunk_len},
        "codec_backends": codec.backends(),
        "ingest": [_run_ingest(k, pool, a.frames) for k in ("wire-v1-raw", "dectris-v1-bslz4")],
        "decompress": _decompress(pool),
        "record": _record(pool),
    }
    result = stamped("bench_dectris", result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    f = result["frame"]
    mb, cmb = f["bytes"] / 1e6, f["bslz4_bytes"] / 1e6
    print(f"K2 frame {f['shape']} {f['dtype']}: {mb:.1f} MB raw, {cmb:.2f} MB bslz4")
    print(f"{'input':<20}{'frames/s':>10}{'GB/s pixels':>13}{'GB/s wire':>11}{'complete':>10}")
    for r in result["ingest"]:
        print(
            f"{r['input']:<20}{r['frames_per_s']:>10.1f}{r['GB_per_s_pixels']:>13.2f}"
            f"{r['GB_per_s_wire']:>11.3f}{r['complete']!s:>10}"
        )
    for r in result["decompress"]:
        print(
            f"decompress bslz4 [{r['backend']}]: {r['ms_per_frame']:.1f} ms/frame ({r['GB_per_s']:.2f} GB/s)"
        )
    for r in result["record"]:
        print(f"record [{r['mode']}]: {r['ms_per_frame']:.1f} ms/frame ({r['frames_per_s']:.0f} frames/s)")
    if "dectris" not in result["codec_backends"]:
        print(
            "decompress bslz4 [dectris]: n/a "
            "(optional dectris-compression not installed: pip install '.[dectris]')"
        )
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
