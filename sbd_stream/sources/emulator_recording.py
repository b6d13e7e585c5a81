"""``emulate --source RECORDING``: the recording, not the flags, says what is sent.

Why: a recording's raw counts are re-sent as they were recorded, so their frame size, their counts
and the sampling they were taken at are facts of the file. Announcing the flags' values instead (the
1024 x 1024 default, or ``--pixel-size 0.1`` over a 0.060 A recording) made ``series_start`` and the
banner describe another detector than the frames sent, and a service that trusts ``series_start``
would denoise them at the wrong dose. So: shape and sampling come from the recording; a flag that
states something else is refused with one line (a typo would otherwise be silently overruled); a flag
only fills in what the recording does not state. ``--dtype`` may re-encode the counts, but only
losslessly (``check_counts_fit``): uint8 would wrap counts above 255.

What the emulator reads of a recording is checked before anything is sent (``raw_layout``): a
1 x 20000 or 0 x 0 frame size used to pass into the settings unchecked and end in a ``ProtocolError``
traceback after the banner, and a file without ``/raw/complete`` in a ``KeyError``; each is now one
line naming the file and what it holds.

Each frame goes out with its recorded ``exposure_s`` and producer ``meta`` (``RecordedRows``), as the
detector sent them (``formats/frame_meta.py``): a test service fed yesterday's session sees the stage
temperature, tilt or DECTRIS keys each frame came with, not the emulator's frame period and ``dose``.
A rolled recording is read on into its parts (``recording_parts``), as ``replay`` reads it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import ValidationError

from sbd_stream.config import DetectorSettings
from sbd_stream.formats import frame_meta
from sbd_stream.formats.limits import RecordingError, check_dtype, frame_problem, trusted_rows
from sbd_stream.formats.recording import open_recording, recorded_detector
from sbd_stream.formats.recording_parts import recording_parts
from sbd_stream.formats.safe_chunks import UnsafeChunks, safe_dataset
from sbd_stream.protocol import MAX_HEADER_BYTES, HeaderTooLarge, encode_frame
from sbd_stream.sources.emulator_settings import EmulatorSettings

log = logging.getLogger(__name__)

SENDABLE = ("uint8", "uint16")
"""Count types the emulator sends (wire format v1 counted frames)."""
MAX_RESENT = 256
"""Most recorded frames re-sent (cycled): bounded memory."""
ROW_COLUMNS = ("complete", "seq", "ts", "time", "frame")
"""Per-row datasets of a recording's ``raw`` group (docs/service.md), as ``trusted_rows`` reads them."""


def recorded_layout(path: Path) -> tuple[tuple[int, int], str] | None:
    """Frame shape and dtype of a recording's raw frames; None if ``path`` is no recording (a simulated
    dataset, whose images are resampled to the flags' detector instead). Same test as ``FrameSource``.
    ``RecordingError`` (one line) when its raw frames cannot be sent (``raw_layout``)."""
    with open_recording(path) as f:
        return raw_layout(f["raw"], path.name) if is_recording(f) else None


def is_recording(f: h5py.File) -> bool:
    """Whether ``f`` holds raw frames to re-send: a ``raw`` group with ``frames`` (and no ``images``, a
    simulated dataset's). A ``raw`` that is a dataset is no recording (``in`` on it was a numpy error)."""
    return "images" not in f and isinstance(f.get("raw"), h5py.Group) and "frames" in f["raw"]


def raw_layout(g: Any, name: str) -> tuple[tuple[int, int], str]:
    """Frame shape and dtype of the ``raw`` group ``g`` of recording ``name``, checked as the wire carries
    them: ``frames`` an (N, H, W) stack of counts, each side 1 to ``MAX_SIDE``; a 1-D ``complete`` (the
    rows to trust, docs/service.md: a recording without one was cut short or not made by ``serve``) and
    1-D per-row columns. Else ``RecordingError`` naming the file and what it holds."""
    ds = g["frames"]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
        held = f"a {ds.ndim}-D dataset" if isinstance(ds, h5py.Dataset) else f"a {type(ds).__name__.lower()}"
        raise RecordingError(f"{name}: /raw/frames is {held}, not a stack of frames (N, H, W)")
    try:
        check_dtype(ds.dtype)
    except ValueError as e:
        raise RecordingError(f"{name}: /raw/frames: {e}") from None
    if problem := frame_problem(ds.shape[1:], ds.dtype.itemsize):
        raise RecordingError(f"{name} holds {problem}; it cannot be re-sent")
    if "complete" not in g:
        raise RecordingError(
            f"{name} has /raw/frames but no /raw/complete, which every recording `serve` writes has: "
            "damaged, or not an sbd-stream recording"
        )
    for col in ROW_COLUMNS:
        if col in g and not (isinstance(g[col], h5py.Dataset) and g[col].ndim == 1):
            raise RecordingError(f"{name}: /raw/{col} is not a 1-D per-row dataset (damaged?)")
    return (int(ds.shape[1]), int(ds.shape[2])), str(ds.dtype)


Row = tuple[float | None, dict[str, Any] | None]
"""A recorded row's ``exposure_s`` and ``meta``; None where its part holds none (``frame_meta.block``)."""


def recorded_counts(f: h5py.File, cfg: EmulatorSettings) -> tuple[list[np.ndarray], list[Row]]:
    """The raw counts ``FrameSource`` re-sends from the open recording ``f`` (``cfg.source``), and each
    one's recorded (exposure_s, meta): the first ``MAX_RESENT`` trusted rows (``trusted_rows``) of it and
    of its rolled parts after it, checked by ``raw_layout`` and ``check_counts_fit``. A part holding
    frames of another size or type (another series) ends what is re-sent: one stream has one layout."""
    assert cfg.source is not None
    name = cfg.source.name
    layout = raw_layout(f["raw"], name)
    counts, rows = _part_rows(f, name, MAX_RESENT)
    if not counts:
        raise ValueError(f"{cfg.source} holds no complete raw frames")
    for part in recording_parts(cfg.source)[1:]:
        if len(counts) >= MAX_RESENT:
            break
        with open_recording(part) as p:
            if not is_recording(p):
                continue
            if raw_layout(p["raw"], part.name) != layout:
                log.warning(
                    "%s holds frames of another size or type; emulate re-sends the parts before it", part
                )
                break
            c, r = _part_rows(p, part.name, MAX_RESENT - len(counts))
        counts += c
        rows += r
    check_counts_fit(counts, cfg.dtype, name)  # the cast in FrameSource.frames() is lossless
    return counts, rows


def _part_rows(f: h5py.File, name: str, most: int) -> tuple[list[np.ndarray], list[Row]]:
    """Counts and (exposure_s, meta) of the first ``most`` trusted raw rows of one open part."""
    g = f["raw"]
    n = min(trusted_rows(g, f"{name}: /raw"), most)
    try:  # a damaged bitshuffle-LZ4 chunk: an error naming the part, not a crash
        frames = safe_dataset(g["frames"])
        counts = [np.asarray(frames[i]) for i in range(n)]
    except UnsafeChunks as e:
        raise RecordingError(f"{name}: /raw/frames: {e}; damaged?") from None
    return counts, list(frame_meta.rows(g, n, f"{name}: /raw"))


class RecordedRows:
    """Builds each sent frame's message: frame ``k`` with row ``k % len(rows)``'s recorded ``exposure_s``
    and ``meta`` (the rows ``recorded_counts`` read, cycled as the counts are); none for other sources.

    Precedence: the recorded exposure, else (an older part; not given) the emulator's frame period. The
    recorded meta is sent as recorded (keys the service set were already renamed ``meta.<key>`` then,
    and stay so); the emulator's own keys (``dose``) are added only where the recorded meta lacks them,
    and left out when the header would pass the wire's 64 KiB with them. A recorded meta that does not
    fit even alone (a longer ``--acq`` than the recorded one) is replaced by ``recorded_meta_dropped``,
    said once per row at WARNING: never a traceback mid-stream, never silently."""

    def __init__(self, rows: list[Row] | None = None) -> None:
        self.rows = rows or []
        self._warned: set[int] = set()

    def message(
        self, k: int, counts: np.ndarray, acq: str, seq: int, ts: float, exposure_s: float, own: dict
    ) -> list:
        """Frame ``k``'s three message parts (``protocol.encode_frame``)."""
        rec_exp, rec_meta = self.rows[k % len(self.rows)] if self.rows else (None, None)
        exp = exposure_s if rec_exp is None else rec_exp
        if rec_meta is None:
            return encode_frame(counts, acq, seq, ts, exposure_s=exp, meta=own)
        for meta in ({**own, **rec_meta}, rec_meta):
            try:
                return encode_frame(counts, acq, seq, ts, exposure_s=exp, meta=meta)
            except HeaderTooLarge:
                pass
        row = k % len(self.rows)
        if row not in self._warned:
            self._warned.add(row)
            log.warning(
                "recorded row %d: its meta does not fit a 64 KiB header with --acq %r; sent without", row, acq
            )
        note = {**own, "recorded_meta_dropped": f"over the {MAX_HEADER_BYTES}-byte header with acq {acq!r}"}
        return encode_frame(counts, acq, seq, ts, exposure_s=exp, meta=note)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4)


def for_recording(
    cfg: EmulatorSettings,
    *,
    shape_given: bool = False,
    dtype_given: bool = False,
    pixel_size_A: float | None = None,
    dose_e_per_A2: float | None = None,
    counts_per_px: float | None = None,
) -> tuple[EmulatorSettings, str]:
    """``cfg`` with the recording's shape, dtype (unless ``dtype_given``) and sampling, and a note of
    where the sampling came from; ``cfg`` unchanged ("") when its source is not a recording.

    The keyword flags are the command's, as given (None: not given), so each is compared in its own
    unit; ``ValueError`` (one line) when one contradicts what the recording states.
    """
    if cfg.source is None or cfg.scene is not None:
        return cfg, ""
    layout = recorded_layout(cfg.source)
    if layout is None:
        return cfg, ""
    (h, w), dtype = layout
    name = cfg.source.name
    if shape_given and tuple(cfg.shape) != (h, w):
        got = f"{cfg.shape[0]}x{cfg.shape[1]}"
        raise ValueError(
            f"--shape {got}: {name} holds {h}x{w} frames, re-sent as recorded (leave --shape out)"
        )
    if not dtype_given and dtype not in SENDABLE:
        raise ValueError(f"{name} holds {dtype} frames; emulate sends uint8 or uint16 counts (give --dtype)")
    stated = recorded_detector(cfg.source)  # pixel_size_A, and dose_e_per_A2 or counts_per_px, if stated
    rec_px = stated.get("pixel_size_A")
    if pixel_size_A is not None and rec_px is not None and not _close(pixel_size_A, rec_px):
        raise ValueError(f"--pixel-size {pixel_size_A:g}: {name} was recorded at {rec_px:g} A pixels")
    px = rec_px if rec_px is not None else (pixel_size_A or cfg.pixel_size_A)
    rec_dose = {k: v for k, v in stated.items() if k in ("dose_e_per_A2", "counts_per_px")}
    if rec_dose:
        det = DetectorSettings(pixel_size_A=px, **rec_dose)
        if dose_e_per_A2 is not None and not _close(dose_e_per_A2, det.dose_per_area):
            raise ValueError(f"--dose {dose_e_per_A2:g}: {name} was recorded at {det.dose_per_area:g} e/A^2")
        if counts_per_px is not None and not _close(counts_per_px, det.vacuum_counts):
            raise ValueError(
                f"--counts-per-px {counts_per_px:g}: {name} was recorded at {det.vacuum_counts:g} counts/px"
            )
    else:
        det = DetectorSettings(pixel_size_A=px, dose_e_per_A2=dose_e_per_A2, counts_per_px=counts_per_px)
    unstated = [what for what, said in (("pixel size", rec_px), ("dose", rec_dose)) if not said]
    note = (
        f"{' and '.join(unstated)} not stated by the recording: flag or default"
        if unstated
        else "as recorded"
    )
    update: dict[str, Any] = {"shape": (h, w), "dtype": cfg.dtype if dtype_given else dtype}
    update.update(pixel_size_A=det.pixel_size_A, dose=det.vacuum_counts)
    try:  # validated, not ``model_copy(update=...)``, which let a 1 x 20000 shape from a file through
        return EmulatorSettings.model_validate({**cfg.model_dump(), **update}), note
    except ValidationError as e:
        said = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ValueError(f"{name}: {said.replace('Value error, ', '')}") from None


def check_counts_fit(frames: Sequence[np.ndarray], dtype: str, name: str) -> None:
    """Refuse (ValueError, one line) to re-encode recorded frames as ``dtype`` unless it is lossless:
    integer counts within its range. ``astype`` would wrap 300 to 44 in uint8, silently."""
    dt = np.dtype(dtype)
    if not frames or all(f.dtype == dt for f in frames):
        return
    info = np.iinfo(dt)
    for f in frames:
        if f.dtype.kind == "f" and not (np.isfinite(f).all() and np.array_equal(f, np.round(f))):
            raise ValueError(f"{name} holds values that are not whole counts; {dtype} would alter them")
        lo, hi = float(f.min()), float(f.max())
        if lo < info.min or hi > info.max:
            raise ValueError(
                f"{name} holds counts from {lo:g} to {hi:g}; {dtype} would wrap those outside "
                f"{info.min}-{info.max} (send uint16, or leave --dtype out)"
            )
