"""``sbd-stream merge`` refuses an ``--input`` given twice, or its own ``--output`` as an input, in one
line, exit status 2, before it binds anything (audit h33, scale-out docs).

Before: both ran without a word. The same instance given twice was subscribed twice: every message
came twice, each frame was counted in ``sbd_merge_duplicates_total`` and its traffic doubled; the
merge's own output as an input fed it back what it sent. docs/scale-out-nodes.md: one ``--input`` per
instance.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from sbd_stream.merge.service import endpoint_conflicts

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["-i", "tcp://127.0.0.1:41956", "-i", "tcp://127.0.0.1:41956"], "is given twice"),
        (["-i", "tcp://127.0.0.1:41957", "-o", "tcp://127.0.0.1:41957"], "is this merge's own --output"),
        (["-i", "tcp://localhost:41958", "-o", "tcp://0.0.0.0:41958"], "is this merge's own --output"),
    ],
    ids=["twice", "own-output", "own-output-any-host"],
)
def test_merge_refuses_a_repeated_input_or_its_own_output(args: list[str], said: str) -> None:
    cmd = [sys.executable, "-m", "sbd_stream", "merge", *args]
    try:  # before: it merged (forever) rather than refusing
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail(f"merge {args} ran instead of refusing")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, r.stderr
    assert len(errors) == 1 and said in errors[0], r.stderr
    assert "Traceback" not in r.stderr


def test_distinct_instances_are_not_refused() -> None:
    assert endpoint_conflicts(["tcp://node1:5556", "tcp://node2:5556"], "tcp://0.0.0.0:5556") is None
    loopback = ["tcp://127.0.0.1:5556", "tcp://127.0.0.1:5566"]
    assert endpoint_conflicts(loopback, "tcp://127.0.0.1:5570") is None
