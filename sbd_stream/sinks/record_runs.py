"""Which recording run and segment a new part belongs to, and what it is called.

Kept apart from the recorder thread (sinks/recorder.py), which decides *when* a part opens; this
decides its name and identity, so that a reader finds every part of one run from its first file:

* ``run_uid``: a uuid4 hex made when this recorder opens an acquisition's part 0, written in every
  part of that run. Two ``serve`` runs recording one acquisition into one folder once spliced: run 2's
  first part got a timestamped name but its continuations took the free ``<acq>_0001.nxs`` names, so
  reading run 1 returned run 2's frames too. ``recording_parts`` keeps only parts of the first's run;
* continuations are named after the run's FIRST part (``<first-stem>_0001.nxs``), so a run whose first
  file got a timestamped name keeps its parts beside it (a taken name still falls back to a timestamp);
* ``segment``: 0 in the first part, +1 in a part opened for a new ``series_start`` or a producer
  restart (``seq`` numbering again), inherited on shape / dtype / size rolls. Readers that stack a
  recording order frames by (segment, seq), not by ``seq`` alone, which interleaved two series.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sbd_stream.formats.recording import safe_name
from sbd_stream.formats.recording_parts import free_path, part_number
from sbd_stream.sinks.record_item import Recent

__all__ = ["RunBook"]


@dataclass
class _Run:
    uid: str
    paths: list[Path] = field(default_factory=list)
    segment: int = 0
    new_segment: bool = False  # the next part starts a new segment (series_start or restart seen)


class RunBook:
    """Per acquisition: the run's identity, its parts so far and its current segment (bounded)."""

    def __init__(self) -> None:
        self.runs: Recent = Recent()  # acq -> _Run

    def boundary(self, acq: str) -> None:
        """A new series_start or producer restart of ``acq``: its next part opens a new segment."""
        run = self.runs.get(acq)
        if run is not None and run.paths:
            run.new_segment = True

    def next_part(self, acq: str, directory: Path, suffix: str) -> tuple[Path, dict[str, object]]:
        """The path of ``acq``'s next part in ``directory`` and the attributes naming its run, part and
        segment (the folder is the recorder's current one, which a caller may change)."""
        run = self.runs.get(acq)
        if run is None:
            run = _Run(uuid.uuid4().hex)
        if run.new_segment:
            run.segment, run.new_segment = run.segment + 1, False
        part = len(run.paths)
        stem = run.paths[0].stem if run.paths else safe_name(acq)
        after = part_number(run.paths[-1]) if part > 1 else 0  # above the previous part's own number
        path = free_path(Path(directory), stem, part, suffix, after)
        run.paths.append(path)
        self.runs[acq] = run
        return path, {"run_uid": run.uid, "part": part, "segment": run.segment}

    def undo(self, acq: str) -> None:
        """Forget the part just named: creating its file failed, so the name stays free."""
        run = self.runs.get(acq)
        if run is not None and run.paths:
            run.paths.pop()
