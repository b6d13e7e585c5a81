"""A held scene, played like a microscope: one specimen, slow drift, slow focus change, an optional event.

A scene bundle (``sbd_stream/samples/scenes.h5``, written by ``sbd-train scenes``) holds one held-out
atomic model of the paper world imaged by abTEM over a defocus series at the engine's 0.24 A working
pixel (vacuum = 1), plus event variants of the same model (a Pt surface column removed, or moved to a
neighbouring empty site) imaged the same way, with the atomic columns of each variant.

``ScenePlayer`` turns it into what a detector would record at frame k (docs/emulator.md):

- **Detector pixel.** The images are band-limited (50 pm vibration: nothing above 1.67 A^-1, below the
  0.24 A Nyquist of 2.08 A^-1), so each is resampled exactly by zero-padding its spectrum; the pixel's
  box integration is changed from 0.24 A to the detector's (sinc ratio). The 52.8 A scene is centred in
  the frame and surrounded by vacuum (1.0); frames smaller than it show its centre.
- **Drift** (A/s, at an angle): a sub-pixel Fourier shift of the band-limited image plus a whole-pixel
  placement, so a column moves by exactly the stated distance.
- **Focus** (nm/s): linear blend of the two neighbouring defocus images of the series (2.5 nm apart;
  the 4 nm focal spread makes the image smooth in focus), bouncing between the series' ends.
- **Event** at a stated frame: from then on the event variant's images; ``event_truth`` says when,
  what and where (detector pixels at that frame).

The clean image is re-rendered every ``render_interval_s`` (drift of 0.05 A per 0.1 s at 0.5 A/s), and
every frame gets fresh counts: exact Poisson vacuum from a pre-drawn pool (``pool`` > 0) with the scene's
footprint drawn by ``compute.poisson_table`` (a few ms per megapixel instead of ~50).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from sbd_stream.compute.poisson_table import PoissonTable
from sbd_stream.sources.emulator_settings import EmulatorSettings

SCENE_FORMAT = "sbd-scenes/1"
BUNDLED_SCENES = Path(__file__).resolve().parent.parent / "samples" / "scenes.h5"
"""The scene bundle shipped with the package (held-out test model of the paper world)."""
NOMINAL_FRAME_S = 0.025
"""Frame time used for drift and focus when the emulator sends as fast as it can (rate 0)."""


@dataclass
class Scene:
    """One model of a bundle: defocus series per variant, columns and event descriptions."""

    name: str
    pixel_A: float
    defocus_nm: np.ndarray  # (D,)
    images: dict[str, np.ndarray]  # variant -> (D, H, W) float32, vacuum = 1
    columns: dict[str, dict[str, np.ndarray]]  # variant -> xy [row, col] (bundle px), species, is_surface
    events: dict[str, dict]  # variant -> description (kind, atoms, xy_px[, to_xy_px], what)


def is_scene_bundle(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return f.attrs.get("format", "") == SCENE_FORMAT


def read_scene(path: Path, name: str | None = None) -> Scene:
    """The scene ``name`` of a bundle (default: its first)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format", "") != SCENE_FORMAT:
            raise ValueError(f"{path} is not a scene bundle ({SCENE_FORMAT})")
        names = sorted(f["scenes"])
        if name is None:
            name = names[0]
        if name not in names:
            raise ValueError(f"{path} has no scene {name!r}; it has {names}")
        g = f[f"scenes/{name}"]
        variants = [v for v in g if isinstance(g[v], h5py.Group)]
        return Scene(
            name=name,
            pixel_A=float(f.attrs["pixel_size_A"]),
            defocus_nm=np.asarray(g["defocus_nm"][()], np.float64),
            images={v: np.asarray(g[f"{v}/images"][()], np.float32) for v in variants},
            columns={
                v: {k: g[f"{v}/columns/{k}"][()] for k in ("xy", "species", "is_surface")} for v in variants
            },
            events={v: json.loads(g[v].attrs["event"]) for v in variants if g[v].attrs.get("event", "")},
        )


@dataclass(frozen=True)
class SceneState:
    """What the specimen looks like at one instant."""

    variant: str
    focus_nm: float
    shift_px: tuple[float, float]  # (row, col) of the scene's content in the frame, detector pixels


class ScenePlayer:
    """Clean frames and counts of a held scene at the detector's sampling (see the module docstring)."""

    def __init__(self, scene: Scene, cfg: EmulatorSettings) -> None:
        self.scene, self.cfg = scene, cfg
        if cfg.event_frame is not None and cfg.event not in scene.images:
            raise ValueError(f"scene {scene.name} has no event variant {cfg.event!r}")
        lo, hi = float(scene.defocus_nm[0]), float(scene.defocus_nm[-1])
        if not lo <= cfg.focus_nm <= hi:
            raise ValueError(f"focus {cfg.focus_nm} nm is outside the scene's series {lo}-{hi} nm")
        h = scene.images["base"].shape[-1]
        self.ratio = scene.pixel_A / cfg.pixel_size_A  # detector pixels per bundle pixel
        self.n = round(h * self.ratio)
        self._spectra = {v: self._detector_spectra(im) for v, im in scene.images.items()}
        hf, wf = cfg.shape
        self.origin = ((hf - self.n) // 2, (wf - self.n) // 2)  # scene's top-left in the frame
        self.dt = 1.0 / cfg.rate_hz if cfg.rate_hz > 0 else NOMINAL_FRAME_S
        self.frames_per_render = max(1, round(cfg.render_interval_s / self.dt))
        peak = max(float(im.max()) for im in scene.images.values())
        self.table = PoissonTable(cfg.dose * max(peak, 1.0) * 1.05, levels=256, anchor=cfg.dose)
        self._cache: tuple[SceneState, np.ndarray, np.ndarray] | None = None
        self._vacuum_index: np.ndarray | None = None

    def _detector_spectra(self, images: np.ndarray) -> np.ndarray:
        """(D, n, n//2+1) spectra of the images at the detector pixel (zero-padded, box changed)."""
        d, h, _ = images.shape
        n, s, p = self.n, self.scene.pixel_A, self.cfg.pixel_size_A
        spec = np.fft.rfft2(images)
        ky, kx = np.fft.fftfreq(h, d=s), np.fft.rfftfreq(h, d=s)
        half = h // 2
        box_y = np.sinc(ky * p) / np.sinc(ky * s)
        box_x = np.sinc(kx * p) / np.sinc(kx * s)
        spec = spec * box_y[:, None] * box_x[None, :] * (n * n) / (h * h)
        out = np.zeros((d, n, n // 2 + 1), np.complex64)
        out[:, :half, :half] = spec[:, :half, :half]  # the Nyquist row / column (~0 here) is dropped
        out[:, n - half + 1 :, :half] = spec[:, half + 1 :, :half]
        return out

    def state(self, k: int) -> SceneState:
        """The specimen at frame ``k`` as last rendered (``render_interval_s`` steps)."""
        c = self.cfg
        t = (k // self.frames_per_render) * self.frames_per_render * self.dt
        variant = c.event if c.event_frame is not None and k >= c.event_frame else "base"
        if variant != "base" and c.event_frame is not None:  # an event is shown from its own frame on
            t = max(t, c.event_frame * self.dt)
        lo, hi = float(self.scene.defocus_nm[0]), float(self.scene.defocus_nm[-1])
        travel = (c.focus_nm - lo) + c.focus_rate_nm_per_s * t  # bounce between the series' ends
        span = hi - lo
        phase = travel % (2 * span) if span > 0 else 0.0
        focus = lo + (phase if phase <= span else 2 * span - phase)
        ang = math.radians(c.drift_angle_deg)
        d_px = c.drift_A_per_s * t / c.pixel_size_A
        centre = 0.5 * (self.ratio - 1.0)  # bundle pixel centres -> detector pixel centres
        return SceneState(variant, focus, (centre - d_px * math.sin(ang), centre + d_px * math.cos(ang)))

    def render(self, state: SceneState) -> np.ndarray:
        """Clean scene (n x n, vacuum = 1) at the state's focus and sub-pixel part of its shift."""
        spectra = self._spectra[state.variant]
        z = self.scene.defocus_nm
        i = int(np.clip(np.searchsorted(z, state.focus_nm) - 1, 0, len(z) - 2))
        w = np.float32((state.focus_nm - z[i]) / (z[i + 1] - z[i]))  # float32: a float64 scalar would
        spec = (1 - w) * spectra[i] + w * spectra[i + 1]  # make the whole render complex128 (2-3x the cost)
        fy, fx = (s - math.floor(s) for s in state.shift_px)
        ky, kx = np.fft.fftfreq(self.n), np.fft.rfftfreq(self.n)
        ramp = (
            np.exp(-2j * np.pi * ky * fy).astype(np.complex64)[:, None]
            * np.exp(-2j * np.pi * kx * fx).astype(np.complex64)[None, :]
        )
        return np.fft.irfft2(spec * ramp, s=(self.n, self.n)).astype(np.float32, copy=False)

    def placement(self, state: SceneState) -> tuple[slice, slice, slice, slice]:
        """(frame rows, frame cols, scene rows, scene cols) where the rendered scene lands."""
        hf, wf = self.cfg.shape
        r0 = self.origin[0] + math.floor(state.shift_px[0])
        c0 = self.origin[1] + math.floor(state.shift_px[1])
        fr = slice(max(r0, 0), min(r0 + self.n, hf))
        fc = slice(max(c0, 0), min(c0 + self.n, wf))
        return fr, fc, slice(fr.start - r0, fr.stop - r0), slice(fc.start - c0, fc.stop - c0)

    def clean(self, k: int) -> np.ndarray:
        """Clean frame k (vacuum = 1), the whole detector frame; cached while the state is unchanged."""
        return self._rendered(k)[0] / np.float32(self.cfg.dose)

    def expected(self, k: int) -> np.ndarray:
        """Expected counts per detector pixel of frame k (the same array for every frame of one render)."""
        return self._rendered(k)[0]

    def _rendered(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(expected counts, table index of the scene's footprint) of frame k, rendered on a new state."""
        st = self.state(k)
        if self._cache is None or self._cache[0] != st:
            frame = np.ones(self.cfg.shape, np.float32)
            fr, fc, sr, sc = self.placement(st)
            if fr.stop > fr.start and fc.stop > fc.start:
                frame[fr, fc] = np.clip(self.render(st)[sr, sc], 0.0, None)
            frame *= np.float32(self.cfg.dose)
            self._cache = (st, frame, self.table.index(frame[fr, fc]))
        return self._cache[1], self._cache[2]

    def counts(self, k: int, rng: np.random.Generator, vacuum: np.ndarray | None = None) -> np.ndarray:
        """Counts of frame k: ``vacuum`` (a pre-drawn Poisson frame; else one drawn from the table) with
        the scene's footprint drawn fresh from the table."""
        _, index = self._rendered(k)
        if vacuum is None:
            if self._vacuum_index is None:
                self._vacuum_index = self.table.index(np.full(self.cfg.shape, self.cfg.dose, np.float32))
            vacuum = self.table.draw(self._vacuum_index, rng)
        out = vacuum.astype(np.dtype(self.cfg.dtype), copy=True)
        fr, fc, _, _ = self.placement(self.state(k))
        out[fr, fc] = self.table.draw(index, rng)
        return out

    def to_frame(self, xy_bundle: np.ndarray, k: int) -> np.ndarray:
        """Bundle [row, col] pixel coordinates -> detector [row, col] in frame k (drift included)."""
        st = self.state(k)
        xy = np.asarray(xy_bundle, np.float64).reshape(-1, 2) * self.ratio
        return xy + np.array(self.origin) + np.array(st.shift_px)

    def columns(self, k: int) -> dict[str, np.ndarray]:
        """The atomic columns shown in frame k, in detector pixels (xy), with species and is_surface."""
        cols = self.scene.columns[self.state(k).variant]
        return {
            "xy": self.to_frame(cols["xy"], k),
            "species": cols["species"],
            "is_surface": cols["is_surface"],
        }

    def event_truth(self) -> dict | None:
        """When, what and where the event happens (detector pixels at the event frame), or None."""
        c = self.cfg
        if c.event_frame is None:
            return None
        ev = dict(self.scene.events[c.event])
        k = c.event_frame
        truth = {"frame": k, "seq": c.first_seq + k, "t_s": k * self.dt, "variant": c.event, **ev}
        truth["xy_px"] = self.to_frame(np.array(ev["xy_px"]), k)[0].tolist()
        if "to_xy_px" in ev:
            truth["to_xy_px"] = self.to_frame(np.array(ev["to_xy_px"]), k)[0].tolist()
        return truth

    def describe(self) -> dict:
        """The scene and its motion, for the series' metadata."""
        c = self.cfg
        return {
            "scene": self.scene.name,
            "scene_pixel_A": self.scene.pixel_A,
            "drift_A_per_s": c.drift_A_per_s,
            "drift_angle_deg": c.drift_angle_deg,
            "focus_nm": c.focus_nm,
            "focus_rate_nm_per_s": c.focus_rate_nm_per_s,
            "event": self.event_truth(),
        }
