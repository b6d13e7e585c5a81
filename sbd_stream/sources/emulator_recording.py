"""``emulate --source RECORDING``: the recording, not the flags, says what is sent.

Why: a recording's raw counts are re-sent as they were recorded, so their frame size, their counts
and the sampling they were taken at are facts of the file. Announcing the flags' values instead (the
1024 x 1024 default, or ``--pixel-size 0.1`` over a 0.060 A recording) made ``series_start`` and the
banner describe another detector than the frames sent, and a service that trusts ``series_start``
would denoise them at the wrong dose. So: shape and sampling come from the recording; a flag that
states something else is refused with one line (a typo would otherwise be silently overruled); a flag
only fills in what the recording does not state. ``--dtype`` may re-encode the counts, but only
losslessly (``check_counts_fit``): uint8 would wrap counts above 255.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sbd_stream.config import DetectorSettings
from sbd_stream.formats.recording import open_recording, recorded_detector
from sbd_stream.sources.emulator_settings import EmulatorSettings

SENDABLE = ("uint8", "uint16")
"""Count types the emulator sends (wire format v1 counted frames)."""


def recorded_layout(path: Path) -> tuple[tuple[int, int], str] | None:
    """Frame shape and dtype of a recording's raw frames; None if ``path`` is no recording (a simulated
    dataset, whose images are resampled to the flags' detector instead). Same test as ``FrameSource``."""
    with open_recording(path) as f:
        if "images" in f or not ("raw" in f and "frames" in f["raw"]):
            return None
        ds = f["raw/frames"]
        return (int(ds.shape[1]), int(ds.shape[2])), str(ds.dtype)


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
    update = {"shape": (h, w), "dtype": cfg.dtype if dtype_given else dtype}
    update.update(pixel_size_A=det.pixel_size_A, dose=det.vacuum_counts)
    return cfg.model_copy(update=update), note


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
