"""A recording part's NXdata groups copied whole from a template instead of built object by object.

Why: opening a new part cost the recorder ~15 ms per acquisition on 2 shared cores (32 x 32 frames;
benchmarks/bench_part_roll.py), and ~2.4 ms of each ``raw`` / ``denoised`` / ``llr`` group was h5py's
Python overhead for its 9 datasets and ~25 attributes (``nexus.add_data``): not disk I/O, locking,
the SWMR switch or the reopen (~0.7 ms), and all of it time on the writer thread, holding the GIL the
live lane needs. A group depends on its part only through the frame shape and dtype, the compression,
the detector pixel size (its ``x`` / ``y`` axes) and ``time/@start`` (the part's ``entry/start_time``).
So it is laid out once per such key by ``nexus.add_data`` itself, in an in-memory file, and copied
into each part by one HDF5 call (``H5Ocopy``: datasets, creation properties, filters, attributes and
axis values as made), then ``time/@start``, the top-level soft link and ``entry/@default`` are set as
``add_data`` sets them. The copy is the same layout and contents as ``add_data``'s
(``tests/integration/test_recording_group_templates.py`` compares every object, property and value).
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any

import h5py
import numpy as np

from sbd_stream.formats import nexus

KEPT = 32
"""Templates kept (least recently used dropped): keys change only with shape, dtype or settings."""

_names = itertools.count()


def _key(kind: str, shape: tuple[int, int], dtype: Any, compression: dict[str, Any], pixel: Any) -> tuple:
    comp = tuple(sorted((k, repr(v)) for k, v in compression.items()))
    return kind, tuple(int(n) for n in shape), np.dtype(dtype).str, comp, repr(pixel)


class GroupTemplates:
    """In-memory files, one per (kind, shape, dtype, compression, pixel size), each holding the group
    ``nexus.add_data`` lays out; :meth:`add` copies one into a part. Safe to share between threads."""

    def __init__(self, libver: tuple[str, str], kept: int = KEPT) -> None:
        self.libver = libver
        self.kept = kept
        self._files: OrderedDict[tuple, h5py.File] = OrderedDict()
        self._lock = threading.Lock()

    def add(
        self, f: h5py.File, kind: str, shape: tuple[int, int], dtype: Any, compression: dict[str, Any]
    ) -> h5py.Group:
        """``/entry/<kind>`` and its ``/<kind>`` link in ``f``, as ``nexus.add_data(f, ...)`` makes them."""
        pixel = f.attrs.get("pixel_size_A")
        with self._lock:
            key = _key(kind, shape, dtype, compression, pixel)
            tpl = self._template(key, kind, shape, dtype, compression, pixel)
            where = f"/{nexus.ENTRY}/{kind}".encode()
            h5py.h5o.copy(tpl.id, where, f.id, where)
        entry = f[nexus.ENTRY]
        g = entry[kind]
        start = entry["start_time"][()].decode() if "start_time" in entry else None
        g["time"].attrs["start"] = start if start is not None else nexus.iso(float(f.attrs.get("t0", 0.0)))
        f[kind] = h5py.SoftLink(f"/{nexus.ENTRY}/{kind}")
        if kind == "denoised":
            entry.attrs["default"] = "denoised"
        return g

    def _template(
        self,
        key: tuple,
        kind: str,
        shape: tuple[int, int],
        dtype: Any,
        compression: dict[str, Any],
        pixel: Any,
    ) -> h5py.File:
        tpl = self._files.get(key)
        if tpl is not None:
            self._files.move_to_end(key)
            return tpl
        name = f"sbd-group-template-{next(_names)}"  # a core file's name must be unique while open
        tpl = h5py.File(name, "w", driver="core", backing_store=False, libver=self.libver)
        if pixel is not None:  # the x / y axes' values and units (``nexus._axes``)
            tpl.attrs["pixel_size_A"] = pixel
        tpl.create_group(nexus.ENTRY)
        nexus.add_data(tpl, kind, shape, dtype, compression)
        self._files[key] = tpl
        while len(self._files) > self.kept:
            self._files.popitem(last=False)[1].close()
        return tpl
