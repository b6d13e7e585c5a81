"""Reading an engine's files safely: regular files only, the verified bytes, plain tensors only.

Why a module of its own: every load used to check a path, hash it, then open it again by name, so the
bytes run were not necessarily the bytes hashed, a FIFO named ``card.json`` or ``model.onnx`` hung the
reader, and a refused pickle surfaced as torch's advice to set ``weights_only=False`` -- the wrong
advice for an untrusted file. Here a file is opened once, refused unless it is a regular file, read,
hashed and handed on as bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import re
import stat
import warnings
from pathlib import Path
from typing import IO, Any

from sbd_stream.engines.errors import ArtefactError, IntegrityError


def open_regular(path: Path) -> IO[bytes]:
    """``path`` opened for reading, refused (``ArtefactError``) unless it is a regular file.

    Opened with ``O_NONBLOCK`` so a FIFO does not block the open itself, then checked with ``fstat`` on
    the open descriptor: no window in which the name can be swapped after the check."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as e:
        raise ArtefactError(f"{path} not found") from e
    except OSError as e:
        raise ArtefactError(f"{path}: cannot open it ({e.strerror or e})") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtefactError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path) -> bytes:
    """All bytes of the regular file ``path`` (``ArtefactError`` for anything else or a read error)."""
    with open_regular(path) as f:
        try:
            return f.read()
        except OSError as e:
            raise ArtefactError(f"{path}: cannot read it ({e.strerror or e})") from e


def sha256_file(path: Path) -> str:
    """SHA-256 of a regular file, streamed (engine files can be large)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_verified(engine_dir: Path, checksums: dict[str, str], filename: str, name: str) -> tuple[bytes, str]:
    """The bytes of ``engine_dir/filename`` and their SHA-256, once they match the card's checksum.

    ``name``: the engine's, for the message when the card lists no checksum for the file. The caller
    runs these bytes, never the file by name again, so what is run is what was verified."""
    path = engine_dir / filename
    expected = checksums.get(filename)
    if expected is None:
        if not path.is_file():
            raise ArtefactError(f"{path} not found")
        raise ArtefactError(f"card of {name} has no checksum for {filename}; refusing to load it")
    data = read_regular(path)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IntegrityError(mismatch(path, expected, actual))
    return data, actual


def mismatch(path: Path, expected: str, actual: str) -> str:
    return f"checksum mismatch for {path}: card says {expected[:12]}..., file is {actual[:12]}..."


def load_tensors(data: bytes | Path, label: str | Path, map_location: Any = "cpu") -> Any:
    """A plain tensor file (``torch.save`` of tensors, dicts, lists, numbers), never unpickling objects.

    ``data``: the file's bytes (already verified) or its path. Errors are one ``ArtefactError`` line in
    the product's words, naming ``label``: torch's own text for a refused pickle spans several lines and
    advises ``weights_only=False``, which would run whatever the file holds."""
    import torch

    raw = data if isinstance(data, bytes) else read_regular(Path(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of a raw pickle
            return torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ArtefactError(f"{label}: not a plain tensor file ({_refusal(str(e), raw)})") from e
    except Exception as e:  # a truncated zip, a file that is no torch archive at all
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ArtefactError(f"{label}: not a readable tensor file ({first})") from e


OBJECT_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}
"""Pickle opcodes that import or build objects: what ``weights_only`` refuses to run."""


def _refusal(text: str, raw: bytes) -> str:
    """Why torch's weights-only loader refused a file, without its advice to load it unsafely.

    torch names the forbidden global for a ``torch.save`` archive; a bare pickle it rejects at its
    first unknown opcode, so that one is read here (``pickletools`` lists opcodes, running nothing)."""
    if "GLOBAL" in text or "global" in text or _has_objects(raw):
        return "it holds pickled objects, which are never loaded"
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    why = found.group(1).strip() if found else "not a torch tensor archive"
    return f"{why}; pickled objects are never loaded"


def _has_objects(raw: bytes) -> bool:
    try:
        return any(op.name in OBJECT_OPCODES for op, _, _ in pickletools.genops(raw))
    except Exception:  # not a pickle at all (garbage, a zip, a truncated stream)
        return False
