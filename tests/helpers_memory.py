"""Memory a stack read allocates, measured with ``tracemalloc`` in a process of its own.

Why not in the test process: a zarr read refused in one chunk raises while zarr's thread pool still
decodes the others, and ``tracemalloc.stop()`` while another thread allocates crashes CPython 3.11
(gh-128679, fixed in 3.12.9 / 3.13.2 only): a test run here ended in a segfault inside a gzip decode
a few tests after ``test_bomb_in_a_shard_read_whole_is_refused`` (session 35). The child never stops
tracing: it prints its answer and leaves with ``os._exit``, before any finalisation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_CODE = """
import json, os, sys, tracemalloc
from pathlib import Path
from sbd_stream.sources.stacks import StackError, open_stack
store, start, stop, open_inside = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
stack = None if open_inside else open_stack(store)
tracemalloc.start()
error = ""
try:
    (stack or open_stack(store)).frames[start:stop]
except StackError as e:
    error = str(e)
print(json.dumps({"error": error, "peak": tracemalloc.get_traced_memory()[1]}), flush=True)
os._exit(0)
"""

ROOT = Path(__file__).resolve().parents[1]


def peak_reading(store: Path, start: int, stop: int, open_inside: bool = False) -> tuple[str, int]:
    """``open_stack(store).frames[start:stop]`` in a fresh process: (its ``StackError``'s message, or ""
    when it read, and the peak bytes traced while reading; with ``open_inside`` the open is traced too)."""
    run = subprocess.run(
        [sys.executable, "-c", _CODE, str(store), str(start), str(stop), "1" if open_inside else "0"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    return str(out["error"]), int(out["peak"])
