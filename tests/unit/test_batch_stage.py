"""The pure batch stage (service/batch.py): geometry, outputs at the detector's sampling, two transfers."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from sbd_stream.compute.binning import SamplingError
from sbd_stream.config import DetectorSettings, LikelihoodSettings
from sbd_stream.engines.card import load_card
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchResult, BatchStage, plan_geometry


def _frames(n: int, shape: tuple[int, int], lam: float, dtype: str = "uint16", seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        data = rng.poisson(lam, size=shape).astype(dtype)
        out.append(Frame(FrameHeader("acq", i, time.time(), shape, dtype), data))
    return out


def test_geometry_bins_the_paper_detector_4x4_and_keeps_dose_per_area(binning_engine_dir: Path) -> None:
    card = load_card(binning_engine_dir)
    g = plan_geometry(DetectorSettings(), card)  # the paper's K2: 0.060 A, 125 e/A^2
    assert g.bin == 4
    assert g.detector.vacuum_counts == pytest.approx(0.45)
    assert g.vacuum_counts == pytest.approx(7.2)  # 16 detector pixels at 0.45
    assert g.dose_factor == pytest.approx(1.0) and g.dose_in_range
    half = plan_geometry(DetectorSettings(counts_per_px=0.45, pixel_size_A=0.12), card)
    assert half.bin == 2 and half.dose_factor == pytest.approx(0.25) and not half.dose_in_range
    with pytest.raises(SamplingError, match=r"0\.3 A is coarser"):
        plan_geometry(DetectorSettings(pixel_size_A=0.3), card)


def test_the_working_pixel_stated_is_the_one_the_engine_sees(binning_engine_dir: Path) -> None:
    """Within the 5 % tolerance a bin of 5 serves 0.05 A detector pixels on a 0.24 A engine: the frames
    are denoised at 0.25 A, and that is what the outputs' ``working_pixel_A`` says (audit h36: it gave
    the card's 0.24, so a reader taking positions in the working frame from it was 4 % off)."""
    card = load_card(binning_engine_dir)
    assert card.pixel_size_A == pytest.approx(0.24)
    g = plan_geometry(DetectorSettings(pixel_size_A=0.05, counts_per_px=0.45), card)
    assert g.bin == 5 and g.working_pixel_A == 0.25 and g.describe()["working_pixel_A"] == 0.25
    assert plan_geometry(DetectorSettings(), card).working_pixel_A == 0.24  # 4 x 0.060, exactly as stated
    odd = plan_geometry(DetectorSettings(pixel_size_A=0.048, counts_per_px=0.45), card)
    assert odd.bin == 5 and odd.working_pixel_A == 0.24  # 6 digits: not 0.24000000000000002
    r = plan_geometry(DetectorSettings(pixel_size_A=0.1, counts_per_px=0.45), card)  # resampled by 2.4
    assert r.bin == pytest.approx(2.4) and r.working_pixel_A == 0.24


def test_detector_dose_has_two_forms_that_agree() -> None:
    a = DetectorSettings(pixel_size_A=0.060, counts_per_px=0.45)
    assert a.dose_per_area == pytest.approx(125.0)
    b = DetectorSettings(pixel_size_A=0.060, dose_e_per_A2=125.0)
    assert b.vacuum_counts == pytest.approx(0.45)
    with pytest.raises(ValueError, match="not both"):
        DetectorSettings(dose_e_per_A2=125.0, counts_per_px=0.45)


@pytest.mark.parametrize("shape", [(96, 128), (101, 77)])
def test_outputs_have_the_input_shape_in_counts_per_detector_pixel(
    binning_engine_dir: Path, shape: tuple[int, int]
) -> None:
    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    stage = BatchStage(den, DetectorSettings(), LikelihoodSettings(enabled=True, vacuum_block_A=2.0))
    frames = _frames(3, shape, 0.45)
    res = stage.process(frames)
    assert res.denoised.shape == (3, *shape) and res.denoised.dtype == np.float32
    assert res.likelihood is not None and res.likelihood.shape == (3, *shape)
    assert res.columns is not None and len(res.columns) == 3
    assert res.vacuum is not None and res.vacuum.shape == (3,)
    # the same numbers as running the engine on the binned frames by hand, then interpolating back
    from sbd_stream.compute.binning import bin_counts, unbin

    raw = torch.from_numpy(np.stack([f.data for f in frames]).astype(np.float32))
    by_hand = unbin(den.denoise(bin_counts(raw, 4), dose=7.2), 4, shape, stage.upsample).numpy()
    np.testing.assert_allclose(res.denoised, by_hand, rtol=1e-5, atol=1e-6)
    for cols in res.columns:  # centres inside the detector frame, region means per detector pixel
        if len(cols):
            assert cols[:, :2].min() >= 0
            assert cols[:, 0].max() <= shape[0] - 1 and cols[:, 1].max() <= shape[1] - 1


def test_a_column_in_the_partial_last_block_lies_on_the_frame_edge(binning_engine_dir: Path) -> None:
    """Issue 25: bin 4, 101 rows: the bottom working row holds detector row 100 only (the rest is
    reflected padding), so a column found there is reported at row 100.0, not at 101.5 outside the frame."""
    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    stage = BatchStage(den, DetectorSettings(), LikelihoodSettings(enabled=True, vacuum_block_A=2.0))
    shape = (101, 77)
    data = np.random.default_rng(0).poisson(0.45, shape).astype(np.uint16)
    data[99:101, 36:42] = 60  # a bright column on the bottom edge
    res = stage.process([Frame(FrameHeader("acq", 0, time.time(), shape, "uint16"), data)])
    assert res.columns is not None
    cols = res.columns[0]
    bottom = cols[cols[:, 0] > 96]
    assert len(bottom) >= 1, "the edge column must be detected for this test to mean anything"
    assert bottom[:, 0].tolist() == [100.0] * len(bottom)
    # full blocks keep their centre (i + 1/2) 4 - 1/2; columns: 77 = 19 x 4 + 1, the last block is col 76
    assert set(((cols[:, 1] + 0.5) % 4).tolist()) <= {2.0, 0.5}
    assert cols[:, 1].max() <= 76.0


def test_evidence_frames_score_columns_on_the_counts_of_the_frames_before(binning_engine_dir: Path) -> None:
    """evidence_frames=2: each frame's LLRs are those of the hand-summed counts of the (up to) two frames
    before it, never of later batch-mates (they were: frame 1 of a batch was scored on frames 0 + 2, so
    a map depended on how the frames happened to be batched; audit 23)."""
    from sbd_stream.compute.binning import bin_counts
    from sbd_stream.compute.likelihood import LikelihoodStage

    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    settings = LikelihoodSettings(enabled=True, vacuum_block_A=2.0, evidence_frames=2)
    stage = BatchStage(den, DetectorSettings(), settings)
    frames = _frames(4, (128, 128), 0.45)
    lone = Frame(FrameHeader("other", 0, time.time(), (128, 128), "uint16"), frames[0].data.copy())
    res = stage.process([*frames, lone])
    assert res.evidence_frames is not None and res.evidence_frames.tolist() == [0, 1, 2, 2, 0]
    own = BatchStage(den, DetectorSettings(), LikelihoodSettings(enabled=True, vacuum_block_A=2.0))
    ref_own = own.process([*frames, lone])
    assert ref_own.evidence_frames is not None and not ref_own.evidence_frames.any()
    np.testing.assert_allclose(res.denoised, ref_own.denoised)  # evidence changes the scores only
    # by hand at the working pixel: frame 3 is scored on frames 2 + 1, against its denoised rates times
    # their summed dose over its own (~2: the frames' mean counts; audit 24, compute/evidence.py)
    binned = bin_counts(torch.from_numpy(np.stack([f.data for f in frames]).astype(np.float32)), 4)
    den_w = den.denoise(binned, dose=7.2)
    hand = LikelihoodStage(settings.at_pixel(stage.geometry.working_pixel_A), "cpu")
    mean = binned.mean(dim=(1, 2))
    scale = mean[1] / mean[3] + mean[2] / mean[3]
    assert float(scale) == pytest.approx(2.0, rel=0.02)
    ref = hand.compute((binned[1] + binned[2])[None], den_w[3][None] * scale)
    assert res.columns is not None and res.vacuum is not None and res.columns[3].shape[0] == len(ref.llr)
    np.testing.assert_allclose(res.columns[3][:, 2], ref.llr.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.columns[3][:, 3], ref.lam1.numpy() / float(scale) / 16, rtol=1e-5)
    assert res.scored_vacuum is not None
    assert res.scored_vacuum[3] == pytest.approx(float(ref.lam0[0]) / float(scale) / 16, rel=1e-5)
    # meta.vacuum_counts is the frame's own level, from its own counts (it was the evidence sum's)
    own_level = float(hand.vacuum(binned[3][None], den_w[3][None], masked=True)[0]) / 16
    assert res.vacuum[3] == pytest.approx(own_level, rel=1e-5)
    # the first frame has none before it: its own counts, as without evidence; each frame's map is the
    # one it gets alone with the frames before it handed in (the batch changes nothing)
    np.testing.assert_allclose(res.likelihood[0], ref_own.likelihood[0], rtol=1e-5, atol=1e-5)
    alone = stage.process([frames[2]], earlier=frames[:2])
    np.testing.assert_allclose(alone.likelihood[0], res.likelihood[2], rtol=1e-5, atol=1e-5)
    # the lone frame of another series has no neighbour: its own counts, exactly as without evidence
    np.testing.assert_allclose(res.columns[4], ref_own.columns[4], rtol=1e-5, atol=1e-5)


def test_evidence_comes_from_kept_earlier_frames_when_batches_are_single_frames(
    binning_engine_dir: Path,
) -> None:
    """Live at 40 Hz batches are often one frame: the acquisition's kept frames supply the evidence."""
    from sbd_stream.compute.binning import bin_counts
    from sbd_stream.compute.likelihood import LikelihoodStage
    from sbd_stream.service.evidence_history import EvidenceHistory

    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    settings = LikelihoodSettings(enabled=True, vacuum_block_A=2.0, evidence_frames=2)
    stage = BatchStage(den, DetectorSettings(), settings)
    history = EvidenceHistory(2)
    frames = _frames(5, (128, 128), 0.45, seed=4)
    results = [stage.process([f], history.take([f])) for f in frames]
    used = [int(r.evidence_frames[0]) for r in results]  # type: ignore[index]
    assert used == [0, 1, 2, 2, 2]
    assert [int(r.evidence_frames[0]) for r in (stage.process([f]) for f in frames)] == [0] * 5  # pure
    binned = bin_counts(torch.from_numpy(np.stack([f.data for f in frames]).astype(np.float32)), 4)
    den_w = den.denoise(binned, dose=7.2)
    hand = LikelihoodStage(settings.at_pixel(stage.geometry.working_pixel_A), "cpu")
    ref = hand.compute((binned[2] + binned[3])[None], 2 * den_w[4][None])  # frame 4 on frames 3 + 2
    cols = results[4].columns
    assert cols is not None
    np.testing.assert_allclose(cols[0][:, 2], ref.llr.numpy(), rtol=1e-4, atol=1e-4)
    # another series starts: nothing of the previous one counts as evidence
    other = Frame(FrameHeader("next", 0, time.time(), (128, 128), "uint16"), frames[0].data.copy())
    assert int(stage.process([other], history.take([other])).evidence_frames[0]) == 0  # type: ignore[index]


def test_a_new_series_or_a_restart_of_the_same_acquisition_forgets_the_kept_frames(
    binning_engine_dir: Path,
) -> None:
    """Evidence leaked across a series_start of the same acq: seq 1 of the new series was scored on
    seq 0 of the old one (another specimen state)."""
    import dataclasses

    from sbd_stream.service.evidence_history import EvidenceHistory

    history = EvidenceHistory(2)
    old = _frames(5, (16, 16), 0.45, seed=5)
    for f in old:
        history.take([f])
    new = _frames(2, (16, 16), 0.45, seed=6)  # the same acq, numbered from 0 again
    history.forget("acq")  # what the intake does at the new series_start, in arrival order
    assert history.take([new[0]]) == [] and history.take([new[1]]) == [new[0]]
    for f in old:
        history.take([f])
    restarted = dataclasses.replace(new[1], seq_restart=True)  # a sender that came back, no series_start
    assert history.take([restarted]) == []


def test_a_fixed_vacuum_level_is_per_detector_pixel_and_scales_with_the_frames_scored(
    binning_engine_dir: Path,
) -> None:
    """``vacuum_mode = fixed`` compared the level as given with working-pixel counts summed over the
    evidence frames: vacuum scored as columns of LLR 260-1750. Per detector pixel, it matches."""
    from sbd_stream.service.evidence_history import EvidenceHistory

    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    kw = dict(enabled=True, vacuum_block_A=2.0, evidence_frames=4, vacuum_mode="fixed")
    stage = BatchStage(den, DetectorSettings(), LikelihoodSettings(**kw, vacuum_counts=0.45))
    assert stage.geometry.bin == 4
    np.testing.assert_allclose(stage._fixed_vacuum(torch.tensor([0.0, 1.0, 4.0])), [7.2, 7.2, 28.8])
    history = EvidenceHistory(4)
    frames = _frames(6, (128, 128), 0.45, seed=7)  # vacuum only
    results = [stage.process([f], history.take([f])) for f in frames]
    assert int(results[-1].evidence_frames[0]) == 4  # type: ignore[index]
    for r in results:  # no column in pure vacuum has strong support (it had hundreds of nats)
        assert r.columns is not None and (r.columns[0][:, 2] < 20).all(), r.columns[0][:, 2]


def _likelihood_through_workers(engine_dir: Path, frames: list[Frame], n_workers: int) -> list[BatchResult]:
    """``frames`` (queued up front, batches of 2) through a pool of ``n_workers`` with one shared history."""
    import threading

    from sbd_stream.config import BackpressurePolicy
    from sbd_stream.frames import FrameQueue
    from sbd_stream.metrics import Metrics
    from sbd_stream.service.batching import Batcher
    from sbd_stream.service.evidence_history import EvidenceHistory
    from sbd_stream.service.workers import WorkerPool, WorkerSpec
    from sbd_stream.supervisor import Supervisor

    settings = LikelihoodSettings(enabled=True, vacuum_block_A=2.0, evidence_frames=2)
    stages = [
        BatchStage(Denoiser.load("torch", engine_dir, device="cpu"), DetectorSettings(), settings)
        for _ in range(n_workers)
    ]
    q = FrameQueue(len(frames) + 1)
    for f in frames:
        q.put(f, f.data.nbytes)
    out: list[BatchResult] = []
    done = threading.Event()

    def emit(res: BatchResult) -> None:
        out.append(res)
        if sum(len(r) for r in out) == len(frames):
            done.set()

    m = Metrics()
    specs = [WorkerSpec(i, "cpu", None) for i in range(n_workers)]
    batcher = Batcher(q, 2, 1.0, BackpressurePolicy.lossless)
    pool = WorkerPool(stages, specs, batcher, m, Supervisor(m), emit, lambda _msg: None, EvidenceHistory(2))
    pool.start()
    try:
        assert done.wait(120)
    finally:
        pool.stop()
        q.close()
        pool.join(10)
    return out


def test_the_same_input_gives_the_same_likelihood_maps_with_one_and_with_two_workers(
    binning_engine_dir: Path,
) -> None:
    """Evidence frames belong to the acquisition, not to a worker: who took a batch changes nothing."""
    frames = _frames(10, (128, 128), 0.45, seed=7)
    one = _likelihood_through_workers(binning_engine_dir, frames, 1)
    two = _likelihood_through_workers(binning_engine_dir, frames, 2)
    assert (
        [h.seq for r in one for h in r.headers] == [h.seq for r in two for h in r.headers] == list(range(10))
    )
    used = [int(u) for r in one for u in r.evidence_frames]  # type: ignore[union-attr]
    assert used == [0, 1, 2, 2, 2, 2, 2, 2, 2, 2]  # the frames before, never later batch-mates
    assert used == [int(u) for r in two for u in r.evidence_frames]  # type: ignore[union-attr]
    for a, b in zip(one, two, strict=True):
        assert a.likelihood is not None and b.likelihood is not None
        np.testing.assert_allclose(a.likelihood, b.likelihood, rtol=1e-5, atol=1e-5)
        for ca, cb in zip(a.columns or [], b.columns or [], strict=True):
            np.testing.assert_allclose(ca, cb, rtol=1e-5, atol=1e-5)


class _Transfers(TorchFunctionMode):
    """Counts the calls that bring device data to the host (on a GPU each one is a copy and a sync).

    ``.to(device)`` on a tensor already on the stage's device is no copy on any device, so only the
    host boundary is counted: NumPy views, Python scalars and lists, truth values, ``.cpu()``.
    """

    DOWN = frozenset({"cpu", "numpy", "tolist", "item", "__int__", "__float__", "__bool__", "__index__"})

    def __init__(self) -> None:
        super().__init__()
        self.down = 0
        self.up = 0
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in self.DOWN:
            self.down += 1
            self.calls.append(name)
        return func(*args, **kwargs)


def test_one_upload_and_one_download_per_batch_on_the_torch_path(
    binning_engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a device (packing on, as on a GPU: ``pack_on_device``), the structure a GPU needs; the
    CPU's own path is the next test."""
    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    lk = LikelihoodSettings(enabled=True, vacuum_block_A=2.0, evidence_frames=2)  # evidence adds no copy
    stage = BatchStage(den, DetectorSettings(), lk)
    monkeypatch.setattr(stage, "pack_on_device", lambda device: True)
    frames = _frames(4, (128, 128), 0.45)
    stage.process(frames)  # warm: plans and windows are cached on first use
    uploads = {"n": 0}
    for name in ("from_numpy", "tensor", "as_tensor"):
        real = getattr(torch, name)

        def counted(*a, _real=real, **k):  # type: ignore[no-untyped-def]
            uploads["n"] += 1
            return _real(*a, **k)

        monkeypatch.setattr(torch, name, counted)
    with _Transfers() as t:
        res = stage.process(frames)
    assert uploads["n"] == 1, "the raw batch must go up as one buffer"
    assert t.down == 1, f"one download per batch expected, saw {t.calls}"
    assert len(res) == 4 and res.likelihood is not None


class _Cats(TorchFunctionMode):
    """The sizes of the tensors ``torch.cat`` makes."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") == "cat":
            self.sizes.append(out.numel())
        return out


def test_on_the_cpu_the_results_are_not_packed_and_equal_the_packed_ones(binning_engine_dir: Path) -> None:
    """Packing the denoised frames and the map into one buffer only saves transfers on a GPU; on the CPU
    it copied both (52 ms of a K2 frame, audit 25): no frame-sized ``cat`` there, same outputs."""
    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    lk = LikelihoodSettings(enabled=True, vacuum_block_A=2.0, evidence_frames=2)
    yy, xx = np.mgrid[:128, :128]
    atoms = sum(
        np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 18.0) for y in range(40, 128, 24) for x in range(8, 128, 24)
    )
    rng = np.random.default_rng(3)
    frames = [Frame(FrameHeader("acq", i, time.time(), (128, 128), "uint16"),
                    rng.poisson(0.45 * (1 + 40 * atoms)).astype(np.uint16)) for i in range(4)]  # fmt: skip
    cpu = BatchStage(den, DetectorSettings(), lk)
    cpu.process(frames)
    with _Cats() as cats:
        got = cpu.process(frames)
    assert all(n < 2 * 4 * 128 * 128 for n in cats.sizes), cats.sizes  # the pack: frames and maps, and more
    packed = BatchStage(den, DetectorSettings(), lk)
    packed.pack_on_device = lambda device: True  # type: ignore[method-assign]
    want = packed.process(frames)
    for name in ("denoised", "likelihood", "level", "blank", "vacuum", "measured_vacuum", "scored_vacuum",
                 "evidence_frames", "evidence_left_out", "vacuum_not_flat"):  # fmt: skip
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        assert getattr(got, name).dtype == getattr(want, name).dtype, name
    assert sum(len(c) for c in got.columns) > 0
    for a, b in zip(got.columns, want.columns, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_dose_outside_the_trained_range_is_warned_once_and_shown_in_metrics(
    binning_engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sbd_stream.config import load_settings
    from sbd_stream.service.build import build_pipeline

    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    base = {"publish": {"enabled": False}, "record": {"enabled": False}, "metrics": {"enabled": False}}
    ok = build_pipeline(
        load_settings(overrides={**base, "detector": {"counts_per_px": 0.6}}), den, source=None
    )
    assert ok.metrics.value("sbd_dose_out_of_range") == 0
    assert ok.metrics.value("sbd_bin_factor") == 4
    caplog.clear()
    far = build_pipeline(
        load_settings(overrides={**base, "detector": {"counts_per_px": 0.45 * 4}}), den, source=None
    )
    assert far.metrics.value("sbd_dose_out_of_range") == 1
    assert far.metrics.value("sbd_dose_factor") == pytest.approx(4.0)
    warnings = [r for r in caplog.records if "outside its trained range" in r.getMessage()]
    assert len(warnings) == 1 and "500 e/A^2" in warnings[0].getMessage()


@pytest.mark.parametrize("evidence", [0, 2])
def test_a_batchs_results_stay_as_they_were_after_later_batches(
    binning_engine_dir: Path, evidence: int
) -> None:
    """On the CPU the results handed to the sinks are the stage's own tensors' memory (no packing copy):
    a later batch must never write into them (a sink may still hold a frame when the next one runs)."""
    den = Denoiser.load("torch", binning_engine_dir, device="cpu")
    stage = BatchStage(den, DetectorSettings(), LikelihoodSettings(enabled=True, evidence_frames=evidence))
    first = stage.process(_frames(2, (96, 96), 0.9, seed=1))
    kept = {k: np.array(getattr(first, k), copy=True) for k in ("denoised", "likelihood", "level", "vacuum")}
    columns = [c.copy() for c in first.columns]
    for seed in range(2, 6):
        stage.process(_frames(2, (96, 96), 0.45 * seed, seed=seed))
    for k, v in kept.items():
        np.testing.assert_array_equal(getattr(first, k), v, err_msg=k)
    for a, b in zip(first.columns, columns, strict=True):
        np.testing.assert_array_equal(a, b)
