"""Detector emulator: publishes K2-style counted frames in wire format v1, with the ground truth kept.

Sources, in order of preference: a scene (``scene``: one held-out specimen held for the whole series,
drifting, changing focus, with an optional event: ``sources/scene.py``, what a microscope records), a
simulated dataset (the HDF5 written by ``training.dataset``, read here directly with h5py because
sbd_stream must not import training; its images cycle, one per frame, cut around the specimen or
wrap-tiled to the frame (``sources/crop.py``): a throughput pattern, not a microscope), a recording made
by this service
(its raw counts are re-sent as they are, at its frame size; there is no ground truth then; the command
takes their sampling from the file too, ``sources/emulator_recording.py``), or -- only when no file is
given -- a built-in SYNTHETIC lattice of Gaussian "columns", clearly labelled as such in the metadata.
``series_start`` announces the shape and dtype of the frames actually sent.

Drawing 14 Mpx of Poisson noise takes longer than 25 ms, so for full-size frames at 40 Hz a pool of
pre-drawn noise realisations (``pool``) is cycled; the ground truth of each sent frame stays exact.

``push``: a PUSH socket instead of PUB, like a DECTRIS DCU. Each message goes to exactly one connected
PULL peer, round-robin over the peers not at their high-water mark, so several ``serve`` instances
(``--socket-type pull``) share the frames; ``series_start`` and ``series_end`` reach one of them each
(docs/scale-out-nodes.md). Unlike PUB, PUSH never drops: with no peer connected, or every peer at its
high-water mark, a send waits (the emulator then falls behind its rate, as a real detector's buffer
would fill). ``peers`` is how many PULL peers to wait for before the first message (``wait_subscriber_s``
bounds the wait), so the first frames are not all queued for whichever instance connected first.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
import zmq

from sbd_stream.compute.noise import poisson_counts
from sbd_stream.compute.poisson_table import max_rate
from sbd_stream.config import SocketMode
from sbd_stream.formats.recording import open_recording
from sbd_stream.protocol import (
    MAX_HEADER_BYTES,
    TOPIC_SERIES_END,
    TOPIC_SERIES_START,
    SeriesHeader,
    encode_series,
    ipv6_endpoint,
)
from sbd_stream.sources.crop import MIN_SPECIMEN_FRACTION, specimen_fraction
from sbd_stream.sources.crop import fit_to_frame as _fit
from sbd_stream.sources.emulator_recording import RecordedRows, is_recording, recorded_counts
from sbd_stream.sources.emulator_settings import POOL_MARGIN, EmulatorSettings
from sbd_stream.sources.scene import NOMINAL_FRAME_S, ScenePlayer, read_scene
from sbd_stream.zmq_context import end_context, own_context

log = logging.getLogger(__name__)
STOP_POLL_MS = 200  # a wait for subscribers / peers looks at the stop this often (it waited out --wait)

K2_SHAPE = (3838, 3710)


class SourceKind(enum.StrEnum):
    scene = "scene"  # one specimen held, drifting, changing focus (sources/scene.py)
    simulated = "simulated"  # clean images from a simulated dataset file
    recording = "recording"  # raw counts from an sbd-stream recording
    synthetic = "synthetic"  # built-in Gaussian lattice (no file given)


def synthetic_clean(shape: tuple[int, int], spacing: float = 12.0, seed: int = 0) -> np.ndarray:
    """A SYNTHETIC test pattern: vacuum 1.0 with a lattice of dark Gaussian columns over a disk."""
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.ones(shape, np.float32)
    rng = np.random.default_rng(seed)
    sigma = spacing / 5
    disk = (rr - h / 2) ** 2 + (cc - w / 2) ** 2 < (0.35 * min(h, w)) ** 2
    ph = rng.uniform(0, spacing, 2)
    mod = np.cos(2 * np.pi * (rr - ph[0]) / spacing) * np.cos(2 * np.pi * (cc - ph[1]) / spacing)
    columns = np.exp(-((1 - np.clip(mod, 0, 1)) * spacing**2) / (8 * sigma**2))
    img -= 0.6 * columns * disk
    return np.clip(img, 0.05, None).astype(np.float32)


SYNTHETIC_SPACING_A = 2.8
"""Column spacing of the synthetic lattice (about Pt's 2.77 A nearest-neighbour distance)."""


def resample(img: np.ndarray, from_pixel_A: float, to_pixel_A: float) -> np.ndarray:
    """A clean (band-limited) image resampled from one pixel size to another by cubic splines.

    Simulated clean images are band-limited by the vibration envelope, so interpolating them onto a
    finer detector grid reproduces what a finer simulation would give; the result is clipped at 0
    (spline overshoot must not become negative Poisson rates).
    """
    if abs(from_pixel_A / to_pixel_A - 1.0) < 1e-3:
        return img
    from scipy import ndimage

    out = ndimage.zoom(img, from_pixel_A / to_pixel_A, order=3, mode="reflect", grid_mode=True)
    return np.clip(out, 0.0, None).astype(np.float32)


class FrameSource:
    """Clean images (expected counts = clean * dose) or recorded counts, by frame index."""

    def __init__(self, cfg: EmulatorSettings) -> None:
        self.cfg = cfg
        self.kind = SourceKind.synthetic
        self._images: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self.player: ScenePlayer | None = None
        self.note: str | None = None  # a simulated dataset's frames holding no specimen (demo, emulate warn)
        self.rows = RecordedRows()  # a recording's per-frame exposure_s and meta (emulator_recording.py)
        self._load(cfg)
        if not self._counts:  # clean images: counts drawn here must fit the type sent
            check_counts_type(self.peak_rate, cfg.dose, cfg.dtype)

    def _load(self, cfg: EmulatorSettings) -> None:
        """The scene, the synthetic lattice, a simulated dataset's images or a recording's counts."""
        if cfg.scene is not None:
            self.kind = SourceKind.scene
            self.player = ScenePlayer(read_scene(cfg.scene, cfg.scene_name), cfg)
            return
        if cfg.source is None:
            spacing_px = SYNTHETIC_SPACING_A / cfg.pixel_size_A
            self._images = [synthetic_clean(cfg.shape, spacing=spacing_px, seed=cfg.seed)]
            return
        with open_recording(cfg.source) as f:  # also a plain HDF5 reader with the filters loaded
            if "images" in f:
                n = int(f["committed"][0]) if "committed" in f else f["images"].shape[0]
                n = min(n, 64)  # enough variety; bounded memory
                if n == 0:
                    raise ValueError(f"{cfg.source} holds no committed images")
                self.kind = SourceKind.simulated
                src_px = float(f.attrs.get("pixel_size_A", cfg.pixel_size_A))
                self.source_pixel_A = src_px
                self._images = [
                    _fit(
                        resample(np.asarray(f["images"][i], np.float32), src_px, cfg.pixel_size_A), cfg.shape
                    )
                    for i in range(n)
                ]
                if specimen_fraction(self._images) < MIN_SPECIMEN_FRACTION:  # a PSNR would score vacuum
                    self.note = (
                        f"{cfg.source}: the {cfg.shape[0]}x{cfg.shape[1]} frames hold (almost) no specimen"
                    )
            elif is_recording(f):  # its trusted rows, checked (emulator_recording.py)
                self.kind = SourceKind.recording
                self._counts, rows = recorded_counts(f, cfg)
                self.rows = RecordedRows(rows)
            else:
                raise ValueError(
                    f"{cfg.source}: neither a simulated dataset (/images) nor a recording (/raw)"
                )

    @property
    def peak_rate(self) -> float:
        """The largest expected count of any frame (a scene's bound: its Poisson table's top rate)."""
        if self.player is not None:
            return max(self.player.table.lam_max, self.cfg.dose)
        return max(float(im.max()) for im in self._images) * self.cfg.dose if self._images else self.cfg.dose

    def __len__(self) -> int:
        return len(self._images) or len(self._counts) or 1

    @property
    def shape(self) -> tuple[int, int]:
        """Frame size sent: a recording's own (its counts are re-sent as they are), else ``cfg.shape``."""
        if self._counts:
            h, w = self._counts[0].shape
            return int(h), int(w)
        h, w = self.cfg.shape  # validated as two sides
        return int(h), int(w)

    def truth(self, index: int) -> np.ndarray | None:
        """Expected counts per pixel of frame ``index`` (None for recordings: no ground truth)."""
        if self.player is not None:
            return self.player.expected(index)
        if not self._images:
            return None
        return self._images[index % len(self._images)] * np.float32(self.cfg.dose)

    def _cycle(self) -> int:
        """How many images ``frames`` cycles through (a pre-drawn pool is kept under ~2 GB)."""
        n_img = len(self._images)
        if self.cfg.pool > 0 and self._images:
            per_image = self.cfg.pool * self._images[0].size * np.dtype(self.cfg.dtype).itemsize
            n_img = max(1, min(n_img, int(2e9 // per_image)))
        return n_img

    def truth_of_frame(self, i: int) -> np.ndarray | None:
        """The truth ``frames`` yields with frame ``i`` (deterministic: another process can score it)."""
        if self.player is not None:
            return self.player.expected(i)
        return self.truth(i % max(1, self._cycle())) if self._images else None

    def frames(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(counts, truth) forever."""
        rng = np.random.default_rng(self.cfg.seed)
        dt = np.dtype(self.cfg.dtype)
        if self.player is not None:
            yield from self._scene_frames(self.player, rng)
        if self._counts:
            i = 0
            while True:
                yield self._counts[i % len(self._counts)].astype(dt, copy=False), None
                i += 1
        pools: dict[int, list[np.ndarray]] = {}
        n_img = self._cycle()
        if self.cfg.pool > 0:  # drawn up front: a detector does not pause to make noise mid-acquisition
            for k in range(n_img):
                pools[k] = [
                    poisson_counts(self._images[k], self.cfg.dose, rng, dt) for _ in range(self.cfg.pool)
                ]
        i = 0
        while True:
            k = i % n_img
            clean = self._images[k]
            if self.cfg.pool > 0:
                counts = pools[k][(i // n_img) % self.cfg.pool]
            else:
                counts = poisson_counts(clean, self.cfg.dose, rng, dt)
            yield counts, self.truth(k)
            i += 1

    def _scene_frames(
        self, player: ScenePlayer, rng: np.random.Generator
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """A held scene: fresh counts every frame (exact Poisson vacuum from a pre-drawn pool, when
        ``pool`` > 0, under the scene's footprint drawn from the Poisson table).

        Pool frames are drawn ``VACUUM_MARGIN`` px larger than the frame and each frame takes a window
        at a random offset (a view: free). Vacuum is uniform, so every window is an exact Poisson frame,
        and two uses of one pool frame share a pixel's count only when their offsets coincide (1 in
        4096). Cycling the pool frames whole repeated the vacuum counts exactly every ``pool`` frames
        (the demo's 8): sums over more frames, such as likelihood evidence, stopped being Poisson."""
        dt = np.dtype(self.cfg.dtype)
        h, w = self.cfg.shape
        m = VACUUM_MARGIN
        vacuum = [poisson_counts(np.ones((h + m, w + m), np.float32), self.cfg.dose, rng, dt)
                  for _ in range(self.cfg.pool)]  # fmt: skip
        i = 0
        while True:
            window = None
            if vacuum:
                r, c = rng.integers(0, m, 2)
                window = vacuum[i % len(vacuum)][r : r + h, c : c + w]
            yield player.counts(i, rng, window), player.expected(i)
            i += 1


def check_counts_type(peak_rate: float, dose: float, dtype: str) -> None:
    """Refuse (``ValueError``, one line) a dose whose counts ``dtype`` cannot hold.

    Why: counts above the type's maximum were clipped to it without a word (uint8 at 300 counts/px sent
    255 everywhere). The test is the brightest pixel's rate against ``max_rate`` (a count over the
    maximum less often than once in 10^12 pixels), so nothing the emulator accepts is ever clipped.
    """
    limit = max_rate(dtype)
    if peak_rate <= limit:
        return
    top = int(np.iinfo(np.dtype(dtype)).max)
    most = limit * dose / peak_rate
    bright = (
        f" (brightest pixels {peak_rate / dose:.3g}x: {peak_rate:.4g} counts)" if peak_rate > dose else ""
    )
    raise ValueError(
        f"dose {dose:.4g} counts/px{bright} does not fit {dtype} counts (at most {top}): "
        f"at most {most:.4g} counts/px as {dtype}"
        + ("; send --dtype uint16 or lower the dose" if dtype == "uint8" else "; lower the dose")
    )


VACUUM_HINT = "no atom to denoise or to score a PSNR on; give a larger --shape or a dataset with a specimen"
"""What ``emulate`` adds to ``FrameSource.note`` in its warning (``demo`` words its own for its PSNR)."""

VACUUM_MARGIN = POOL_MARGIN
"""Extra rows and columns of a held scene's pre-drawn vacuum frames: 64 x 64 window offsets."""


class Emulator:
    """Publishes ``n_frames`` frames at ``rate_hz`` between series_start and series_end."""

    def __init__(self, cfg: EmulatorSettings, context: zmq.Context | None = None) -> None:
        self.cfg = cfg
        self.source = FrameSource(cfg)
        self._own_ctx = context is None  # its own: ``close`` ends it (see ``close``)
        self.ctx = context or own_context()
        # XPUB: a PUB that also sees subscriptions; PUSH: one peer per message (scale-out)
        self.sock = self.ctx.socket(zmq.PUSH if cfg.push else zmq.XPUB)
        self.sock.setsockopt(zmq.SNDHWM, cfg.sndhwm)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.IPV6, ipv6_endpoint(cfg.endpoint))  # tcp://[::1]:5555
        self._monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED) if cfg.push else None
        self._peers = 0
        try:
            if cfg.mode is SocketMode.bind:
                self.sock.bind(cfg.endpoint)
            else:
                self.sock.connect(cfg.endpoint)
        except zmq.ZMQError:  # a port in use, no such interface: nothing of this emulator stays open
            self._close_socket()
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT) or cfg.endpoint
        self.sent: dict[int, np.ndarray] = {}
        self.truth: dict[int, np.ndarray] = {}
        self.n_sent = 0
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def wait_for_subscriber(self, timeout: float) -> bool:
        if self._monitor is not None:
            return self.wait_for_peers(self.cfg.peers, timeout)
        end = time.monotonic() + timeout
        while not self.stop_event.is_set() and (left := end - time.monotonic()) > 0:
            if self.sock.poll(min(int(left * 1000) + 1, STOP_POLL_MS), zmq.POLLIN):
                self.sock.recv_multipart()
                return True
        return False

    def wait_for_peers(self, n: int, timeout: float) -> bool:
        """PUSH: wait until ``n`` PULL peers completed their handshake (``timeout`` s at most; a stop)."""
        assert self._monitor is not None
        end = time.monotonic() + timeout
        while self._peers < n:
            if self.stop_event.is_set() or (left := end - time.monotonic()) <= 0:
                return False
            if self._monitor.poll(min(int(left * 1000) + 1, STOP_POLL_MS)):
                self._monitor.recv_multipart()  # [event id + value, endpoint]: only handshakes asked for
                self._peers += 1
        return True

    def _send(self, parts: list, copy: bool = True) -> bool:
        """Send one message; a PUSH without a ready peer waits (checking for stop) instead of dropping."""
        if not self.cfg.push:
            self.sock.send_multipart(parts, copy=copy)
            return True
        while not self.stop_event.is_set():
            if self.sock.poll(200, zmq.POLLOUT):
                self.sock.send_multipart(parts, copy=copy)
                return True
        return False

    def meta(self) -> dict:
        c = self.cfg
        return {
            "source": self.source.kind.value,
            "dose": c.dose,
            "counts_per_px": c.dose,
            "pixel_size_A": c.pixel_size_A,
            "dose_e_per_A2": c.dose_per_area,
            "emulator": True,
            **({"scene": self.source.player.describe()} if self.source.player is not None else {}),
        }

    @property
    def exposure_s(self) -> float:
        """Exposure each frame states: the frame period, or at rate 0 (as fast as possible) the nominal
        frame time the scene's drift and focus are played at (``scene.NOMINAL_FRAME_S``)."""
        return 1.0 / self.cfg.rate_hz if self.cfg.rate_hz > 0 else NOMINAL_FRAME_S

    def series_start(self) -> list[bytes]:
        """``series_start`` with the shape and dtype of the frames actually sent (``encode_series`` takes
        neither; the header is built the same way, with the same size limit)."""
        c = self.cfg
        h = SeriesHeader(
            c.acq, time.time(), self.meta(), c.n_frames, self.source.shape, c.dtype, self.exposure_s
        )
        header = json.dumps(h.to_json(), separators=(",", ":"), allow_nan=False).encode()
        if len(header) > MAX_HEADER_BYTES:
            raise ValueError(f"series_start header is {len(header)} bytes, over {MAX_HEADER_BYTES}")
        return [TOPIC_SERIES_START, header, b""]

    def _warn_no_peer(self) -> None:
        c = self.cfg
        if not c.push:
            log.warning("no subscriber after %.1f s; publishing anyway", c.wait_subscriber_s)
        elif self._peers == 0:
            log.warning(
                "no peer (PULL) connected after %.1f s; sending anyway (each send waits until a peer "
                "can take it)", c.wait_subscriber_s,
            )  # fmt: skip
        else:
            log.warning(
                "only %d of %d peers (PULL) connected after %.1f s; sending anyway (to those connected)",
                self._peers, c.peers, c.wait_subscriber_s,
            )  # fmt: skip

    def run(self) -> int:
        """Publish the series; returns the number of frames sent."""
        cfg = self.cfg
        if cfg.wait_subscriber_s > 0 and not self.wait_for_subscriber(cfg.wait_subscriber_s):
            if self.stop_event.is_set():
                return self.n_sent  # stopped before anything was sent: no series at all
            self._warn_no_peer()
        period = 1.0 / cfg.rate_hz if cfg.rate_hz > 0 else 0.0
        exposure = self.exposure_s
        frames = self.source.frames()
        upcoming = next(frames)  # noise pools are drawn here, before the acquisition's clock starts
        self._send(self.series_start())
        t_next = time.perf_counter()
        for k in range(cfg.n_frames):
            if self.stop_event.is_set():
                break
            counts, truth = upcoming if k == 0 else next(frames)
            seq = cfg.first_seq + k
            if cfg.keep_truth and k % cfg.truth_every == 0:
                self.sent[seq] = counts
                if truth is not None:
                    self.truth[seq] = truth
            if period:
                t_next += period
                delay = t_next - time.perf_counter()
                if delay > 0 and self.stop_event.wait(delay):  # a stop ends a slow rate's wait at once
                    break
            parts = self.source.rows.message(
                k, counts, cfg.acq, seq, time.time(), exposure, {"dose": cfg.dose}
            )
            if not self._send(parts, copy=False):
                break
            self.n_sent += 1
        self._send(encode_series(TOPIC_SERIES_END, cfg.acq, time.time(), {}, self.n_sent))
        return self.n_sent

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="sbd-emulator", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """Stop, close the socket and (its own context) wait until what is queued is sent, at most LINGER.

        Why: frames go without a copy, so libzmq reads the arrays after ``send`` returned. ``emulate``
        returned with large frames queued for a slow receiver: abort at exit, the last frames and the
        ``series_end`` lost (``sbd_stream/zmq_context.py``). A context handed in is the caller's to end."""
        self.stop_event.set()
        self.join(5.0)
        self._close_socket()
        if self._own_ctx:
            end_context(self.ctx)  # returns once the queue is sent or LINGER has passed

    def _close_socket(self) -> None:
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(linger=0)
        self.sock.close()
