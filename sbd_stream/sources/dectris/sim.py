"""Build DECTRIS stream v1 / v2 messages from the published formats (emulators, tests, benchmarks).

A real detector is the producer in production; these builders exist so the decoders can be checked
against messages made independently of them, and so a recorded series can be replayed through
LiberTEM-live's DECTRIS simulator (``write_sim_dump``: its file is a sequence of
``[int64 little-endian length][message]`` records).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.formats.dectris_codec import compress_framed, compress_lz4_block
from sbd_stream.sources.dectris.messages import SELF_DESCRIBED_CBOR

V1_BS = {1: "bs8-lz4<", 2: "bs16-lz4<", 4: "bs32-lz4<"}


def _j(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def v1_detector_config(shape: tuple[int, int], dtype: Any, n_images: int, **extra: Any) -> dict[str, Any]:
    """The subset of the SIMPLON detector configuration that receivers (and the simulator) read."""
    cfg = {
        "x_pixels_in_detector": int(shape[1]),
        "y_pixels_in_detector": int(shape[0]),
        "bit_depth_image": int(np.dtype(dtype).itemsize * 8),
        "nimages": 1,
        "ntrigger": int(n_images),
        "trigger_mode": "exte",
        "compression": "bslz4",
        "count_time": 0.025,
        "frame_time": 0.025,
        "description": "sbd-stream test series",
    }
    return cfg | extra


def v1_header(series: int, config: dict[str, Any] | None, detail: str = "basic") -> list[bytes]:
    parts = [_j({"htype": "dheader-1.0", "series": series, "header_detail": detail})]
    return parts + ([_j(config)] if config is not None else [])


def v1_frame(
    array: np.ndarray,
    series: int,
    frame: int,
    encoding: str = "bslz4",
    t0_ns: int = 0,
    period_ns: int = 25_000_000,
) -> list[bytes]:
    """``[dimage-1.0, dimage_d-1.0, blob, dconfig-1.0]`` for one 2-D unsigned frame."""
    arr = np.ascontiguousarray(array)
    if encoding == "bslz4":
        enc, blob = V1_BS[arr.dtype.itemsize], compress_framed(arr, "bslz4")
    elif encoding == "lz4":
        enc, blob = "lz4<", compress_lz4_block(arr)
    else:
        enc, blob = "<", arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    h, w = arr.shape
    start = t0_ns + frame * period_ns
    return [
        _j({"htype": "dimage-1.0", "series": series, "frame": frame, "hash": ""}),
        _j(
            {
                "htype": "dimage_d-1.0",
                "shape": [w, h],
                "type": arr.dtype.name,
                "encoding": enc,
                "size": len(blob),
            }
        ),
        blob,
        _j(
            {
                "htype": "dconfig-1.0",
                "start_time": start,
                "stop_time": start + period_ns,
                "real_time": period_ns,
            }
        ),
    ]


def v1_end(series: int) -> list[bytes]:
    return [_j({"htype": "dseries_end-1.0", "series": series})]


def v1_series(frames: Sequence[np.ndarray], series: int, encoding: str = "bslz4") -> list[list[bytes]]:
    """A whole series as multipart messages, the header and configuration in one message."""
    cfg = v1_detector_config(frames[0].shape, frames[0].dtype, len(frames))
    msgs = [v1_header(series, cfg)]
    msgs += [v1_frame(f, series, i, encoding) for i, f in enumerate(frames)]
    return [*msgs, v1_end(series)]


def write_sim_dump(path: Path, messages: Iterable[list[bytes]]) -> Path:
    """LiberTEM-live simulator input: every *part* as its own length-prefixed record.

    The simulator sends the first two records (dheader, configuration) as separate messages, then
    groups four records per image into one multipart message, as a detector does.
    """
    with open(path, "wb") as fh:
        for parts in messages:
            for p in parts:
                fh.write(np.int64(len(p)).tobytes())
                fh.write(p)
    return path


# --- stream v2 (CBOR) ----------------------------------------------------------------------------

_V2_TAG = {"uint8": 64, "uint16": 69, "uint32": 70, "float16": 84, "float32": 85}


def v2_start(series: int, unique_id: str, shape: tuple[int, int], dtype: Any, n_images: int) -> bytes:
    import cbor2

    return SELF_DESCRIBED_CBOR + cbor2.dumps(  # as a DCU sends every message
        {
            "type": "start",
            "series_id": series,
            "series_unique_id": unique_id,
            "image_size_x": int(shape[1]),
            "image_size_y": int(shape[0]),
            "image_dtype": np.dtype(dtype).name,
            "number_of_images": n_images,
            "channels": ["threshold_1"],
            "count_time": 0.025,
            "frame_time": 0.025,
        }
    )


def v2_image(
    array: np.ndarray, series: int, unique_id: str, image_id: int, compression: str = "bslz4"
) -> bytes:
    import cbor2

    arr = np.ascontiguousarray(array)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    if compression == "bslz4":
        content: Any = cbor2.CBORTag(56500, ["bslz4", arr.dtype.itemsize, compress_framed(arr, "bslz4")])
    elif compression == "lz4":
        content = cbor2.CBORTag(56500, ["lz4", 0, compress_framed(arr, "lz4")])
    else:
        content = arr.tobytes()
    typed = cbor2.CBORTag(_V2_TAG[arr.dtype.name], content)
    return SELF_DESCRIBED_CBOR + cbor2.dumps(
        {
            "type": "image",
            "series_id": series,
            "series_unique_id": unique_id,
            "image_id": image_id,
            "start_time": [image_id * 25, 1000],
            "stop_time": [image_id * 25 + 25, 1000],
            "real_time": [25, 1000],
            "data": {"threshold_1": cbor2.CBORTag(40, [list(arr.shape), typed])},
        }
    )


def v2_end(series: int, unique_id: str) -> bytes:
    import cbor2

    end = {"type": "end", "series_id": series, "series_unique_id": unique_id}
    return SELF_DESCRIBED_CBOR + cbor2.dumps(end)
