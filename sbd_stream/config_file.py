"""Reading a TOML settings file, refusing what cannot be one before and while it is read.

Kept apart from ``config.py`` (the settings' types) because this is about the file, not the
settings: ``sbd-stream serve --config`` was given ``/dev/zero`` (read until MemoryError), 100,000
nested arrays (RecursionError inside ``tomllib``), non-UTF-8 bytes; each was a traceback.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["MAX_TOML_BYTES", "read_toml"]

MAX_TOML_BYTES = 1 << 20
"""Largest settings file read: the shipped ones are ~2 kB; 100 MB of comments took a minute."""


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML settings file's tables; a file that cannot be one is a one-line ValueError.

    Checked before reading: a regular file (``--config /dev/zero`` read until MemoryError, a FIFO
    would block) of at most ``MAX_TOML_BYTES``; and while parsing: UTF-8, and nesting that Python's
    recursion can follow (100,000 nested arrays raised RecursionError, a traceback).
    A missing or unreadable file stays an ``OSError``, as before.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file (a TOML settings file is)")
    if st.st_size > MAX_TOML_BYTES:
        raise ValueError(f"{path}: {st.st_size} bytes, more than a settings file's {MAX_TOML_BYTES} bytes")
    with open(path, "rb") as fh:
        data = fh.read(MAX_TOML_BYTES + 1)
    if len(data) > MAX_TOML_BYTES:
        raise ValueError(f"{path}: more than a settings file's {MAX_TOML_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8-sig"))  # a byte-order mark (Windows editors) is no error
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: arrays or tables nested too deeply to read") from None
    except MemoryError:
        raise ValueError(f"{path}: too large to read") from None
