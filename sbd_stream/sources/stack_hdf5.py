"""Which dataset of an HDF5 file holds the frames, and reading it so a damaged chunk names its frame.

Why links are followed: a DECTRIS / NXmx master file keeps its frames in other files, behind external
links (``/entry/data/data_000001`` -> ``run_data_000001.h5:/entry/data/data``), beside a 2-D
``pixel_mask``. ``h5py``'s ``visititems`` does not follow links, so the automatic choice saw the mask
as "the only 2-D/3-D dataset" and denoised it (exit 0), never naming the link the user needed. Soft and
external links are followed here, each object counted once (a soft link to a dataset is not a second
candidate; a link back to a group above is not a loop), and a link that leads nowhere is skipped with
its reason. Datasets named like a detector's calibration (mask, flat field, gain, dark) are never
chosen on their own: they are 2-D images of the detector, not frames.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import h5py

from sbd_stream.sources.stack_headers import StackError

log = logging.getLogger(__name__)

DEFAULT_H5_DATASETS = ("raw", "frames", "data", "entry/data/data", "images/noisy", "noisy")
CALIBRATION = re.compile(
    r"^((pixel_|bad_pixel_)?mask|flat_?field|flat|gain(_map)?|dark(_frame|_image)?|countrate_correction\w*)$",
    re.IGNORECASE,
)
"""A dataset's last name that IS a detector calibration's (pixel_mask, flatfield, gain, dark), whole:
names that merely contain one (``gain_corrected``, ``masked_frames``, ``dark_subtracted``) are stacks."""
MAX_DEPTH = 64
MAX_OBJECTS = 100_000
"""A search bound: a file of more objects than this is not searched further (name the dataset)."""


def is_calibration(name: str) -> bool:
    """Named like a detector calibration image (never taken as the frames without --dataset)."""
    return CALIBRATION.search(name.rsplit("/", 1)[-1]) is not None


def find_datasets(f: h5py.File) -> tuple[list[tuple[str, h5py.Dataset]], list[str]]:
    """Every dataset reachable from the root through hard, soft and external links, each object once,
    in name order; and the links that lead nowhere, each with why."""
    found: list[tuple[str, h5py.Dataset]] = []
    skipped: list[str] = []
    seen = {f["/"].id}
    _walk(f["/"], "", 0, seen, found, skipped)
    if len(seen) >= MAX_OBJECTS:
        skipped.append(f"everything after the first {MAX_OBJECTS} objects (name the dataset)")
    return found, skipped


def _walk(
    group: h5py.Group, prefix: str, depth: int, seen: set[Any], found: list[Any], skipped: list[str]
) -> None:
    """``find_datasets``' step (a plain function: a recursive closure is a reference cycle that kept
    the linked files open until the garbage collector ran)."""
    if depth > MAX_DEPTH:
        return
    for key in group:
        if len(seen) >= MAX_OBJECTS:
            return
        name = f"{prefix}{key}"
        link = group.get(key, getlink=True)
        try:
            obj = group.get(key)
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            obj, why = None, " ".join(str(e).split())
        else:
            why = "the file or object it names is missing"
        if obj is None:
            if isinstance(link, h5py.ExternalLink):
                skipped.append(f"{name} (external link to {link.filename}:{link.path}: {why})")
            elif isinstance(link, h5py.SoftLink):
                skipped.append(f"{name} (soft link to {link.path}: {why})")
            continue
        if obj.id in seen:
            continue
        seen.add(obj.id)
        if isinstance(obj, h5py.Dataset):
            found.append((name, obj))
        elif isinstance(obj, h5py.Group):
            _walk(obj, f"{name}/", depth + 1, seen, found, skipped)


def dataset_names(f: h5py.File) -> list[str]:
    """The names of every dataset of the file, links followed (for an error listing them)."""
    return [n for n, _ in find_datasets(f)[0]]


def guess_dataset(f: h5py.File, path: Path) -> str:
    """A conventional name, else the only 2-D/3-D dataset that is no calibration; else a refusal that
    lists the candidates (with shapes) and what was skipped (links that lead nowhere)."""
    for name in DEFAULT_H5_DATASETS:
        if isinstance(f.get(name), h5py.Dataset):
            return name
    chosen, problem = _choose(f, path)
    if chosen is None:  # raised here, where no dataset is held: a traceback kept linked files open
        raise StackError(problem)
    return chosen


def _choose(f: h5py.File, path: Path) -> tuple[str | None, str]:
    """(the dataset, "") or (None, why not)."""
    found, skipped = find_datasets(f)
    images = [(n, d) for n, d in found if d.ndim in (2, 3)]
    frames = [(n, d) for n, d in images if not is_calibration(n)]
    unreachable = f"; skipped: {', '.join(skipped)}" if skipped else ""
    if len(frames) == 1 and skipped:  # a master file whose other data file is missing: not a partial run
        return None, (
            f"{path}: frames found in {frames[0][0]}, but {', '.join(skipped)}; the stack may be "
            f"incomplete: pass --dataset {frames[0][0]} to denoise that dataset alone"
        )
    if len(frames) == 1:
        return frames[0][0], ""
    if not frames and images:
        return None, (
            f"{path}: only detector calibration datasets found ({_listed(images)}){unreachable}; pass "
            "--dataset NAME if one of them holds the frames"
        )
    return None, (
        f"{path}: cannot tell which dataset holds the frames ({_listed(frames) or 'none found'})"
        f"{unreachable}; pass --dataset NAME"
    )


def _listed(items: list[tuple[str, h5py.Dataset]]) -> str:
    shown = ", ".join(f"{n} {tuple(d.shape)}" for n, d in items[:8])
    return shown + (f", ... ({len(items)} in all)" if len(items) > 8 else "")


class GuardedFrames:
    """An HDF5 (N, H, W) stack whose read errors (a damaged chunk: "filter returned failure during
    read") are one ``StackError`` naming the file, the dataset and the first frame that fails."""

    def __init__(self, frames: Any, where: str) -> None:
        self.frames, self.where = frames, where
        self.shape, self.dtype = tuple(frames.shape), frames.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.frames[index]
        except (OSError, RuntimeError) as e:
            why = " ".join(str(e).split()) or type(e).__name__
            raise StackError(f"{self.where}: {self._failing(index)}: cannot read ({why}); damaged?") from None

    def _failing(self, index: Any) -> str:
        """The first frame of ``index`` that cannot be read alone (read again only after an error)."""
        if isinstance(index, slice):
            for i in range(*index.indices(self.shape[0])):
                try:
                    self.frames[i : i + 1]
                except (OSError, RuntimeError):
                    return f"frame {i}"
            return f"frames {index.start or 0} to {(index.stop or self.shape[0]) - 1}"
        return f"frame {index}"
