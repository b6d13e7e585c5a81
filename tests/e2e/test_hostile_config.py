"""Settings files that cannot be settings: one line each, read neither forever nor all the way down.

The audit gave ``serve --config`` 100,000 nested arrays (RecursionError traceback), ``/dev/zero``
(read until MemoryError), 100 MB of comments and non-UTF-8 bytes. Each check runs in a memory-capped
child (hostile_files.py): before the fix ``/dev/zero`` would have taken every byte of memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hostile_files import one_error_line, run_capped, run_snippet

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_hostile_settings_files_are_refused_in_one_line(tmp_path: Path) -> None:
    files = {
        "deep_array": ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
        "deep_inline": ("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n", "nested too deeply"),
        "huge": ("# " + "x" * 2_000_000 + "\n", "more than a settings file's"),
        "not_utf8": (b'[record]\ndirectory = "rec\xff\xfe"\n', "not UTF-8"),
        "dev_zero": (None, "not a regular file"),
        "fifo": (None, "not a regular file"),
    }
    paths = {}
    for name, (text, _) in files.items():
        p = tmp_path / f"{name}.toml"
        if name == "dev_zero":
            p.symlink_to("/dev/zero")
        elif name == "fifo":
            os.mkfifo(p)  # opened for reading, it would block until a writer came
        elif isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        paths[name] = str(p)
    code = f"""
import json
from pathlib import Path
from sbd_stream.config import load_settings
out = {{}}
for name, path in {json.dumps(paths)}.items():
    try:
        load_settings(Path(path))
        out[name] = ["accepted", ""]
    except BaseException as e:
        out[name] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""
    got = run_snippet(code, timeout=120)
    for name, (_, words) in files.items():
        kind, msg = got[name]
        assert kind == "ValueError" and words in msg and "\n" not in msg and paths[name] in msg, (
            name,
            got[name],
        )


@pytest.mark.timeout(300)
def test_a_byte_order_mark_is_no_error_and_dev_zero_is_one_line(tmp_path: Path) -> None:
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf[metrics]\nport = 0\n")
    got = run_snippet(
        f"from pathlib import Path; import json; from sbd_stream.config import load_settings; "
        f"print(json.dumps(load_settings(Path({str(bom)!r})).metrics.port))"
    )
    assert got == 0
    zero = tmp_path / "zero.toml"
    zero.symlink_to("/dev/zero")
    line = one_error_line(
        run_capped(["-m", "sbd_stream", "serve", "--config", str(zero), "--no-record"], 120)
    )
    assert "not a regular file" in line and str(zero) in line
