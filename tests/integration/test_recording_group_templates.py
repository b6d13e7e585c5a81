"""A new part's NXdata groups are copied from templates, and the copy is the layout ``nexus.add_data`` makes.

Before, every part built its ``raw``, ``denoised`` and ``llr`` groups object by object (9 datasets and
~25 attributes each through h5py): ~2 ms of the writer per group on 2 shared cores, most of a new part's
cost (benchmarks/bench_part_roll.py). Now each group is laid out by ``nexus.add_data`` once per frame
shape, dtype and settings and copied into the parts (``formats/group_templates.py``). The layout is a
documented contract (docs/service.md, Recording format), so the copy is compared with ``add_data``'s
own group object by object: datasets, creation properties, filters, attributes and values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from sbd_stream.config import RecordSettings
from sbd_stream.formats import nexus
from sbd_stream.formats import recording as rec_file
from sbd_stream.formats.group_templates import GroupTemplates
from sbd_stream.formats.recording import WRITE_LIBVER, iter_recorded, recording_parts
from sbd_stream.metrics import Metrics
from sbd_stream.sinks.recorder import Recorder, RecordItem

pytestmark = pytest.mark.integration

KINDS = (("raw", np.uint16), ("denoised", np.float16), ("llr", np.float32))


def _value(v: Any) -> Any:
    if isinstance(v, bytes):
        return ("bytes", v.decode())
    if isinstance(v, np.ndarray):
        return (str(v.dtype), v.shape, v.tolist())
    if isinstance(v, np.generic):
        return (str(v.dtype), v.item())
    return (type(v).__name__, v)


def describe(obj: h5py.Group | h5py.Dataset) -> Any:
    """Everything a reader can see of ``obj`` and below: links, attributes, dtypes, shapes, creation
    properties (layout, chunks, filters with their values, fill, time tracking) and data."""
    attrs = {k: _value(obj.attrs[k]) for k in sorted(obj.attrs)}
    if isinstance(obj, h5py.Dataset):
        p = obj.id.get_create_plist()
        filters = [p.get_filter(i)[:3] for i in range(p.get_nfilters())]
        return {
            "attrs": attrs,
            "dtype": str(obj.dtype),
            "shape": obj.shape,
            "maxshape": obj.maxshape,
            "layout": p.get_layout(),
            "chunks": obj.chunks,
            "filters": filters,
            "fill": _value(obj.fillvalue),
            "track_times": p.get_obj_track_times(),
            "data": _value(obj[()]),
        }
    members = {}
    for name in sorted(obj):
        link = obj.get(name, getlink=True)
        if isinstance(link, h5py.SoftLink):
            members[name] = ("soft", link.path)
        else:
            members[name] = describe(obj[name])
    return {"attrs": attrs, "members": members}


def _part(path: Path, attrs: dict, add: Any) -> Any:
    with h5py.File(path, "x", libver=WRITE_LIBVER) as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        nexus.create_entry(f, attrs)
        for kind, dtype in KINDS:
            add(f, kind, (24, 40), dtype, rec_file._compression(attrs["compression"]))
        return describe(f)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compression", ["bitshuffle-lz4", "gzip", "none"])
@pytest.mark.parametrize("pixel", [0.06, None])
@pytest.mark.parametrize("dialect", ["wire-v1", "dectris-stream2"])
def test_a_copied_group_is_the_group_add_data_makes(
    tmp_path: Path, compression: str, pixel: float | None, dialect: str
) -> None:
    """Every object, property and value of the three groups equal; the part's own values (``time/@start``
    from its entry's ``start_time``, ``entry/@default``, the top-level links) follow the part, not the
    template: two parts made one after another from one template each get their own."""
    templates = GroupTemplates(WRITE_LIBVER)
    for i, (t0, created) in enumerate(((1000.0, 2000.0), (7.5e8, 8.0e8))):  # a DECTRIS start: `created`
        attrs = {"acq": f"a{i}", "t0": t0, "created": created, "compression": compression,
                 "series_meta": json.dumps({"dialect": dialect})}  # fmt: skip
        if pixel is not None:
            attrs["pixel_size_A"] = pixel
        built = _part(tmp_path / f"built{i}.nxs", attrs, nexus.add_data)
        copied = _part(tmp_path / f"copied{i}.nxs", attrs, templates.add)
        assert copied == built
    assert len(templates._files) == 3  # one per kind, reused by the second part


@pytest.mark.timeout(60)
def test_new_parts_copy_their_groups_laid_out_once_per_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five parts (three acquisitions, one rolled twice at its size bound) of raw, denoised and llr:
    ``nexus.add_data`` runs once per kind and pixel size, not once per group, and every part is whole and
    its own."""
    monkeypatch.setattr(rec_file, "GROUPS", GroupTemplates(WRITE_LIBVER), raising=False)
    built: list[str] = []
    real = nexus.add_data

    def counted(f: h5py.File, kind: str, *args: Any) -> h5py.Group:
        built.append(kind)
        return real(f, kind, *args)

    monkeypatch.setattr(nexus, "add_data", counted)
    shape = (24, 40)
    rng = np.random.default_rng(0)
    rec = Recorder(
        RecordSettings(directory=tmp_path, min_free_bytes=0), Metrics(), sampling={"pixel_size_A": 0.06}
    )
    rolled = Recorder(RecordSettings(directory=tmp_path, min_free_bytes=0, max_file_bytes=1), Metrics())
    for r, acqs in ((rec, ("a", "b", "c")), (rolled, ("r",))):
        for acq in acqs:
            for seq in range(2 if r is rec else 3):
                ts = 1.0e9 + 100 * ord(acq) + 0.025 * seq
                raw = rng.poisson(0.45, shape).astype(np.uint16)
                r.write(RecordItem("raw", acq, seq, ts, raw, rx=seq))
                r.write(RecordItem("denoised", acq, seq, ts, raw.astype(np.float32), rx=seq))
                r.write(RecordItem("llr", acq, seq, ts, np.full(shape, seq, np.float32), rx=seq))
        r.close_all()
    parts = [p for acq in "abcr" for p in recording_parts(tmp_path / f"{acq}.nxs")]
    assert [p.name for p in parts] == ["a.nxs", "b.nxs", "c.nxs", "r.nxs", "r_0001.nxs", "r_0002.nxs"]
    # once per kind and pixel size (the x / y axes differ); before: 18, once per group of each part
    assert sorted(built) == ["denoised", "denoised", "llr", "llr", "raw", "raw"]
    for p in parts:
        with h5py.File(p, "r") as f:
            entry = f["entry"]
            assert entry.attrs["default"] == "denoised"
            for kind, _ in KINDS:
                g = f[kind]
                n = len(g["complete"])
                assert n >= 1 and list(g["complete"][:]) == [1] * n and g["frames"].shape == (n, *shape)
                assert g["time"].attrs["start"] == entry["start_time"][()].decode()  # the part's own
                assert f.get(kind, getlink=True).path == f"/entry/{kind}"
            assert f["raw/x"].attrs["units"] == ("angstrom" if p.stem in "abc" else "pixel")
    assert sum(1 for _ in iter_recorded(tmp_path / "r.nxs", "llr")) == 3
