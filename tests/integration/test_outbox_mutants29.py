"""The merge's outbox give-up rules on a real XPUB / SUB pair (mutation round h29, merge/outbox.py).

The merge's own test (test_merge_drop_accounting.py) runs with ``pace_s`` = 600 s and a reader that
catches up, so none of the bounds on waiting was seen: the queue limit and its floor of one, the
``pace_s`` and ``MAX_AGE_S`` give-ups (and that they hold together, not either), the wait restarting
for each new head, the series message held back after a give-up, ``finish`` counting what it sends the
lossy way and the subscriptions drained. Each test blocks a subscriber's pipe for real: 1 MB messages,
high-water marks of 1, small kernel buffers, a subscriber that reads only when told.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from sbd_stream.merge.outbox import MAX_AGE_S, Outbox
from sbd_stream.sinks.xpub import SERIES_WAIT_S, XPubSender, xpub_socket

pytestmark = pytest.mark.integration

PAYLOAD = bytes(1 << 20)


class Pair:
    """An XPUB sender and one subscribed SUB that reads only when told."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.pub = xpub_socket(ctx, 1)
        self.pub.setsockopt(zmq.SNDBUF, 64 * 1024)
        port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 1)
        self.sub.setsockopt(zmq.RCVBUF, 64 * 1024)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        assert self.pub.poll(20_000), "the subscriber never subscribed"
        assert self.pub.recv()[:1] == b"\x01"
        self.sender = XPubSender(self.pub)
        self.dropped = 0

    def saturate(self) -> None:
        """Send frames straight on the socket (NODROP: EAGAIN, no pipe set aside) until it has said EAGAIN
        for 0.3 s on end: ZeroMQ's I/O thread has then moved all it can towards the subscriber."""
        since = time.monotonic()
        while time.monotonic() - since < 0.3:
            try:
                self.pub.send_multipart([b"f", PAYLOAD], flags=zmq.NOBLOCK)
                since = time.monotonic()
            except zmq.Again:
                time.sleep(0.01)

    def count(self) -> None:
        self.dropped += 1

    def outbox(self, limit: int, pace_s: float) -> Outbox:
        return Outbox(self.sender, self.count, limit, pace_s)

    def read(self, most: int = 1 << 30) -> int:
        """Read up to ``most`` messages that are there now; how many were read."""
        n = 0
        while n < most and self.sub.poll(0):
            self.sub.recv_multipart()
            n += 1
        return n

    def close(self) -> None:
        self.sub.close(linger=0)
        self.pub.close(linger=0)


@pytest.fixture
def pair() -> Iterator[Pair]:
    ctx = zmq.Context()
    p = Pair(ctx)
    try:
        yield p
    finally:
        p.close()
        ctx.term()


def _fill(box: Outbox, pair: Pair) -> None:
    """Fill the subscriber's pipe, then put one frame: it is kept (or counted, by a box that never waits)."""
    pair.saturate()
    box.put([b"f", PAYLOAD], False)
    assert len(box) + pair.dropped == 1


def test_up_to_limit_messages_wait_and_one_more_sends_the_head_the_lossy_way(pair: Pair) -> None:
    """``limit`` queued messages wait; the next put gives the head up (counted) and, the pipe set aside,
    the rest go out. Mutant: ``<`` for ``<=`` gave up with ``limit`` queued."""
    box = pair.outbox(limit=3, pace_s=600.0)
    _fill(box, pair)
    lengths = [len(box)]
    while pair.dropped == 0 and len(lengths) < 20:
        box.put([b"f", PAYLOAD], False)
        lengths.append(len(box))
    assert max(lengths) == 3 and lengths[:3] == [1, 2, 3]
    assert pair.dropped == 1


def test_a_limit_of_zero_still_lets_one_message_wait(pair: Pair) -> None:
    """``limit`` is at least 1 (a merge with a tiny window still waits for a full pipe). Mutant: the
    floor gone, a limit of 0 gave every blocked message up at once."""
    box = pair.outbox(limit=0, pace_s=600.0)
    _fill(box, pair)
    assert (len(box), pair.dropped) == (1, 0)


def test_a_head_blocked_longer_than_pace_goes_the_lossy_way(pair: Pair) -> None:
    """A head blocked ``pace_s`` is given up even though it is younger than ``MAX_AGE_S``: the two bounds
    hold together. Mutants: ``or`` for ``and``; the block time restarted on every pump."""
    box = pair.outbox(limit=100, pace_s=0.2)
    _fill(box, pair)
    assert (len(box), pair.dropped) == (1, 0)
    time.sleep(0.3)
    box.pump()
    assert (len(box), pair.dropped) == (0, 1)


def test_a_pace_longer_than_max_age_is_the_age_bound_too(pair: Pair) -> None:
    """``pace_s`` above ``MAX_AGE_S`` is also the age bound (``max(pace_s, MAX_AGE_S)``): a head younger
    than its pace waits on. Mutant: the age bound fixed at ``MAX_AGE_S`` gave it up after 1 s."""
    box = pair.outbox(limit=100, pace_s=600.0)
    _fill(box, pair)
    time.sleep(MAX_AGE_S + 0.1)
    box.pump()
    assert (len(box), pair.dropped) == (1, 0)


def test_every_new_head_gets_its_own_pace(pair: Pair) -> None:
    """The wait for a full pipe starts when a head meets it: a burst that got through, and a new one
    after longer than ``pace_s``, waits again. Mutant: the block time kept after a send gave the second
    burst's first blocked message up at once."""
    box = pair.outbox(limit=100, pace_s=1.0)
    _fill(box, pair)
    while len(box):
        pair.read()
        box.pump()
        time.sleep(0.001)
    assert pair.dropped == 0
    pair.read()
    time.sleep(1.2)
    _fill(box, pair)
    assert (len(box), pair.dropped) == (1, 0)


def test_a_head_older_than_max_age_goes_the_lossy_way_though_its_pace_has_not_run_out(pair: Pair) -> None:
    """A reader a little slower than the stream (one message per 0.3 s, pace 0.5 s) never lets a head
    wait ``pace_s``; ``MAX_AGE_S`` still bounds how long the queued burst waits in all. Mutant: the age
    bound gone, nothing was ever given up."""
    box = pair.outbox(limit=1000, pace_s=0.5)
    _fill(box, pair)
    for _ in range(40):
        box.put([b"f", PAYLOAD], False)
    assert pair.dropped == 0 and len(box) > 30
    end = time.monotonic() + 2 * MAX_AGE_S
    while time.monotonic() < end and pair.dropped == 0:
        pair.read(1)
        for _ in range(30):
            box.pump()
            time.sleep(0.01)
    assert pair.dropped >= 1


def test_a_series_message_waits_after_a_give_up_then_goes_out(pair: Pair) -> None:
    """After a frame went the lossy way, a series message is held ``SERIES_WAIT_S`` (the set-aside pipe's
    reader catches up), then sent, not counted. Mutants: the hold gone; the give-up's time not kept."""
    box = pair.outbox(limit=100, pace_s=0.0)
    _fill(box, pair)
    assert pair.dropped == 1 and len(box) == 0
    box.pace_s = 600.0  # the series message itself is not to be given up while the reader catches up
    given_up = time.monotonic()
    box.put([b"s", b"series"], True)
    if time.monotonic() - given_up >= SERIES_WAIT_S:
        pytest.skip("the machine took longer than SERIES_WAIT_S between two lines")
    assert len(box) == 1
    while len(box):
        pair.read()
        box.pump()
        time.sleep(0.001)
    assert pair.dropped == 1


def test_finish_counts_what_it_sends_the_lossy_way(pair: Pair) -> None:
    """What is still queued when ``finish`` runs out of time goes the lossy way and is counted.
    Mutant: not counted."""
    box = pair.outbox(limit=100, pace_s=600.0)
    _fill(box, pair)
    box.finish(timeout_s=0.0)
    assert (len(box), pair.dropped) == (0, 1)


def test_pump_reads_the_subscriptions(pair: Pair) -> None:
    """An XPUB queues (un)subscriptions for its owner to read; the outbox reads them as it sends, or a
    merge whose subscribers come and go grows that queue for ever. Mutant: not read."""
    sub2 = pair.sub.context.socket(zmq.SUB)
    try:
        sub2.setsockopt(zmq.SUBSCRIBE, b"x")
        sub2.connect(pair.pub.getsockopt_string(zmq.LAST_ENDPOINT))
        assert pair.pub.poll(20_000)
        pair.outbox(limit=100, pace_s=600.0).put([b"f", b"small"], False)
        assert not pair.pub.getsockopt(zmq.EVENTS) & zmq.POLLIN
    finally:
        sub2.close(linger=0)
