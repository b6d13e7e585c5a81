"""The batch-stage paths ``bench_gpu_k2`` measures beside the product's ``BatchStage.process``.

Every path runs the product's own device code (``bin_counts`` -> ``Denoiser.denoise`` -> ``unbin``, the
denoised part of ``BatchStage.process_tensor``) and differs only in how the batch gets there and back:

* staged: the frames are copied into one host buffer reused across batches (page-locked on CUDA:
  ``torch.empty(..., pin_memory=True)``) in the detector's own dtype (uint8 when the counts fit, else
  uint16), sent with one ``non_blocking`` copy on a CUDA stream, and the result comes back into a
  reused (pinned) host buffer. The product instead stacks pageable arrays and downloads into a fresh
  57 MB array per K2 frame.
* fp16 / bf16: the network under ``torch.autocast`` (weights stay fp32; the model's output is cast back
  to float32 by the denoiser before fusing), on CUDA or, for bf16 / fp16, on a CPU that supports it.
* graph: bin -> denoise -> unbin captured once as a CUDA graph for the batch's fixed shape (after a
  warm-up on the side stream it is captured on) and replayed: no Python or launch cost per kernel.
* whole: one tile per working frame (tile = the frame rounded up), not the card's CPU-sized tiles.
* slots = 2: two sets of buffers, streams (and graphs), so one batch's host staging and copies overlap
  the other's compute.
* working: the result is downloaded at the engine's working pixel (k^2 fewer bytes), not at detector
  pixels: what publishing at the working pixel would give.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from sbd_stream.compute.binning import bin_counts, binned_shape, unbin
from sbd_stream.compute.quality import paper_psnr
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchStage

DTYPES: dict[str, tuple[type[np.unsignedinteger[Any]], torch.dtype]] = {
    "uint8": (np.uint8, torch.uint8),
    "uint16": (np.uint16, torch.uint16),
}
AMP = {"fp16": torch.float16, "bf16": torch.bfloat16}
SAMPLES = Path(__file__).resolve().parents[1] / "sbd_stream" / "samples" / "pt_ceo2_test.h5"


@dataclass(frozen=True)
class Variant:
    name: str
    product: bool = False  # the product's BatchStage.process as it is (pageable arrays)
    pinned_product: bool = False  # the product path with PinnedBatchStage's upload / download (CUDA)
    upload: str = "uint16"  # the frames' dtype on the host and over the bus
    precision: str = "fp32"  # fp32, fp16 or bf16 (autocast)
    graph: bool = False  # CUDA graph of bin -> denoise -> unbin
    whole: bool = False  # one tile per working frame instead of the card's tiling
    slots: int = 1  # buffer/stream sets in flight (2: staging and copies overlap compute)
    cudnn_benchmark: bool = False
    working: bool = False  # download at the working pixel (no return to detector pixels)

    def unavailable(self, device: torch.device) -> str | None:
        """Why this variant cannot run on ``device`` (None: it can)."""
        if device.type != "cuda" and (self.graph or self.slots > 1 or self.pinned_product):
            return "needs CUDA (graphs / streams / pinned memory)"
        return None


VARIANTS = [
    Variant("baseline", product=True),
    Variant("product_pinned", product=True, pinned_product=True),
    Variant("best", upload="uint8", precision="bf16", graph=True, whole=True, slots=2, cudnn_benchmark=True),
    Variant("staged_u8", upload="uint8"),
    Variant("graph_bf16", upload="uint8", precision="bf16", graph=True),
    Variant("bf16", upload="uint8", precision="bf16"),
    Variant("fp16", upload="uint8", precision="fp16"),
    Variant("graph", upload="uint8", graph=True),
    Variant("whole_graph_bf16", upload="uint8", precision="bf16", graph=True, whole=True),
    Variant("staged_u16", upload="uint16"),
    Variant("baseline_u8", product=True, upload="uint8"),
    Variant(
        "best_working",
        upload="uint8",
        precision="bf16",
        graph=True,
        whole=True,
        slots=2,
        cudnn_benchmark=True,
        working=True,
    ),
]


def clean_frame(shape: tuple[int, int], detector_px: float, index: int = 0) -> np.ndarray:
    """A clean frame (vacuum = 1) at the detector's pixel: a bundled held-out test image brought to that
    pixel (bicubic; the images are band-limited) and wrap-tiled to ``shape``; a lattice if unreadable."""
    try:
        import h5py

        with h5py.File(SAMPLES, "r") as f:
            imgs = f["images"]
            img = np.asarray(imgs[index % imgs.shape[0]], np.float32)
            px = float(f.attrs["pixel_size_A"])
    except (ImportError, OSError, KeyError):
        rr, cc = np.mgrid[0:256, 0:256].astype(np.float32)
        img = 1.0 - 0.5 * (np.cos(2 * np.pi * rr / 11.7) * np.cos(2 * np.pi * cc / 11.7)).clip(0, 1)
        px = detector_px * 4
    scale = px / detector_px
    if abs(scale - 1.0) > 1e-3:
        t = torch.from_numpy(img)[None, None]
        img = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)[0, 0].numpy()
    h, w = shape
    reps = (-(-h // img.shape[0]), -(-w // img.shape[1]))
    r0, c0 = (img.shape[0] - h) // 2 if reps[0] == 1 else 0, (img.shape[1] - w) // 2 if reps[1] == 1 else 0
    return (
        np.ascontiguousarray(np.tile(img, reps)[r0 : r0 + h, c0 : c0 + w]).clip(0.0, None).astype(np.float32)
    )


def make_frames(
    clean: list[np.ndarray], counts_per_px: float, dtype: str, device: torch.device, seed: int = 0
) -> list[np.ndarray]:
    """Poisson counts of each clean frame (drawn on the device when it is a GPU: 14 Mpx in ms)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    np_dt, _ = DTYPES[dtype]
    out = []
    for c in clean:
        lam = torch.from_numpy(c).to(device) * counts_per_px
        counts = torch.poisson(lam, generator=gen)
        top = float(counts.max())
        if top > np.iinfo(np_dt).max:
            raise ValueError(f"counts up to {top:.0f} do not fit {dtype}")
        out.append(counts.cpu().numpy().astype(np_dt))
    return out


def as_frames(arrays: Sequence[np.ndarray]) -> list[Frame]:
    return [Frame(FrameHeader("bench", i, 0.0, a.shape, str(a.dtype)), a) for i, a in enumerate(arrays)]


def quality(out: np.ndarray, ref: np.ndarray, expected: np.ndarray, ref_db: float) -> dict[str, float]:
    """One frame against the fp32 product output ``ref`` (counts; its paper PSNR ``ref_db``) and the
    clean expectation (paper PSNR)."""
    db = paper_psnr(out, expected)
    return {
        "max_abs_err_counts": float(np.max(np.abs(out - ref))),
        "paper_psnr_db": db,
        "paper_psnr_delta_db": db - ref_db,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def product_phases(stage: BatchStage, frames: Sequence[np.ndarray]) -> dict[str, float]:
    """The product path of one batch cut into synchronised phases (ms): why it takes what it takes."""
    dev = stage.device
    _sync(dev)
    t0 = time.perf_counter()
    raw = stage.upload(frames)
    _sync(dev)
    t1 = time.perf_counter()
    out = stage.process_tensor(raw)
    _sync(dev)
    t2 = time.perf_counter()
    stage.download(out.packed)
    t3 = time.perf_counter()
    return {"upload_ms": 1e3 * (t1 - t0), "compute_ms": 1e3 * (t2 - t1), "download_ms": 1e3 * (t3 - t2)}


class PinnedBatchStage(BatchStage):
    """A candidate product change (CUDA only): the batch is stacked straight into a page-locked buffer
    (the one host copy ``np.stack`` makes anyway) and downloaded into another, both from torch's caching
    host allocator: nothing is reused by hand, a buffer goes back to the cache when its arrays die (a
    sink holding a frame keeps it), and a non_blocking upload keeps its buffer until the copy is done."""

    PINNABLE = (np.uint8, np.uint16, np.int16, np.int32, np.float32)

    def upload(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        first = np.asarray(frames[0])
        if self.device.type != "cuda" or first.dtype.type not in self.PINNABLE:
            return super().upload(frames)
        dtype = torch.from_numpy(np.empty(0, first.dtype)).dtype
        buf = torch.empty((len(frames), *first.shape), dtype=dtype, pin_memory=True)
        host = buf.numpy()
        for i, f in enumerate(frames):
            host[i] = f
        return buf.to(self.device, non_blocking=True)

    @staticmethod
    def download(packed: torch.Tensor | list[torch.Tensor]) -> np.ndarray | list[np.ndarray]:
        if isinstance(packed, list) or packed.device.type != "cuda":  # a list: parts left unpacked (CPU)
            return BatchStage.download(packed)
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        host.copy_(packed.detach())
        return host.numpy()


class _Slot:
    """One set of reused buffers: host in (pinned on CUDA), device in, host out, stream, graph."""

    def __init__(
        self, b: int, shape: tuple[int, int], out_shape: tuple[int, int], dtype: str, dev: torch.device
    ):
        cuda = dev.type == "cuda"
        tdt = DTYPES[dtype][1]
        self.pinned = cuda
        self.host_in = self._host(torch.zeros, (b, *shape), tdt)
        self.host_in_np = self.host_in.numpy()
        self.dev_in = self.host_in.to(dev) if cuda else self.host_in  # zeros (no uint16 fill on every GPU)
        self.host_out = self._host(torch.empty, (b, *out_shape), torch.float32)
        self.stream = torch.cuda.Stream(dev) if cuda else None
        self.done = torch.cuda.Event() if cuda else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_out: torch.Tensor | None = None
        self.result: np.ndarray | None = None

    def _host(self, make, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A host buffer, page-locked where it can be (else pageable, and the row says pinned: false)."""
        if self.pinned:
            try:
                return make(shape, dtype=dtype, pin_memory=True)
            except RuntimeError:
                self.pinned = False
        return make(shape, dtype=dtype)


class StagedPath:
    """The faster paths (module docstring) for one variant and a fixed batch size."""

    def __init__(self, stage: BatchStage, v: Variant, batch: int, shape: tuple[int, int]) -> None:
        self.stage, self.v, self.b, self.shape = stage, v, batch, shape
        self.dev = stage.device
        self.cuda = self.dev.type == "cuda"
        g = stage.geometry
        out_shape = binned_shape(*shape, g.bin) if v.working else shape
        self.slots = [_Slot(batch, shape, out_shape, v.upload, self.dev) for _ in range(v.slots)]
        self.pinned = all(s.pinned for s in self.slots)
        self.i = 0
        for s in self.slots:
            if s.stream is not None:
                s.stream.wait_stream(torch.cuda.current_stream(self.dev))
            if v.graph:
                self._capture(s)
        _sync(self.dev)

    def _amp(self) -> contextlib.AbstractContextManager:
        if self.v.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.dev.type, dtype=AMP[self.v.precision], cache_enabled=False)

    def _device_part(self, x: torch.Tensor) -> torch.Tensor:
        g = self.stage.geometry
        with torch.inference_mode():
            with self._amp():
                den_w = self.stage.denoiser.denoise(bin_counts(x, g.bin), dose=g.vacuum_counts)
            den_w = den_w.to(torch.float32)
            out = den_w if self.v.working else unbin(den_w, g.bin, self.shape, self.stage.upsample)
            return out.contiguous()  # one D2H copy of a dense buffer (unbin's crop is a strided view)

    def _capture(self, s: _Slot) -> None:
        assert s.stream is not None  # graphs run on CUDA only (Variant.unavailable)
        with torch.cuda.stream(s.stream):  # warm-up on the side stream: tile plans, windows, cuDNN choice
            for _ in range(2):
                self._device_part(s.dev_in)
        torch.cuda.current_stream(self.dev).wait_stream(s.stream)
        _sync(self.dev)
        s.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(s.graph, stream=s.stream):
            s.static_out = self._device_part(s.dev_in)
        _sync(self.dev)

    def submit(self, frames: Sequence[np.ndarray]) -> _Slot:
        """Stage a full batch into the next slot and queue upload, compute and download (async on CUDA)."""
        if len(frames) != self.b:
            raise ValueError(f"this path has a fixed batch of {self.b}, got {len(frames)} frames")
        s = self.slots[self.i % len(self.slots)]
        self.i += 1
        if s.done is not None:
            s.done.synchronize()  # its previous batch has left the host buffers
        for j, f in enumerate(frames):
            s.host_in_np[j] = f
        if not self.cuda:
            s.result = self._device_part(s.dev_in).numpy()
            return s
        assert s.done is not None  # a CUDA slot has its event
        with torch.cuda.stream(s.stream):
            s.dev_in.copy_(s.host_in, non_blocking=True)
            out = self._replay(s)
            s.host_out.copy_(out, non_blocking=True)
            s.done.record(s.stream)
        return s

    def _replay(self, s: _Slot) -> torch.Tensor:
        """The device part on ``s.dev_in``: its graph replayed (into the static output), or run."""
        if s.graph is None:
            return self._device_part(s.dev_in)
        assert s.static_out is not None  # captured with the graph
        s.graph.replay()
        return s.static_out

    def collect(self, s: _Slot) -> np.ndarray:
        if not self.cuda:
            assert s.result is not None  # submit computed it on the host
            return s.result
        assert s.done is not None  # a CUDA slot has its event
        s.done.synchronize()
        return s.host_out.numpy()

    def phases(self, frames: Sequence[np.ndarray]) -> dict[str, float]:
        """One batch cut into phases (ms): host staging (wall), then upload, compute, download (events)."""
        s = self.slots[0]
        if s.done is not None:
            s.done.synchronize()
        t0 = time.perf_counter()
        for j, f in enumerate(frames):
            s.host_in_np[j] = f
        stage_ms = 1e3 * (time.perf_counter() - t0)
        if not self.cuda:
            t0 = time.perf_counter()
            self._device_part(s.dev_in)
            return {"stage_ms": stage_ms, "compute_ms": 1e3 * (time.perf_counter() - t0)}
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.cuda.stream(s.stream):
            ev[0].record()
            s.dev_in.copy_(s.host_in, non_blocking=True)
            ev[1].record()
            out = self._replay(s)
            ev[2].record()
            s.host_out.copy_(out, non_blocking=True)
            ev[3].record()
        ev[3].synchronize()
        return {
            "stage_ms": stage_ms,
            "upload_ms": ev[0].elapsed_time(ev[1]),
            "compute_ms": ev[1].elapsed_time(ev[2]),
            "download_ms": ev[2].elapsed_time(ev[3]),
        }


def time_loop(step, collect, batch: int, seconds: float, depth: int = 1) -> tuple[int, float]:
    """Run ``step()`` (returns a handle) until ``seconds`` passed, ``depth`` handles in flight; frames, s."""
    pending: list = []
    n, t0 = 0, time.perf_counter()
    while True:
        pending.append(step())
        if len(pending) >= depth:
            collect(pending.pop(0))
        n += batch
        dt = time.perf_counter() - t0
        if (dt >= seconds and n >= 2 * batch) or dt >= 4 * seconds:
            break
    for h in pending:
        collect(h)
    return n, time.perf_counter() - t0
