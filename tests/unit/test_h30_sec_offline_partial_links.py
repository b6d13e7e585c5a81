"""An offline job's partial output and sidecar are never written through a link left at their names.

Audit h30 (security): ``OUT.partial`` was created with ``h5py.File(..., "w")``, which follows a
symbolic link and truncates its target, and the finished job then renamed the link itself over the
output; the sidecar's ``OUT.partial.json.tmp`` was opened with ``open(..., "w")`` the same way.
Another user of a shared output folder could so have ``denoise --scheduler`` wipe any file its user
may write. Real HDF5 and JSON files in a real folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from sbd_stream.service.offline_partial import open_partial, write_state
from sbd_stream.sources.stacks import let_go_h5

PRECIOUS = "precious: not an HDF5 file\n"


def _fp() -> dict:
    return {"shape": [2, 8, 8], "chunk_frames": 1, "input": "x.npy"}


def test_a_link_at_the_partial_name_is_removed_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    out = tmp_path / "shared" / "out.h5"
    out.parent.mkdir()
    partial, sidecar = out.with_name("out.h5.partial"), out.with_name("out.h5.partial.json")
    partial.symlink_to(victim)

    f, start = open_partial(partial, sidecar, _fp(), {"engine": "test"}, resume=True)
    let_go_h5(f)

    assert start == 0
    assert victim.read_text() == PRECIOUS  # before: truncated, an HDF5 file
    assert partial.is_file() and not partial.is_symlink()
    assert json.loads(sidecar.read_text())["frames_done"] == 0


def test_a_link_at_the_sidecar_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text(PRECIOUS)
    sidecar = tmp_path / "out.h5.partial.json"
    sidecar.with_name(sidecar.name + ".tmp").symlink_to(victim)

    write_state(sidecar, {"fingerprint": _fp(), "frames_done": 1})

    assert victim.read_text() == PRECIOUS  # before: the sidecar's JSON
    assert not sidecar.is_symlink()
    assert json.loads(sidecar.read_text())["frames_done"] == 1
