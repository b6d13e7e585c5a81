"""The service's own ``meta`` keys have one home (``frames.py``), and every input renames a producer's key
of that name ``meta.<key>``: DECTRIS dialects too, not only wire v1 (audit h30 follow-up).

Where a DECTRIS detector's own fields reach ``meta``: a stream v1 frame's meta is built from fixed fields
(series, frame, encoding, the times, hash) and its configuration travels nested (``meta.config``); a
stream v2 frame's from fixed fields too (its ``user_data`` is not read), but a v2 ``start`` message's
top-level scalar fields are copied into the series_start's meta as they are: a field named
``replay_of`` came out as the service's word that the series was a replay of that file. ``Emitter.frame``
now renames for every dialect, so a dialect added later cannot forge ``blank`` either.
"""

from __future__ import annotations

import cbor2
import numpy as np
import pytest

from sbd_stream import frames as frames_module
from sbd_stream.config import DectrisInput
from sbd_stream.frames import RESERVED_META, SERVICE_META_KEYS, Frame
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import DEFAULT_MAX_PAYLOAD, FrameHeader, SeriesMessage
from sbd_stream.sinks import publisher
from sbd_stream.sources.dectris.acquisition import DectrisDialect
from sbd_stream.sources.dectris.messages import SELF_DESCRIBED_CBOR
from sbd_stream.sources.dectris.sim import v2_end, v2_image, v2_start
from sbd_stream.sources.dialect import Emitter

pytestmark = pytest.mark.integration


def test_the_key_list_has_one_home_below_sources_and_sinks() -> None:
    assert publisher.SERVICE_META_KEYS is frames_module.SERVICE_META_KEYS
    assert SERVICE_META_KEYS | {"meta_dropped"} == RESERVED_META and "blank" in SERVICE_META_KEYS


def test_a_v2_start_field_named_like_a_service_key_reaches_the_series_start_renamed() -> None:
    got: list[Frame] = []
    series: list[SeriesMessage] = []
    inp = DectrisInput.model_validate({"dialect": "dectris-stream-v2", "series_timeout_s": 5.0})
    ing = DectrisDialect(inp, DEFAULT_MAX_PAYLOAD, Emitter(Metrics(), got.append, series.append))
    start = cbor2.loads(v2_start(7, "u7", (24, 40), np.uint16, 1)[len(SELF_DESCRIBED_CBOR) :])
    own = {"replay_of": "/not/a/replay.nxs", "blank": True, "meta.blank": "taken", "detector": "EIGER2"}
    ing.handle([SELF_DESCRIBED_CBOR + cbor2.dumps({**start, **own})])
    ing.handle([v2_image(np.ones((24, 40), np.uint16), 7, "u7", 0)])
    ing.handle([v2_end(7, "u7")])
    assert [s.topic for s in series] == [b"series_start", b"series_end"] and len(got) == 1
    meta = series[0].header.meta
    assert RESERVED_META.isdisjoint(meta), meta  # no "replay_of", no "blank" said by the detector
    assert meta["meta.replay_of"] == "/not/a/replay.nxs" and meta["meta.meta.blank"] is True
    assert meta["meta.blank"] == "taken" and meta["detector"] == "EIGER2" and meta["count_time"] == 0.025
    assert RESERVED_META.isdisjoint(got[0].header.meta)


def test_the_emitter_renames_a_frames_service_keys_for_every_dialect() -> None:
    got: list[Frame] = []
    m = Metrics()
    emit = Emitter(m, got.append)
    meta = {"blank": True, "hot_pixels": 5, "n_columns": 999, "series": 3}
    header = FrameHeader("a", 0, 1.0, (4, 4), "uint16", meta=meta)
    emit.frame(Frame(header, np.zeros((4, 4), np.uint16)))
    assert len(got) == 1 and m.value("sbd_frames_received_total") == 1
    out = got[0].header.meta
    assert out == {"meta.blank": True, "meta.hot_pixels": 5, "meta.n_columns": 999, "series": 3}
    assert header.meta["blank"] is True  # the producer's header is not changed in place
