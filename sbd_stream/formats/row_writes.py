"""A recording row's small HDF5 writes, with the least interpreter time: the per-row datasets and the
appended byte / table datasets of one kind, their handles, dataspaces and buffers made once per open file.

Why: h5py holds the GIL through every HDF5 call, and the recorder's thread takes that time from the live
lane. A row of 8 to 11 per-row datasets written as ``ds.resize(i + 1); ds[i] = v`` (even through
h5py's low-level calls, with a new dataspace, a new 1-element array and ``ds.dtype`` looked up per
value) cost ~19 us each, ~60 us more for a raw row's ``meta`` or an llr row's column table, so a raw
row's ~0.3 ms was half per-row values (benchmarks/bench_record_rows.py). Each dataset still needs its
own extent change and write (the layout readers see is unchanged: every extent is the row count), but
one file dataspace serves every per-row dataset of the row (they share the extent ``i + 1`` and the
selection ``i``), each value goes through a buffer of its dataset's dtype kept for the file, and extents
are tracked here instead of read back from HDF5.

The order is the contract of ``AcqFile.append``: ``complete`` is written last (:meth:`RowColumns.mark`),
after every other dataset of the row, so a reader (live, or of a killed process's file) counts a row
only once all of it is there.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

UNLIMITED = h5py.h5s.UNLIMITED
_ONE = h5py.h5s.create_simple((1,))


class RowColumns:
    """The per-row datasets of one kind in one open file, ``complete`` last, written one row at a time."""

    def __init__(self, kind: str, named: list[tuple[str, h5py.Dataset]]) -> None:
        assert named and named[-1][0] == "complete", "complete must be the last per-row dataset"
        self.kind = kind
        self.names = [name for name, _ in named[:-1]]
        self._ids = [ds.id for _, ds in named[:-1]]
        self._bufs = [np.empty(1, ds.dtype) for _, ds in named[:-1]]
        self._complete = named[-1][1].id
        self._one = np.ones(1, named[-1][1].dtype)
        self._space = h5py.h5s.create_simple((1,), (UNLIMITED,))

    def write(self, i: int, values: dict[str, Any]) -> None:
        """Row ``i`` of every dataset but ``complete`` (``values`` by name), each extended to ``i + 1``;
        then :meth:`mark`. A value its dataset cannot hold raises before ``complete``: the row never
        counts."""
        space = self._space
        space.set_extent_simple((i + 1,), (UNLIMITED,))
        space.select_hyperslab((i,), (1,))
        for name, did, buf in zip(self.names, self._ids, self._bufs, strict=True):
            buf[0] = values[name]
            did.set_extent((i + 1,))
            did.write(_ONE, space, buf)
        self.mark(i)

    def mark(self, i: int) -> None:
        """``complete[i] = 1``: the row counts from now on (written last, see the module's docstring)."""
        self._complete.set_extent((i + 1,))
        self._complete.write(_ONE, self._space, self._one)


class Appended:
    """A dataset of entries appended one row after another (``raw/meta`` bytes, ``llr/columns``): rows
    ``[start, start + k)`` written in one call, the extent grown to exactly what was written (never ahead:
    readers see the dataset's length). ``width``: the entry's second dimension (None: 1-D)."""

    def __init__(self, ds: h5py.Dataset) -> None:
        self._id = ds.id
        self.dtype = ds.dtype
        self.width: int | None = int(ds.shape[1]) if len(ds.shape) > 1 else None
        self.size = int(ds.shape[0])
        self._tail = () if self.width is None else (self.width,)
        self._max = (UNLIMITED,) if self.width is None else (UNLIMITED, self.width)

    def write(self, start: int, rows: np.ndarray) -> int:
        """Write ``rows`` (``k`` entries of this dataset's dtype and width, C-contiguous) at ``start``;
        returns ``k``."""
        k = len(rows)
        if not k:
            return 0
        end = start + k
        if self.size < end:
            self._id.set_extent((end, *self._tail))
            self.size = end
        space = h5py.h5s.create_simple((self.size, *self._tail), self._max)
        space.select_hyperslab((start, *(0,) * len(self._tail)), (k, *self._tail))
        self._id.write(h5py.h5s.create_simple((k, *self._tail)), space, rows)
        return k
