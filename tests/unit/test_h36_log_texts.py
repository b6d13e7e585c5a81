"""Three texts an engineer reads, as they were written (audit h36-live2).

- A DECTRIS part that is not JSON said ``bad_json: part 0: Expecting property name enclosed in double
  quotes: line 1 co.``: the parser's message was cut at 60 characters, mid-word.
- A refusal whose reason text ends in a full stop (LZ4's "... destination buffer.") was logged with two:
  ``buffer.. Counted in ...``.
- ``info --service`` gave a worker's ``threads`` as the string ``"1"`` where ``serve``'s summary has 1.
"""

from __future__ import annotations

import logging

import pytest

from sbd_stream.metrics import Metrics
from sbd_stream.protocol import ProtocolError
from sbd_stream.service.worker_load import worker_samples
from sbd_stream.sources.dectris.messages import _json
from sbd_stream.sources.dialect import Emitter


def test_a_part_that_is_not_json_is_named_whole() -> None:
    with pytest.raises(ProtocolError) as e:
        _json(b'{"htype": "dheader-1.0", ' + b"x" * 200 + b"}", "part 0")
    assert e.value.reason == "bad_json"
    assert str(e.value).endswith(
        "part 0: Expecting property name enclosed in double quotes at line 1 column 26"
    )


def test_a_reason_ending_in_a_full_stop_is_logged_with_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sbd_stream.sources.dialect")
    Emitter(Metrics(), lambda frame: None).reject("decompress_failed", "LZ4: corrupt input.")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "LZ4: corrupt input. Counted in" in line and ".." not in line, line


def test_a_workers_threads_is_a_number_as_in_serves_summary() -> None:
    text = (
        "# TYPE sbd_worker_info gauge\n"
        'sbd_worker_info{worker="0",device="cpu",threads="1",engine="e"} 1.0\n'
        'sbd_worker_info{worker="1",device="cpu",threads="default",engine="e"} 1.0\n'
    )
    rows = worker_samples(text)
    assert rows["0"]["threads"] == 1 and rows["1"]["threads"] == "default"
    assert rows["0"]["device"] == "cpu" and rows["0"]["engine"] == "e"
