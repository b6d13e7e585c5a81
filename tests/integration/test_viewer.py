"""Viewer without a browser: rendering, the HTTP API, and that it stays on the newest frames."""

from __future__ import annotations

import io
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import zmq
from PIL import Image

from sbd_stream.config import DetectorSettings, ViewerSettings
from sbd_stream.metrics import Metrics
from sbd_stream.protocol import TOPIC_DENOISED, TOPIC_FRAME, TOPIC_LLR, encode_frame, encode_series
from sbd_stream.sinks.viewer.metrics_poll import histogram_quantile, parse_scrape, summarize
from sbd_stream.sinks.viewer.render import bin_to, diverging_rgb, encode_png, gray8, render
from sbd_stream.sinks.viewer.server import Viewer, local_endpoint


def test_png_encoder_round_trips_gray_and_rgb() -> None:
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    c = rng.integers(0, 256, (20, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(g)))), g)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(c)))), c)
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 2), np.uint8))


def test_binning_contrast_and_diverging_map() -> None:
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(bin_to(a, 2), [[2.5, 4.5], [10.5, 12.5]])
    assert bin_to(np.zeros((3838, 3710)), 768).shape == (767, 742)  # factor 5, floor
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    g = gray8(x, 10, 90)
    assert g[:100].max() == 0 and g[-100:].min() == 255 and g[500] in (127, 128)
    llr = np.array([[-4.0, 0.0, 4.0]], np.float32)
    rgb = diverging_rgb(llr, 100)
    assert rgb[0, 0, 2] > rgb[0, 0, 0]  # negative: blue
    assert rgb[0, 2, 0] > rgb[0, 2, 2]  # positive: yellow / red
    assert rgb[0, 1].max() < 40  # zero: near black
    with pytest.raises(ValueError):
        render(x.reshape(1, -1), "raw", 50, 50)


def test_histogram_quantile_and_endpoints() -> None:
    b = [(0.1, 0.0), (0.2, 50.0), (0.4, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, b) == pytest.approx(0.2)
    assert histogram_quantile(0.75, b) == pytest.approx(0.3)
    assert histogram_quantile(0.5, [(1.0, 0.0)]) is None
    assert local_endpoint("tcp://0.0.0.0:5556") == "tcp://127.0.0.1:5556"
    assert local_endpoint("tcp://*:5556") == "tcp://127.0.0.1:5556"
    assert local_endpoint("tcp://10.0.0.5:5556") == "tcp://10.0.0.5:5556"


_SCRAPE = """\
# TYPE sbd_frames_received_total counter
sbd_frames_received_total {received}
# TYPE sbd_frames_denoised_total counter
sbd_frames_denoised_total {denoised}
# TYPE sbd_frames_skipped_total counter
sbd_frames_skipped_total {skipped}
# TYPE sbd_frames_completed_total counter
sbd_frames_completed_total {completed}
# TYPE sbd_frames_left_for_offline_total counter
sbd_frames_left_for_offline_total {left}
# TYPE sbd_complete_backlog_frames gauge
sbd_complete_backlog_frames {backlog}
# TYPE sbd_frames_malformed_total counter
sbd_frames_malformed_total{{reason="bad_magic"}} 2.0
sbd_frames_malformed_total{{reason="bad_ts"}} 1.0
# TYPE sbd_queue_depth gauge
sbd_queue_depth{{queue="denoise"}} 1.0
sbd_queue_depth{{queue="record"}} 7.0
# TYPE sbd_end_to_end_latency_seconds histogram
{e2e}
# TYPE sbd_lane_latency_seconds histogram
{lane_live}
{lane_complete}
"""


def _hist(name: str, labels: str, fast: int, slow: int) -> str:
    """Histogram series: ``fast`` events at or below 0.05 s, ``slow`` more at or below 2.5 s."""
    lab = labels + "," if labels else ""
    rows = [
        f'{name}_bucket{{{lab}le="{le}"}} {c}'
        for le, c in (("0.01", 0), ("0.05", fast), ("2.5", fast + slow))
    ]
    rows.append(f'{name}_bucket{{{lab}le="+Inf"}} {fast + slow}')
    return "\n".join(
        [*rows, f"{name}_count{{{labels}}} {fast + slow}" if labels else f"{name}_count {fast + slow}"]
    )


def _scrape_text(
    received: int,
    denoised: int,
    skipped: int,
    completed: int,
    backlog: int,
    left: int,
    live: tuple[int, int],
    complete: tuple[int, int],
) -> str:
    """A /metrics text of a two-lane service, names and labels as ``sbd_stream.metrics`` exports them;
    ``live`` / ``complete``: (fast, slow) events in that lane's latency histogram (end to end = live)."""
    lane = "sbd_lane_latency_seconds"
    return _SCRAPE.format(
        received=received,
        denoised=denoised,
        skipped=skipped,
        completed=completed,
        backlog=backlog,
        left=left,
        e2e=_hist("sbd_end_to_end_latency_seconds", "", *live),
        lane_live=_hist(lane, 'lane="live"', *live),
        lane_complete=_hist(lane, 'lane="complete"', *complete),
    )


def test_metrics_poll_names_both_lanes() -> None:
    """The page's numbers per lane, from two scrapes one second apart (pure: no service)."""
    a = parse_scrape(_scrape_text(100, 40, 60, 0, 60, 0, live=(40, 0), complete=(0, 0)), t=10.0)
    assert a.buckets["live"][1] == (0.05, 40.0) and a.buckets["complete"][-1] == (float("inf"), 0.0)
    assert a.values["sbd_frames_malformed_total"] == 3.0 and a.values["queue_record"] == 7.0
    first = summarize(a)  # one scrape: totals and whole-run latency, no rates yet
    assert "input_rate_hz" not in first and first["lanes"]["live"]["rate_hz"] is None
    assert first["lanes"]["complete"]["state"] == "catching_up"
    assert first["lanes"]["live"]["engine_latency_p50_s"] == pytest.approx(0.03)

    # one second later: 40 more in, 20 more live, 10 completed (slow: 0.05-2.5 s), 2 left for offline
    b = parse_scrape(_scrape_text(140, 70, 80, 10, 68, 2, live=(60, 0), complete=(0, 10)), t=11.0)
    s = summarize(b, a)
    assert s["input_rate_hz"] == pytest.approx(40.0) and s["denoised_rate_hz"] == pytest.approx(30.0)
    assert s["received_total"] == 140 and s["skipped_total"] == 80 and s["queue_denoise"] == 1.0
    assert s["latency_p50_s"] == pytest.approx(0.03)  # end to end: the live lane, published
    live, comp = s["lanes"]["live"], s["lanes"]["complete"]
    assert live["frames_total"] == 60 and live["rate_hz"] == pytest.approx(20.0)
    assert live["engine_latency_p50_s"] < 0.05 <= comp["engine_latency_p50_s"] <= 2.5
    assert comp["frames_total"] == 10 and comp["rate_hz"] == pytest.approx(10.0)
    assert comp["backlog_frames"] == 68 and comp["left_for_offline_total"] == 2
    # the backlog drained: up to date; a service that never skipped (one lane): nothing skipped
    done = parse_scrape(_scrape_text(140, 138, 80, 78, 0, 2, live=(60, 0), complete=(0, 78)), t=12.0)
    assert summarize(done, b)["lanes"]["complete"]["state"] == "up_to_date"
    one = summarize(parse_scrape(_scrape_text(10, 10, 0, 0, 0, 0, live=(10, 0), complete=(0, 0))))
    assert (
        one["lanes"]["complete"]["state"] == "nothing_skipped" and one["lanes"]["live"]["frames_total"] == 10
    )
    # an older service without lane series: the live lane is every denoised frame
    old = summarize(parse_scrape("# TYPE sbd_frames_denoised_total counter\nsbd_frames_denoised_total 5.0\n"))
    assert old["lanes"]["live"]["frames_total"] == 5 and old["lanes"]["live"]["engine_latency_p50_s"] is None


@pytest.fixture
def sources() -> Iterator[tuple[zmq.Socket, zmq.Socket, Metrics, int]]:
    ctx = zmq.Context.instance()
    out, raw = ctx.socket(zmq.XPUB), ctx.socket(zmq.XPUB)  # PUBs that see subscriptions arrive
    for s in (out, raw):
        s.linger = 0
        s.sndhwm = 100000
        s.bind("tcp://127.0.0.1:*")
    m = Metrics()
    port = m.serve("127.0.0.1", 0)
    yield out, raw, m, port
    out.close()
    raw.close()
    m.shutdown()


def _await_subscriptions(sock: zmq.Socket, topics: set[bytes], timeout_ms: int = 20_000) -> None:
    """Readiness, not a sleep: an XPUB reads each subscription as it arrives; once every topic is in,
    nothing sent on them is dropped for want of a subscriber."""
    seen: set[bytes] = set()
    while not topics <= seen:
        assert sock.poll(timeout_ms), f"subscriptions missing: {topics - seen}"
        msg = sock.recv()
        if msg[:1] == b"\x01":
            seen.add(msg[1:])


def _get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_http_api_serves_newest_frames_metrics_and_paired_raw(sources) -> None:
    out, raw, m, mport = sources
    v = Viewer(
        ViewerSettings(port=0, raw_ring_mb=64 * 48 * 2 * 8 / 1e6),  # eight raw frames
        output_endpoint=out.getsockopt_string(zmq.LAST_ENDPOINT),
        raw_endpoint=raw.getsockopt_string(zmq.LAST_ENDPOINT),
        metrics_url=f"http://127.0.0.1:{mport}/metrics",
        detector=DetectorSettings(pixel_size_A=0.06, counts_per_px=0.45),  # no message states them here
    ).start()
    try:
        assert v.url.startswith("http://127.0.0.1:")
        code, body, _ = _get(v.url)
        assert code == 200 and b'src="/viewer.js"' in body
        code, body, hdr = _get(v.url + "viewer.js")
        assert (
            code == 200 and b"window.sbdStatus" in body and hdr["Content-Type"].startswith("text/javascript")
        )
        assert _get(v.url + "image/raw.png")[0] == 404  # nothing received yet
        _await_subscriptions(out, {b"series_start", b"denoised", b"llr"})
        _await_subscriptions(raw, {b"frame"})
        out.send_multipart(encode_series(b"series_start", "acq-1", time.time(), {"source": "test"}))
        rng = np.random.default_rng(1)
        n = 300  # far more than the viewer's receive HWM: it must still end on the newest frame
        t_first = time.time()  # no frame's sender stamp is older than this
        for seq in range(n):
            counts = rng.poisson(0.45, (64, 48)).astype(np.uint16)
            raw.send_multipart(encode_frame(counts, "acq-1", seq, time.time(), topic=TOPIC_FRAME))
            den = np.full((64, 48), seq, np.float32)
            out.send_multipart(encode_frame(den, "acq-1", seq, time.time(), topic=TOPIC_DENOISED))
            llr = np.zeros((64, 48), np.float32)
            llr[10:20, 10:20] = 5.0
            out.send_multipart(encode_frame(llr, "acq-1", seq, time.time(), topic=TOPIC_LLR))
            m.frames_received.inc()
        for _ in range(2):
            m.e2e_latency.observe(0.03)
        end = time.monotonic() + 10
        st: dict = {}
        while time.monotonic() < end:
            st = json.loads(_get(v.url + "api/status")[1])
            f = st["frames"]
            if (
                all(f[k] and f[k]["seq"] == n - 1 for k in ("raw", "denoised", "llr"))
                and st["metrics"].get("received_total") == n
            ):
                break
            time.sleep(0.1)
        assert {k: st["frames"][k]["seq"] for k in ("raw", "denoised", "llr")} == dict.fromkeys(
            ("raw", "denoised", "llr"), n - 1
        )
        assert st["frames"]["denoised"]["shape"] == [64, 48] and st["series"]["acq"] == "acq-1"
        assert st["metrics"]["received_total"] == n
        assert 0.025 <= st["metrics"]["latency_p50_s"] <= 0.05

        code, png, hdr = _get(v.url + "image/denoised.png?lo=0&hi=100")
        assert code == 200 and hdr["Content-Type"] == "image/png" and hdr["X-Seq"] == str(n - 1)
        assert Image.open(io.BytesIO(png)).size == (48, 64)
        code, png, _ = _get(v.url + "image/llr.png?lo=0&hi=98")
        img = np.asarray(Image.open(io.BytesIO(png)))
        assert code == 200 and img.shape == (64, 48, 3) and img[15, 15, 0] > 200 and img[0, 0].max() < 40
        # raw paired with a denoised seq: the newest raw is n-1; ask for n-1 and for an old one
        assert _get(v.url + f"image/raw.png?seq={n - 1}")[2]["X-Seq"] == str(n - 1)
        code, body, _ = _get(v.url + "image/raw.png?seq=3")  # gone: 404 naming what is held
        assert code == 404 and re.fullmatch(
            rf"raw frame 3 of acq-1 is not held \(held: \d+-{n - 1}\)", body.decode()
        )
        assert _get(v.url + "image/raw.png?seq=3&fallback=newest")[2]["X-Seq"] == str(n - 1)  # the page's
        assert _get(v.url + f"image/raw.png?seq={n - 5}")[2]["X-Seq"] == str(n - 5)  # still in the ring
        # every output on the service's PUB is its live lane (it publishes no other): status, header,
        # and the viewer's latency per lane say so; raw frames have no lane
        assert st["frames"]["denoised"]["lane"] == "live" and st["frames"]["llr"]["lane"] == "live"
        assert st["frames"]["raw"]["lane"] is None
        assert _get(v.url + "image/denoised.png")[2]["X-Lane"] == "live"
        assert _get(v.url + "image/llr.png")[2]["X-Lane"] == "live"
        assert "X-Lane" not in _get(v.url + "image/raw.png")[2]
        assert _get(v.url + "image/raw.png?lo=60&hi=50")[0] == 400
        # a region at full resolution, with what the page needs to place it and draw a scale bar
        code, png, hdr = _get(v.url + "image/raw.png?region=8,16,40,48&side=64&contrast=frame")
        assert code == 200 and Image.open(io.BytesIO(png)).size == (32, 32)
        assert hdr["X-Region"] == "8,16,40,48" and hdr["X-Bin"] == "1" and hdr["X-Shape"] == "64,48"
        assert float(hdr["X-Pixel-Size-A"]) == 0.06 and len(hdr["X-Window"].split(",")) == 2
        code, png, hdr = _get(v.url + "image/llr.png?lo=0&hi=98&overlay=1")
        rgba = np.asarray(Image.open(io.BytesIO(png)))
        assert rgba.shape == (64, 48, 4) and rgba[15, 15, 3] == 255 and rgba[0, 0, 3] == 0
        assert float(hdr["X-Llr-Limit"]) == 5.0
        raw_st = st["frames"]["raw"]
        assert raw_st["pixel_size_A"] == 0.06 and raw_st["dose"]["e_per_A2"] == pytest.approx(125.0)
        assert 0.3 < raw_st["dose"]["mean_counts_per_px"] < 0.6
        lat = st["latency"]["denoised/live"]
        assert lat["lane"] == "live" and lat["n"] > 0
        # seconds from the sender's stamp to the viewer's receipt on one clock: never negative and never
        # more than the time since the first frame was sent (a bound from this run, not this machine's
        # speed): a receipt read on another clock (monotonic: ~1e9 s off) or a swapped subtraction breaks it
        assert 0 <= lat["p50_s"] <= lat["max_s"] <= time.time() - t_first, lat
        assert _get(v.url + "image/raw.png?region=1,2,3")[0] == 400
        assert _get(v.url + "image/raw.png?region=500,500,600,600")[0] == 400
        assert _get(v.url + "image/raw.png?contrast=pretty")[0] == 400
        assert _get(v.url + "image/other.png")[0] == 404
        assert _get(v.url + "../etc/passwd")[0] == 404
    finally:
        v.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_image_api_refuses_bad_values_and_frames_it_does_not_hold(sources) -> None:
    """Nothing out of range is bent into range: 400 with the reason, 404 naming the seqs held."""
    out, _raw, _m, _port = sources
    v = Viewer(ViewerSettings(port=0), output_endpoint=out.getsockopt_string(zmq.LAST_ENDPOINT)).start()
    try:
        _await_subscriptions(out, {b"series_start", b"denoised", b"llr"})
        for seq in range(10, 20):  # paced: none is dropped at the viewer's receive HWM
            den = np.full((32, 32), seq, np.float32)
            out.send_multipart(encode_frame(den, "A", seq, time.time(), topic=TOPIC_DENOISED))
            time.sleep(0.01)
        end = time.monotonic() + 10
        while time.monotonic() < end and _get(v.url + "image/denoised.png")[2].get("X-Seq") != "19":
            time.sleep(0.05)
        assert _get(v.url + "image/denoised.png?seq=12")[2]["X-Seq"] == "12"
        bad = {
            "side=0": "side must be >= 1",
            "side=-1": "side must be >= 1",
            "side=big": "side must be a whole number",
            "seq=-1": "seq must be >= 0",
            "seq=1.5": "seq must be a whole number",
            "overlay=1": "overlay=1 is for llr.png",
            "overlay=yes": "overlay must be 0 or 1",
            "lo=nan": "lo must be finite",
            "hi=x": "hi must be a number",
            "fallback=oldest": "fallback must be",
            "region=a,b,c,d": "region is x0,y0,x1,y1",
        }
        for query, reason in bad.items():
            code, body, hdr = _get(v.url + "image/denoised.png?" + query)
            assert code == 400 and hdr["Content-Type"].startswith("text/plain"), (query, code, body)
            assert reason in body.decode(), (query, body)
        for seq in (3, 20, 10**30):  # before the ring, not yet received, absurd: never the newest instead
            code, body, _ = _get(v.url + f"image/denoised.png?seq={seq}")
            assert code == 404 and body.decode() == f"denoised frame {seq} of A is not held (held: 10-19)"
        assert _get(v.url + "image/llr.png?seq=12")[0] == 404  # no LLR frame yet: nothing to show
        assert _get(v.url + "image/denoised.png?seq=3&fallback=newest")[2]["X-Seq"] == "19"
        assert _get(v.url + "image/denoised.png?side=1")[0] == 200  # small sides are drawn at 16 px
    finally:
        v.close()
