"""How a recording run's files are named and found again: the first file, its rolled parts, their order.

Apart from the file layout (``recording.py``) because writers (``sinks/record_runs.py``, which names a
run's next part) and every reader (``export``, ``replay``, ``denoise``) must agree on one rule: a run's
continuations are ``<first-stem>_NNNN`` numbered upwards, and a reader walks those numbers from the
given file, keeping the files of its run (``run_uid``) and passing the others.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from sbd_stream.formats.hdf5_read import open_recording

log = logging.getLogger(__name__)

__all__ = ["UNREADABLE", "free_path", "part_attr", "part_number", "recording_parts"]


def free_path(directory: Path, stem: str, part: int, suffix: str = ".nxs", after: int = 0) -> Path:
    """``<stem>.nxs`` for a run's first file (a timestamped name if that exists); for part 1... the
    first free ``<stem>_NNNN.nxs`` numbered above both ``part - 1`` and ``after`` (the previous part's
    number), so that readers, which walk the numbers up from the first file and skip other runs' files
    by ``run_uid`` (``recording_parts``), find every part.

    A continuation name taken (another acquisition called ``scan_0001``, an earlier run's part) once
    gave a timestamped name no reader looks for: ``export`` / ``replay`` / ``denoise`` left that part's
    frames out without a word (audit h29).

    ``suffix`` is ``record.suffix``: ``.nxs`` by default, because generic readers pick their reader by
    the name (HyperSpy offers four others for ``.h5`` and stops; its NeXus reader takes ``.nxs``).
    """
    if part > 0:
        n = max(part, after + 1)
        while n <= 9999:
            path = directory / f"{stem}_{n:04d}{suffix}"
            if not path.exists():
                return path
            n += 1
    path = directory / f"{stem}{suffix}"
    k = 0
    while path.exists():  # an earlier run (or, past _9999, a continuation: not reached in practice)
        k += 1
        path = directory / f"{stem}_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}_{k}{suffix}"
    return path


def part_number(path: Path) -> int:
    """The part number a recording file's name states: 0 for ``<stem>.nxs``, k for ``<stem>_000k.nxs``."""
    m = re.search(r"_(\d{4})$", Path(path).stem)
    return int(m.group(1)) if m else 0


UNREADABLE = object()
"""``part_attr``'s answer for a part that cannot be opened at all."""


def part_attr(path: Path, name: str, default: Any = None) -> Any:
    """One root attribute of a part (``run_uid``, ``segment``), ``default`` where absent, ``UNREADABLE``
    where the file cannot be opened (h5py raises RuntimeError too, e.g. "Can't deserialize object
    header prefix" for a part whose creation a SIGKILL cut short: a 48-byte stub)."""
    try:
        with open_recording(path) as f:
            v = f.attrs.get(name, default)
    except (OSError, ValueError, RuntimeError):
        return UNREADABLE
    return v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)


def recording_parts(path: Path) -> list[Path]:
    """The file and its rolled continuations after it (``name_0001.nxs`` ..., same ending), in order.

    Found by name, then kept only where their ``run_uid`` attribute equals the given file's: two runs
    recording one acquisition into one folder once spliced run 2's continuations (free ``_0001`` names)
    onto run 1's first file. Files without ``run_uid`` (older recorders) keep the name-only rule. A
    middle part yields itself and the parts after it (not the earlier ones, which it does not continue).
    """
    path = Path(path)
    parts = [path]
    uid = part_attr(path, "run_uid")
    if uid is UNREADABLE and path.exists():  # the given file itself: one line at the command, not h5py's
        open_recording(path).close()  # raises the OSError that names the file and why
    uid = None if uid is UNREADABLE else uid
    if part_attr(path, "part") == 0:  # a run's first file, whatever its name: acquisition ``scan_0001``
        stem, i = path.stem, 1  # continues in scan_0001_0001.nxs, not scan_0002.nxs
    else:
        stem, i = re.sub(r"_\d{4}$", "", path.stem), part_number(path) + 1
    while (nxt := path.with_name(f"{stem}_{i:04d}{path.suffix}")).exists():
        other = part_attr(nxt, "run_uid")
        if other is UNREADABLE:  # one unopenable part must not stop every reader of the run
            log.warning("%s cannot be opened (cut short when it was created?); leaving it out", nxt)
        elif uid is None or other is None or other == uid:
            parts.append(nxt)
        i += 1
    return parts
