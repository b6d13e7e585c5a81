"""``write_engine`` replaces an engine's files, not its folder: the folder (inode, owner, group) stays,
a process whose current folder it is can go on using it, and a write killed midway is cleaned up.

Found (session 34 review): the first all-or-nothing ``write_engine`` built a sibling folder and swapped
it in by renames. Root rewriting a service user's engine folder left it root's (and a group-shared
folder the writer's group); ``--engine-dir .`` (the current folder) left the process in a deleted folder,
so the test metrics ``set_metrics`` writes next failed with "card.json not found"; and a writer killed
mid-write left a ``.NAME.writing-*`` folder (a whole model) beside the engine for good.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sbd_stream.compute.model import UNet
from sbd_stream.engines.card import EngineCard, load_card, load_torch_model, write_engine
from training.train.export import check_engine_dir, set_metrics


def _card() -> EngineCard:
    return EngineCard(name="eng", scales=1, channels=4)


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "eng"
    write_engine(path, UNet(scales=1, channels=4), _card())
    (path / "notes.txt").write_text("kept\n")
    return path


def test_a_rewrite_keeps_the_folder_itself_and_its_owner(engine: Path) -> None:
    if os.geteuid() == 0:  # root can hand the folder to a service user, as an admin's rewrite would meet it
        os.chown(engine, 1234, 2345)
    before = engine.stat()
    torch.manual_seed(1)
    card = write_engine(engine, UNet(scales=1, channels=4), _card())
    after = engine.stat()
    assert (after.st_ino, after.st_uid, after.st_gid) == (before.st_ino, before.st_uid, before.st_gid)
    assert load_card(engine).checksums == card.checksums
    assert sorted(p.name for p in engine.iterdir()) == ["card.json", "model.onnx", "model.pt", "notes.txt"]
    assert sorted(p.name for p in engine.parent.iterdir()) == ["eng"]


def test_a_rewrite_keeps_the_model_files_modes_and_owners(engine: Path) -> None:
    """A service user's read access set on the files stays (they were rewritten in place before)."""
    owner = (1234, 2345) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    for name in ("model.pt", "model.onnx", "card.json"):
        os.chmod(engine / name, 0o640)
        os.chown(engine / name, *owner)
    old_umask = os.umask(0o077)  # a writer whose new files only it may read
    try:
        torch.manual_seed(1)
        write_engine(engine, UNet(scales=1, channels=4), _card())
    finally:
        os.umask(old_umask)
    for name in ("model.pt", "model.onnx", "card.json"):
        st = (engine / name).stat()
        assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == (oct(0o640), *owner), name


def test_writing_into_the_current_folder_leaves_it_usable(
    engine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(engine)
    torch.manual_seed(1)
    write_engine(Path("."), UNet(scales=1, channels=4), _card())
    assert Path(os.getcwd()) == engine  # the process is not left in a deleted folder
    set_metrics(Path("."), {"split": "test", "psnr": 1.0})  # what export does right after the write
    assert load_card(engine).metrics == {"split": "test", "psnr": 1.0}
    load_torch_model(engine)


_KILLED_WRITER = """
import os, signal, sys, torch
from pathlib import Path
from sbd_stream.compute.model import UNet
from sbd_stream.engines.card import EngineCard, write_engine

class Killed(UNet):
    def forward(self, x):  # the ONNX export runs it: the process dies mid-write, as under SIGKILL / OOM
        os.kill(os.getpid(), signal.SIGKILL)

write_engine(Path(sys.argv[1]), Killed(scales=1, channels=4), EngineCard(name="eng", scales=1, channels=4))
"""


def test_a_killed_write_leaves_the_engine_and_its_leftovers_are_removed_by_the_next(engine: Path) -> None:
    card_before = (engine / "card.json").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(engine)], capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (engine / "card.json").read_bytes() == card_before
    load_torch_model(engine)  # the previous engine is whole
    # the folder's check does not count the dead writer's staging folder as the user's file
    line = check_engine_dir(engine, "other-name", overwrite=True)
    assert line is not None and ".writing-" not in line, line
    torch.manual_seed(1)
    write_engine(engine, UNet(scales=1, channels=4), _card())
    assert sorted(p.name for p in engine.iterdir()) == ["card.json", "model.onnx", "model.pt", "notes.txt"]
    assert sorted(p.name for p in engine.parent.iterdir()) == ["eng"]


_WRITER = """
import sys, torch
from pathlib import Path
from sbd_stream.compute.model import UNet
from sbd_stream.engines.card import EngineCard, write_engine

torch.manual_seed(2)
write_engine(Path(sys.argv[1]), UNet(scales=1, channels=4), EngineCard(name="eng", scales=1, channels=4))
"""


def test_a_second_writer_waits_for_the_first_instead_of_mixing_its_files_in(engine: Path) -> None:
    """The test holds the folder's lock as a writer in the middle of its renames would: the other
    writer stages its files, then waits, and only then puts all of them in place."""
    import fcntl
    import time

    before = {p.name: p.read_bytes() for p in engine.iterdir()}
    fd = os.open(engine, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(engine)], stderr=subprocess.PIPE)
        while proc.poll() is None and not list(engine.glob(".writing-*/card.json")):
            time.sleep(0.05)  # until its files are staged (or it ended: the unlocked write of old)
        assert {p.name: p.read_bytes() for p in engine.iterdir() if p.is_file()} == before
    finally:
        os.close(fd)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert (engine / "card.json").read_bytes() != before["card.json"]
    load_torch_model(engine)
    assert sorted(p.name for p in engine.iterdir()) == ["card.json", "model.onnx", "model.pt", "notes.txt"]
