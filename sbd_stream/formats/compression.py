"""The names ``--compression`` takes and the HDF5 filter each one means: recordings and denoise outputs.

One place for both writers (``formats/recording.py``, ``sources/stacks.create_output``), so that a name
means the same filter in a recording and in a ``denoise`` output. bitshuffle-LZ4 (the default) needs
hdf5plugin's filter in every reader; gzip is built into every HDF5 library (plain h5py, MATLAB, Fiji,
h5dump); none stores the bytes as they are.
"""

from __future__ import annotations

from typing import Any

import hdf5plugin  # registers bitshuffle/LZ4 for writing

COMPRESSIONS = ("bitshuffle-lz4", "gzip", "none")
DEFAULT = "bitshuffle-lz4"
_BSHUF_ID, _BSHUF_LZ4 = 32008, 2  # bitshuffle's HDF5 filter id; its cd_values[4] for LZ4


def check_compression(name: str | None) -> str:
    """``name``, or the default for None; a name not in ``COMPRESSIONS`` is one ``ValueError`` line
    naming the choices (before any work: a typo must not cost a denoised stack)."""
    if name is None:
        return DEFAULT
    if name not in COMPRESSIONS:
        raise ValueError(f"--compression must be one of {', '.join(COMPRESSIONS)}, not {name!r}")
    return name


def filter_args(name: str) -> dict[str, Any]:
    """``create_dataset`` keyword arguments for the compression ``name`` (checked: ``check_compression``)."""
    name = check_compression(name)
    if name == "bitshuffle-lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    return {}


def stored_compression(ds: Any) -> str | None:
    """The name of the compression an ``h5py.Dataset`` was written with (None: a pipeline no name
    writes). Read from the filters themselves, so a file from before the name was recorded says too."""
    plist = ds.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    if not filters:
        return "none"
    if len(filters) == 1:
        fid, _flags, cd, _name = filters[0]
        if fid == _BSHUF_ID and len(cd) > 4 and cd[4] == _BSHUF_LZ4:
            return "bitshuffle-lz4"
        if fid == 1:  # H5Z_FILTER_DEFLATE
            return "gzip"
    return None
