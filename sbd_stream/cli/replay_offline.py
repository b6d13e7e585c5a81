"""`sbd-stream replay`'s checks before anything loads, and its ``--offline`` path.

Apart from cli/live.py (the live commands) so that the offline branch, which shares only the recording
with a live replay, says which live options it does not take instead of dropping them: ``replay
--offline --limit 5`` denoised all 60 frames, exit 0 (audit h29 B).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from sbd_stream.cli.app import fail
from sbd_stream.cli.options import Flags, detector_section

if TYPE_CHECKING:  # the settings import torch: not at the CLI's import (Ctrl-C there, --help's speed)
    from sbd_stream.config import ServiceSettings

__all__ = ["check_replay_file", "found", "offline_conflicts", "replay_offline"]


def check_replay_file(file: Path) -> None:
    """End the command in one line when ``file`` is missing or no regular file: a FIFO blocked for good in
    HDF5's open, a folder printed HDF5's multi-line dump (audit h29 C)."""
    from sbd_stream.sources.stacks import not_a_file

    if not found(file):
        fail(f"{file} not found")
    if problem := not_a_file(file):
        fail(f"{file}: {problem}")


def offline_conflicts(
    offline: bool, live_given: dict[str, Any], out: Path | None, dask_workers: int | None
) -> str | None:
    """Why the options cannot go together (None: they can). ``live_given``: each live replay option by
    name, None or False where not given; with ``--offline`` they have no meaning, and ``--out`` /
    ``--dask-workers`` none without it. A number given as 0 is given: ``v not in (None, False)`` took
    ``--evidence-frames 0`` (0 == False) for absent and dropped it without a word (mutation round h29c)."""
    if offline:
        named = [k for k, v in live_given.items() if v is not None and v is not False]
        if named:
            one = len(named) == 1
            return (
                f"{', '.join(named)} {'does' if one else 'do'} not apply to --offline (it denoises every "
                "complete raw frame into --out, docs/scale-out-offline.md); drop "
                f"{'it' if one else 'them'}, or replay without --offline"
            )
        return None
    named = [k for k, v in (("--out", out), ("--dask-workers", dask_workers)) if v is not None]
    if named:
        return f"{', '.join(named)} applies to --offline only; add --offline, or drop {', '.join(named)}"
    return None


def found(path: Path, flag: str = "") -> bool:
    """Whether ``path`` exists; an error other than "no such file" ends the command in one line naming
    it. Why: ``Path.exists()`` re-raises those (a name over the 255-byte limit: a traceback)."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        fail(f"{flag}{path}: {e.strerror or e}")
    return True


def replay_offline(
    file: Path,
    out: Path | None,
    s: ServiceSettings,
    sampling: Flags,
    scheduler: str,
    workers: int | None,
    compression: str | None = None,
) -> None:
    """`replay --offline`: the recording's complete raw frames through the offline Dask path.

    ``compression``: the output's, as ``denoise --compression`` (None: bitshuffle-lz4), checked first."""
    from sbd_stream.cli.files import compression_problem
    from sbd_stream.formats.output_lock import OutputBusy
    from sbd_stream.service.offline_dask import denoise
    from sbd_stream.sources.stacks import StackError

    if (bad := compression_problem(compression)) is not None:
        fail(bad)
    if out is None:
        fail("--offline needs --out OUT.h5")
    if found(out, "--out "):
        fail(f"{out} exists; remove it or choose another --out")
    try:
        summary = denoise(
            file, out, None, s.denoise, detector_section(sampling), recording=True, scheduler=scheduler,
            workers=workers, progress=True, overwrite=False, compression=compression,
        )  # fmt: skip
    except (StackError, ValueError, OSError, OutputBusy) as e:
        fail(str(e))
    typer.echo(json.dumps(summary, indent=2))
