"""An offline job's output as the user named it: its lock taken, and the failures that name it.

Why: the first file a job creates is ``OUT.lock``, and the system's words for a failure there named
that internal file (``[Errno 13] Permission denied: 'q/ro/x.h5.lock'``, ``[Errno 36] File name too
long: '….h5.lock'``), never the path the user typed. A name that fits the file system but not with
the job's own suffixes failed later, half-way (the Dask path's ``OUT.partial.json.tmp``). And an
allocation that failed (``ulimit -v``, a cgroup) came out of a Dask worker as a rich traceback. Each
is now one line that names ``OUT`` and says what to do.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sbd_stream.formats.output_lock import output_lock
from sbd_stream.sources.stacks import StackError

__all__ = ["cannot_write", "out_of_memory", "output_held"]


def cannot_write(output: Path, e: OSError) -> str:
    """One line for a failure to create a file beside ``output`` (its lock, its partial)."""
    why = e.strerror or str(e)
    if e.errno == errno.ENAMETOOLONG:
        return f"{output}: a name in this path is too long for its file system ({why}): shorten it"
    return f"{output}: cannot write in {output.parent} ({why}); nothing was written: write it elsewhere"


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):  # a folder that is not there is said by the lock's own error
        return 255


def _check_name(output: Path, beside: str) -> None:
    """Refuse a name the file system takes, but not with the job's longest file ``beside`` it."""
    size, most, limit = len(os.fsencode(output.name)), len(os.fsencode(beside)), _name_max(output.parent)
    if most <= limit:
        return
    if size > limit:
        raise StackError(
            f"{output}: its name is {size} bytes; this file system takes at most {limit}: shorten it"
        )
    raise StackError(
        f"{output}: its name is {size} bytes, and the job writes {beside} beside it, over this file "
        f"system's {limit}: use a name of at most {limit - (most - size)} bytes"
    )


@contextmanager
def output_held(output: Path, beside: str) -> Iterator[Path | None]:
    """``output_lock(output)`` for the ``with`` block, once the name leaves room for ``beside`` (the
    longest name the job writes next to it); a lock that cannot be created is one ``StackError``
    naming ``output`` and its folder (``OutputBusy`` stays as it is)."""
    _check_name(output, beside)
    with ExitStack() as stack:
        try:
            held = stack.enter_context(output_lock(output))
        except OSError as e:
            raise StackError(cannot_write(output, e)) from None
        yield held


def _limit() -> str:
    """The memory limit this process runs under, in words: ``ulimit -v``, its cgroup's, or the machine's."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        return f"the address-space limit (ulimit -v) of {soft / 2**20:.0f} MiB"
    try:  # cgroup v2: "0::/path"
        line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
        cap = Path("/sys/fs/cgroup", line[3:].lstrip("/"), "memory.max").read_text().strip()
    except (OSError, StopIteration):
        cap = "max"
    if cap.isdigit():
        return f"its cgroup's memory limit of {int(cap) / 2**20:.0f} MiB"
    return "this machine's memory"


def out_of_memory(output: Path, e: MemoryError, resumable: bool) -> str:
    """One line for a failed allocation: what failed, under which limit, what to do, and what is kept.

    ``resumable``: the Dask path, whose flushed chunks stay in ``OUT.partial`` for the same command."""
    what = " ".join(str(e).split()) or "an allocation failed"
    smaller = "a smaller --chunk-frames or a lower --batch" if resumable else "a lower --batch"
    partial = output.with_name(output.name + ".partial")
    if not resumable:
        kept = "nothing was kept (--scheduler none cannot resume): run the command again"
    elif partial.exists():
        kept = f"the frames done are kept in {partial}: run the same command to resume"
    else:
        kept = "nothing was written: run the command again"
    return (
        f"{output}: out of memory ({what}) under {_limit()}: use {smaller}, or give the job more memory "
        f"(raise the limit); {kept}"
    )
