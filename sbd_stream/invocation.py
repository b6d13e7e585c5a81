"""The command line that made a results file, quoted so that it pastes back into a shell.

Why: results files (and the README tables rendered from them) open with the command that measured
them. Joined with plain spaces, an argument that holds spaces (an engine label such as
``'SBD, fast (live on a CPU)=engines/x'``) comes back as several arguments, and the pasted command
fails or measures something else.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path


def invocation(program: str | None = None, argv: Sequence[str] | None = None) -> str:
    """``program`` (default: this process's script name) followed by ``argv`` (default: this process's
    arguments), each quoted for a POSIX shell."""
    if program is None:
        program = Path(sys.argv[0]).name if sys.argv else ""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([program, *args])
