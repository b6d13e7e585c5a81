"""`sbd-stream serve` as a process: an output header over 64 KiB drops the producer's meta, not the service's.

An independent client (audit h28, item 8) sent a frame whose ``meta`` held 65.3 kB: its ``llr`` came out
with ``meta = {"meta_dropped": ...}`` alone, so ``n_columns``, ``columns_fields``, ``evidence_frames``,
``vacuum_counts`` (which docs/wire-format.md promises on every ``llr``) and flags such as ``hot_pixels`` /
``blank`` were gone with the producer's keys, and a client reading ``meta.n_columns`` got a KeyError. Now
only the producer's own meta is dropped; the service's keys stay, and ``meta_dropped`` says what went.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from conftest import free_port, probe_through_service, wait_until
from helpers_procs import kill_if_running, start_piped

from sbd_stream.protocol import (
    MAX_HEADER_BYTES,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    encode_frame,
    encode_series,
)
from sbd_stream.service.demo import Collector
from sbd_stream.service.edge import BRIGHT_KEY, HOT_KEY, NONFINITE_KEY, SATURATED_KEY
from sbd_stream.sinks import publisher

pytestmark = pytest.mark.integration

SBD = str(Path(sys.executable).parent / "sbd-stream")  # the installed console script
ACQ = "bigmeta"
LLR_KEYS = {"n_columns", "columns_fields", "evidence_frames"}


def _big_meta(arr: np.ndarray, seq: int) -> dict[str, object]:
    """A producer meta that fits the 64 KiB input header by a few bytes (so the input is accepted) but not
    an output header, which adds the engine id (and on ``llr`` the column table)."""
    meta: dict[str, object] = {"detector": "K2", "pad": ""}
    size = len(bytes(encode_frame(arr, ACQ, seq, time.time(), meta=meta)[1]))
    meta["pad"] = "x" * (MAX_HEADER_BYTES - size - 8)
    assert len(bytes(encode_frame(arr, ACQ, seq, time.time(), meta=meta)[1])) <= MAX_HEADER_BYTES
    return meta


def test_the_service_keeps_its_keys_when_an_output_header_passes_64_kib(
    tmp_path: Path, tiny_engine_dir: Path
) -> None:
    rng = np.random.default_rng(5)
    lit = rng.poisson(0.45, (128, 128)).astype(np.uint16)
    lit[40, 50] = 1000  # a hot pixel at 0.45 counts/px: replaced, flagged meta.hot_pixels
    blank = np.zeros((128, 128), np.uint16)  # no beam: flagged meta.blank
    frames = {0: (lit, _big_meta(lit, 0)), 1: (blank, _big_meta(blank, 1))}
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 90_000)  # waits (bounded) until the service has connected
    push.setsockopt(zmq.LINGER, 0)
    port, out = push.bind_to_random_port("tcp://127.0.0.1"), free_port(ctx)
    cmd = [
        SBD, "serve", "--input", f"tcp://127.0.0.1:{port}", "--socket-type", "pull",
        "--output", f"tcp://127.0.0.1:{out}", "--no-record", "--model", str(tiny_engine_dir),
        "--engine", "onnxruntime", "--metrics-port", str(free_port(ctx)), "--policy", "lossless",
        "--pixel-size", "0.3", "--counts-per-px", "0.45", "--likelihood",
    ]  # fmt: skip
    proc = start_piped(cmd, env=dict(os.environ))  # SIGHUP at its default (conftest.hup_default)
    col = Collector(f"tcp://127.0.0.1:{out}", context=ctx).start()
    try:
        probe_through_service(push.send_multipart, col, timeout=120)  # the whole path is open
        push.send_multipart(encode_series(TOPIC_SERIES_START, ACQ, time.time()))
        for seq, (arr, meta) in frames.items():
            push.send_multipart(encode_frame(arr, ACQ, seq, time.time(), meta=meta))
        push.send_multipart(encode_series(TOPIC_SERIES_END, ACQ, time.time()))
        assert col.series_end.wait(120), "series_end never reached the subscriber"
        assert wait_until(lambda: len([m for m in col.frames(b"llr") if m.acq == ACQ]) == 2, 30)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        kill_if_running(proc, drain=True)
        col.close()
        push.close(0)
    assert proc.returncode == 0, err[-3000:]
    llr = {m.seq: m.header.meta for m in col.frames(b"llr") if m.acq == ACQ}
    den = {m.seq: m.header.meta for m in col.frames(b"denoised") if m.acq == ACQ}
    assert sorted(llr) == sorted(den) == [0, 1]
    # the service's own keys stay, as docs/wire-format.md promises them on every llr
    assert set(llr[0]) >= LLR_KEYS and set(llr[1]) >= LLR_KEYS, (llr[0], llr[1])
    assert llr[0]["columns_fields"] == ["row", "col", "llr", "region_mean"]
    assert llr[0]["vacuum_counts"] > 0 and "vacuum_counts" not in llr[1]  # absent for a blank frame
    assert llr[0][HOT_KEY] == den[0][HOT_KEY] == 1
    assert llr[1]["blank"] is True and den[1]["blank"] is True and llr[1]["n_columns"] == 0
    for meta in (*llr.values(), *den.values()):  # the producer's keys went, and the note says so
        assert "pad" not in meta and "detector" not in meta, sorted(meta)
        assert "producer's meta" in meta["meta_dropped"] and "2 keys" in meta["meta_dropped"], meta
    assert f"{ACQ}/0: " in err and "sent without the producer's meta" in err, err[-3000:]
    # every key the service adds to a frame's meta is one the publisher keeps (a new flag must be listed)
    kept = publisher.SERVICE_META_KEYS
    assert {NONFINITE_KEY, SATURATED_KEY, HOT_KEY, BRIGHT_KEY, "blank", "vacuum_not_flat"} <= kept
    assert LLR_KEYS | {"vacuum_counts"} <= kept
