"""What an offline Dask job runs on: its source, engine spec, chunk plan and resume fingerprint (pure).

Kept apart from ``offline_dask`` (the cluster and the client) so the rules that make the output equal
to ``denoise_file``'s bit for bit (chunks are whole batches) and a resume safe (the fingerprint) can
be read and tested without Dask.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from sbd_stream.formats.limits import RecordingError, count_problem, frame_problem, trusted_rows
from sbd_stream.sources.stacks import StackError, not_a_file, open_stack

__all__ = [
    "ChunkPlan",
    "Source",
    "chunk_size",
    "default_threads",
    "default_workers",
    "fingerprint",
    "inspect_recording",
    "inspect_stack",
    "plan_chunks",
    "resolve_detector",
]


def chunk_size(chunk_frames: int, batch: int) -> int:
    """``chunk_frames`` rounded up to a whole number of batches."""
    if chunk_frames < 1 or batch < 1:
        raise ValueError(f"chunk_frames and batch must be >= 1, got {chunk_frames} and {batch}")
    return -(-chunk_frames // batch) * batch


class ChunkPlan(Sequence[tuple[int, int]]):
    """[start, stop) ranges of ``size`` frames covering ``n`` frames, computed when asked for.

    A sequence, not a list: a header declaring 10^12 frames had ``plan_chunks`` build 6 x 10^10
    tuples before anything else could refuse it. Equal to a list of the same ranges.
    """

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size, self._starts = n, size, range(0, n, size)

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, i: int) -> tuple[int, int]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, int]]: ...
    def __getitem__(self, i: int | slice) -> tuple[int, int] | list[tuple[int, int]]:
        if isinstance(i, slice):
            return [(a, min(a + self.size, self.n)) for a in self._starts[i]]
        a = self._starts[i]
        return a, min(a + self.size, self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((a, min(a + self.size, self.n)) for a in self._starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChunkPlan | list):
            return NotImplemented
        return len(other) == len(self) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # equal by content, so unhashable (as a list)

    def __repr__(self) -> str:
        return f"ChunkPlan(n={self.n}, size={self.size})"


def plan_chunks(n_frames: int, chunk_frames: int, batch: int) -> ChunkPlan:
    """[start, stop) ranges covering ``n_frames``; all but the last chunk are whole numbers of batches.

    More than ``MAX_FRAMES`` frames is refused in one line (ValueError): no real stack has them, and
    a chunk list of that length would not fit in memory wherever it is made a list.
    """
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if (problem := count_problem(n_frames)) is not None:
        raise ValueError(problem)
    return ChunkPlan(n_frames, chunk_size(chunk_frames, batch))


def resolve_detector(sampling: dict[str, float], given: dict[str, float | None] | None) -> dict[str, float]:
    """The detector settings ``denoise_file`` uses: options win; a dose option drops the file's dose."""
    stated = {k: v for k, v in (given or {}).items() if v is not None}
    out = dict(sampling)
    if "dose_e_per_A2" in stated or "counts_per_px" in stated:
        out.pop("dose_e_per_A2", None)
        out.pop("counts_per_px", None)
    return {**out, **stated}


def unstated(sampling: Mapping[str, float], given: Mapping[str, float | None] | None) -> str | None:
    """What neither the input nor the options state (so the paper's K2 fills it), as a warning, or None.

    An abTEM TIFF at 0.05 A (its sampling in a JSON description sbd-stream does not read) was
    denoised at 0.060 A without a word; the warning names the flag to give.
    """
    have = {**sampling, **{k: v for k, v in (given or {}).items() if v is not None}}
    pixel, dose = "pixel_size_A" not in have, "dose_e_per_A2" not in have and "counts_per_px" not in have
    missing = [*(["the pixel size (--pixel-size)"] if pixel else []),
               *(["the dose (--dose / --counts-per-px)"] if dose else [])]  # fmt: skip
    if not missing:
        return None
    # only what is assumed: "the paper's K2 sampling" said with --pixel-size 0.03 given (audit h35 D3)
    assumed = (
        "the paper's K2 sampling (0.060 A, 125 e/A^2 per frame)" if pixel and dose
        else "the paper's K2 pixel size (0.060 A)" if pixel
        else "the paper's dose (125 e/A^2 per frame)"
    )  # fmt: skip
    return f"the input does not state {' or '.join(missing)}: {assumed} is assumed"


_SAMPLING_FLAGS = {"pixel_size_A": ("--pixel-size", "A"), "dose_e_per_A2": ("--dose", "e/A^2"),
                   "counts_per_px": ("--counts-per-px", "counts/px")}  # fmt: skip


def overridden(sampling: Mapping[str, float], given: Mapping[str, float | None] | None) -> str | None:
    """Options that replace a different value the input states, as a warning, or None.

    ``evaluate-images`` said so and ``denoise`` did not (audit h30): a ``--pixel-size 0.05`` given out of
    habit silently outranked the 0.060 A an MRC header states, and the frames were binned for the wrong
    pixel. The option still wins (it is how a wrong header is corrected); the line says it did.
    """
    said = []
    for key, (flag, unit) in _SAMPLING_FLAGS.items():
        mine, theirs = (given or {}).get(key), sampling.get(key)
        if mine is not None and theirs is not None and abs(mine / theirs - 1) > 1e-3:
            said.append(f"{flag} {mine:g} replaces the {theirs:g} {unit} the input states")
    said += _other_unit(sampling, given or {})
    return "; ".join(said) or None


def _other_unit(sampling: Mapping[str, float], given: Mapping[str, float | None]) -> list[str]:
    """A dose option against a dose the input states in the other unit, compared at the pixel size used.

    Why (mutation round h31): a stated dose of either unit is dropped once a dose option is given, and
    ``--dose 200`` on a file stating 0.45 counts/px ran at 0.72 counts/px without a word, while the same
    file with ``--counts-per-px 0.9`` said so (``counts_per_px = dose_e_per_A2 x pixel_size_A^2``)."""
    px = given.get("pixel_size_A") or sampling.get("pixel_size_A")
    dose, counts = given.get("dose_e_per_A2"), given.get("counts_per_px")
    if not px:
        return []
    if dose is not None and counts is None and "dose_e_per_A2" not in sampling:
        theirs = sampling.get("counts_per_px")
        if theirs is not None and abs(dose * px * px / theirs - 1) > 1e-3:
            return [f"--dose {dose:g} replaces the {theirs:g} counts/px the input states "
                    f"({dose * px * px:.4g} counts/px)"]  # fmt: skip
    if counts is not None and dose is None and "counts_per_px" not in sampling:
        theirs = sampling.get("dose_e_per_A2")
        if theirs is not None and abs(counts / (theirs * px * px) - 1) > 1e-3:
            return [f"--counts-per-px {counts:g} replaces the {theirs:g} e/A^2 the input states "
                    f"({counts / (px * px):.4g} e/A^2)"]  # fmt: skip
    return []


def default_workers(n_chunks: int, cores: int) -> int:
    return max(1, min(cores, n_chunks))


def default_threads(cores: int, workers: int) -> int:
    return max(1, cores // max(1, workers))


@dataclass(frozen=True)
class Source:
    """Where the frames are: ``parts`` (path, rows) read one after the other as one (N, H, W) stack."""

    parts: tuple[tuple[str, int], ...]
    shape: tuple[int, int, int]
    dtype: str
    label: str  # the output's ``source`` attribute
    dataset: str | None = None
    recording: bool = False  # a `serve` recording: raw/frames, complete rows only, SWMR read
    sampling: tuple[tuple[str, float], ...] = ()
    stat: tuple[tuple[int, int], ...] = ()  # (size, mtime_ns) per part: the resume fingerprint


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def inspect_stack(path: Path, dataset: str | None = None) -> Source:
    """Shape, dtype and sampling of an HDF5 / NPY / TIFF stack (no pixels read)."""
    stack = open_stack(Path(path), dataset)  # the path as given names the source, as in denoise_file
    try:
        n, h, w = stack.shape
        # HDF5: "path:dataset"; the name is what follows the path (a dataset "scan:1/frames" has its own ':')
        prefix = f"{Path(path)}:"
        name = stack.source[len(prefix) :] if stack.source.startswith(prefix) else None
        full = Path(path).resolve()  # workers may run elsewhere: absolute paths
        return Source(
            ((str(full), n),), (n, h, w), str(stack.dtype), stack.source, name, False,
            tuple(sorted(stack.sampling.items())), (_stat(full),),
        )  # fmt: skip
    finally:
        stack.close()


def inspect_recording(path: Path) -> Source:
    """The complete raw frames of a `serve` recording, across its rolled parts from ``path`` on, up to
    the first part of another frame shape or dtype (``uniform_parts`` logs it and the file to give next:
    denoising that part the same way goes on from there, with ``seq`` / ``ts`` written as here)."""
    from sbd_stream.formats.hdf5_read import h5_reason
    from sbd_stream.formats.recording import open_recording, recorded_detector, uniform_parts

    try:  # a FIFO blocked HDF5's open for ever; a missing file is the reader's to say
        if (why := not_a_file(Path(path))) is not None:
            raise StackError(f"{path}: {why}")
    except (FileNotFoundError, NotADirectoryError):
        pass
    parts, shape, dtype = [], None, None
    try:
        uniform = uniform_parts(Path(path).resolve())
    except RecordingError as e:  # frames of no count type, a link that cannot be followed: one line
        raise StackError(str(e)) from None
    for part in uniform:
        try:
            with open_recording(part) as f:
                if "raw/frames" not in f or "raw/complete" not in f:
                    raise StackError(f"{part}: no raw frames (is this a recording made by `serve`?)")
                ds = f["raw/frames"]
                if (problem := frame_problem(tuple(ds.shape[1:]), ds.dtype.itemsize)) is not None:
                    raise StackError(f"{part}: raw {problem}")
                rows = trusted_rows(f["raw"], f"{part}: raw")  # written rows, whatever the extents say
                if shape is not None and (ds.shape[1:], str(ds.dtype)) != (shape, dtype):
                    raise StackError(
                        f"{part}: frames {ds.shape[1:]} {ds.dtype} differ from the first part's {shape} "
                        f"{dtype}; denoise it on its own (sbd-stream denoise {part} OUT.h5)"
                    )
                shape, dtype = tuple(ds.shape[1:]), str(ds.dtype)
        except (OSError, RuntimeError, KeyError) as e:  # h5py's on a damaged part: one line, not a traceback
            raise StackError(f"{part}: not a readable HDF5 recording ({h5_reason(e)})") from e
        except RecordingError as e:
            raise StackError(str(e)) from None
        parts.append((str(part), rows))
    n = sum(r for _, r in parts)
    if n == 0 or shape is None or dtype is None:  # shape and dtype come with the first part read
        raise StackError(f"{path}: the recording holds no complete raw frame")
    if (problem := count_problem(n)) is not None:
        raise StackError(f"{path}: {problem}")
    try:
        sampling = tuple(sorted(recorded_detector(Path(path)).items()))
    except RecordingError as e:  # an attribute no finite number > 0: named, in one line
        raise StackError(str(e)) from None
    return Source(
        tuple(parts), (n, shape[0], shape[1]), dtype, f"{path}:raw/frames", "raw/frames", True,
        sampling, tuple(_stat(Path(p)) for p, _ in parts),
    )  # fmt: skip


def recording_index(src: Source) -> dict[str, np.ndarray]:
    """Each complete raw row's own columns, in the source's row order (parts in turn), written beside the
    denoised frames: ``seq``, ``ts`` and ``segment``, so readers join on ``seq`` as in the recording
    itself and order by (segment, seq) where one recording holds several series; and the producer's
    ``exposure_s`` and ``meta`` (``meta`` bytes with ``meta_start`` / ``meta_length``: the recording's
    own layout, ``formats/frame_meta.py``, so ``frame_meta.block(f, a, b, where)`` reads them from the
    output's root). Without them an offline output named each frame but lost what the instruments said
    about it, which a live replay's re-recording keeps (audit h33). Parts written before session 31
    hold none: NaN and -1 (not recorded), as in the recording. A meta that is no JSON object (a damaged
    part) is a ``StackError`` naming the part and row, before any frame is denoised."""
    from sbd_stream.formats import frame_meta
    from sbd_stream.formats.recording import open_recording

    seqs, tss, segs, exposures, starts, lengths, blobs, at = [], [], [], [], [], [], [], 0
    for path, rows in src.parts:
        with open_recording(path) as f:
            seqs.append(np.asarray(f["raw/seq"][:rows], np.int64))
            tss.append(np.asarray(f["raw/ts"][:rows], np.float64))
            segs.append(np.full(rows, int(f.attrs.get("segment", 0)), np.int64))
            try:
                for exposure, meta in frame_meta.rows(f["raw"], rows, f"{path}: raw"):
                    exposures.append(np.nan if exposure is None else exposure)
                    blob = b"" if meta is None else frame_meta.encode(meta)
                    starts.append(-1 if meta is None else at)
                    lengths.append(-1 if meta is None else len(blob))
                    blobs.append(blob)
                    at += len(blob)
            except RecordingError as e:
                raise StackError(str(e)) from None
    return {
        "seq": np.concatenate(seqs), "ts": np.concatenate(tss), "segment": np.concatenate(segs),
        "exposure_s": np.asarray(exposures, np.float64), "meta_start": np.asarray(starts, np.int64),
        "meta_length": np.asarray(lengths, np.int64), "meta": np.frombuffer(b"".join(blobs), np.uint8),
    }  # fmt: skip


def fingerprint(
    src: Source, attrs: dict[str, Any], detector: dict, batch: int, chunk: int, upsample: str
) -> dict[str, Any]:
    """What must not change between a run and its resumption (JSON-normalised so it compares equal).

    ``attrs``: the output's attributes (``describe``): engine and its card, geometry, tiling,
    orientations, the sbd-stream version. Every setting that changes the pixels is there, each under
    its own name, so a resume with another one (``--orientations``, ``--tile``, an upgrade) starts over
    naming it; with only the engine and the detector here, a rerun with ``--orientations 1`` resumed an
    8-orientation partial, and the file mixed both while its attributes said 8. Left out: ``source``,
    the input as the command spelled it (relative or absolute), which changes no pixel.
    """
    fp = {
        **{k: v for k, v in attrs.items() if k != "source"},  # the input as spelled: "input" holds its path
        "input": [p for p, _ in src.parts],
        "rows": [r for _, r in src.parts],
        "size": [s for s, _ in src.stat],
        "mtime_ns": [m for _, m in src.stat],
        "dataset": src.dataset,
        "shape": list(src.shape),
        "detector": detector,
        "batch": batch,
        "chunk_frames": chunk,
        "upsample": upsample,
        # a recording's per-row columns beside the frames (``recording_index``): a partial begun before
        # h33 added exposure_s and meta starts over instead of finishing without them
        "per_row": ["seq", "ts", "segment", "exposure_s", "meta"] if src.recording else [],
    }
    return json.loads(json.dumps(fp))
