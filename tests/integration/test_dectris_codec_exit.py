"""A process that decoded DECTRIS frames through HDF5 exits 0, even with the codec still referenced.

Audit 26: the in-memory codec's scratch file lived on a Python ``BytesIO``; when something (here a
daemon thread's frame) kept it alive past the interpreter's finalisation, HDF5's own exit handler flushed
it through h5py's Python callback into an interpreter already gone, and the process died with SIGSEGV
(the whole test suite exited 139 after every test passed). ``formats/dectris_codec.py`` now uses
HDF5's in-memory driver and closes the file at exit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("hdf5plugin")
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCRIPT = textwrap.dedent(
    """
    import threading, time
    import numpy as np
    from sbd_stream.formats import dectris_codec as c

    a = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    blob = c.compress_framed(a, "bslz4", backend="hdf5plugin")
    out = c.decompress_framed(blob, "bslz4", 2, a.nbytes, backend="hdf5plugin")
    assert (out.view(np.uint16).reshape(64, 64) == a).all()

    def hold(codec=c._h5codec()):  # a daemon thread's frame keeps the codec past finalisation
        time.sleep(3600)

    threading.Thread(target=hold, daemon=True).start()
    c._h5 = None
    print("decoded", flush=True)
    """
)


def test_a_process_that_decoded_through_hdf5_exits_0_with_the_codec_still_held() -> None:
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=100)
        assert r.stdout.strip() == "decoded", r.stderr
        assert r.returncode == 0, f"exit status {r.returncode} after the work was done: {r.stderr[-500:]}"
