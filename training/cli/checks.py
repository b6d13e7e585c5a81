"""Checks of a command's inputs before it starts work: the files and engines it names exist and open.

Why up front: a missing engine used to surface after minutes of classical baselines (``evaluate``), a
truncated data file as an h5py error without its name, and a failed ``train`` left an empty run folder.
Each check ends the command with one line naming the option (``training.cli.errors``)."""

from __future__ import annotations

import re
from pathlib import Path

from sbd_stream.cli.app import fail

DEVICE = re.compile(r"^(cpu|cuda(:[0-9]+)?|mps)$")


def need_dataset(path: Path, flag: str) -> None:
    """``path`` is a simulated HDF5 set this command can open (not missing, truncated or foreign)."""
    from training.sim.dataset import SimulatedDataset

    if not path.exists():
        fail(f"{flag} {path}: no such file")
    if path.is_dir():
        fail(f"{flag} {path}: a folder, not an HDF5 file")
    try:
        with SimulatedDataset(path):
            pass
    except OSError as e:
        why = " ".join(str(e).split())
        fail(f"{flag} {path}: not a readable HDF5 file ({why}); a truncated copy? copy or simulate it again")
    except ValueError as e:
        fail(f"{flag}: {e}" if str(path) in str(e) else f"{flag} {path}: {e}")


def need_engine(engine: str | Path, flag: str, files: tuple[str, ...] = (), label: str | None = None) -> Path:
    """The engine directory of ``engine`` (a path or a name under the engine root), with a valid card and
    every file in ``files`` and in the card's checksums present."""
    from sbd_stream.engines.card import ArtefactError, load_card, resolve_engine_dir

    named = f"{flag} {label}={engine}" if label else f"{flag} {engine}"
    try:
        engine_dir = resolve_engine_dir(engine)
        card = load_card(engine_dir)
    except ArtefactError as e:
        fail(f"{named}: {e}")
    missing = [f for f in (*files, *card.checksums) if not (engine_dir / f).is_file()]
    if missing:
        fail(f"{named}: {engine_dir} lacks {', '.join(sorted(set(missing)))} (a partial copy?)")
    return engine_dir


def need_device(device: str | None, flag: str = "--device") -> None:
    """``device`` is a torch device this machine has. Why: ``--device cuda`` on a CPU-only machine (or
    ``cuda:7`` with one GPU) got past the pattern and ended in torch's AssertionError traceback, status 1."""
    if device is None:
        return
    if not DEVICE.match(device):
        fail(f"{flag}: cpu, cuda, cuda:N or mps (got {device!r})")
    import torch

    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= n:
            have = f"{n} CUDA device(s) (cuda:0 to cuda:{n - 1})" if n else "no CUDA GPU visible to torch"
            fail(f"{flag} {device}: this machine has {have}; use --device cpu or another device")
    elif device == "mps" and not torch.backends.mps.is_available():
        fail(f"{flag} mps: no Apple GPU (MPS) available to torch here; use --device cpu")


def need_engines(engines: dict[str, Path], flag: str = "--engine") -> None:
    """Every engine of a table, before any row runs (a missing one used to fail after the baselines)."""
    for label, engine_dir in engines.items():
        need_engine(engine_dir, flag, label=label)


def need_test_split(path: Path, flag: str = "--test") -> None:
    """``path`` opens and holds the test split at the detector's sampling (not a training set)."""
    from training.evaluate.detector import check_test_file
    from training.sim.dataset import SimulatedDataset

    need_dataset(path, flag)
    with SimulatedDataset(path) as ds:
        try:
            check_test_file(ds)
        except ValueError as e:
            fail(f"{flag}: {e}")
