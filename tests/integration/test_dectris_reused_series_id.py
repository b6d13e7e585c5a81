"""A DECTRIS detector restarted between series may number the next one with the same id; when that
series' start message is lost (sent before we reconnected), its frames were all "stale" and dropped: a
whole series never denoised nor recorded. Now such a frame, with nothing open, starts the id again when
it is frame 0 or comes more than ``REUSED_AFTER_S`` after the series ended (joined, as a series whose
start we missed); a late frame right behind the end stays stale (test_dectris_ingest.py)."""

from __future__ import annotations

from test_dectris_ingest import frames, make, val

from sbd_stream.sources.dectris import acquisition
from sbd_stream.sources.dectris.sim import v1_end, v1_frame, v1_header


def test_frame_0_of_an_ended_series_id_starts_it_again() -> None:
    ing, sink = make()
    a, b = frames(3, 1), frames(3, 2)
    ing.handle(v1_header(1, None, "none"))
    for i, f in enumerate(a):
        ing.handle(v1_frame(f, 1, i))
    ing.handle(v1_end(1))
    for i, f in enumerate(b):  # the restarted detector's series 1, its header lost
        ing.handle(v1_frame(f, 1, i))
    ing.handle(v1_end(1))
    assert [(f.header.acq, f.header.seq) for f in sink.frames] == [("dectris-1", i) for i in (0, 1, 2)] * 2
    assert [f.data.tolist() for f in sink.frames[3:]] == [f.tolist() for f in b]
    assert sink.events() == [
        ("series_start", "dectris-1", None),
        ("series_end", "dectris-1", "series_end"),
        ("series_start", "dectris-1", None),  # joined: its start was never received
        ("series_end", "dectris-1", "series_end"),
    ]
    assert sink.series[2].header.meta.get("joined") is True
    assert val(ing, "sbd_dectris_stale_messages_total") == 0
    assert val(ing, "sbd_dectris_series_joined_total") == 1


def test_a_later_frame_long_after_the_end_starts_it_again_a_late_one_right_behind_it_is_stale() -> None:
    ing, sink = make()
    a = frames(4, 3)
    ing.handle(v1_header(1, None, "none"))
    ing.handle(v1_frame(a[0], 1, 0))
    ing.handle(v1_end(1))
    ing.handle(v1_frame(a[1], 1, 1))  # right behind the end: the old series' own late frame
    assert val(ing, "sbd_dectris_stale_messages_total") == 1 and len(sink.frames) == 1
    ing.state.closed_at["dectris-1"] -= acquisition.REUSED_AFTER_S + 1  # the detector restarted since
    ing.handle(v1_frame(a[2], 1, 5))  # its frame 0 went to nobody; frame 5 starts the id again
    ing.handle(v1_frame(a[3], 1, 6))
    assert [(f.header.acq, f.header.seq) for f in sink.frames] == [("dectris-1", s) for s in (0, 5, 6)]
    assert val(ing, "sbd_dectris_stale_messages_total") == 1


def test_while_a_newer_series_is_open_an_old_ids_frame_0_is_stale() -> None:
    ing, sink = make()
    ing.handle(v1_header(1, None, "none"))
    ing.handle(v1_frame(frames(1)[0], 1, 0))
    ing.handle(v1_header(2, None, "none"))  # series 1 superseded
    ing.handle(v1_frame(frames(1, 4)[0], 1, 0))
    assert [(f.header.acq, f.header.seq) for f in sink.frames] == [("dectris-1", 0)]
    assert val(ing, "sbd_dectris_stale_messages_total") == 1
