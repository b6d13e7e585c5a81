"""Evidence-frame likelihood on the held scene: how many of the clean image's columns score positive,
how often spurious ones do, and what the LLR at a vanishing column does around the event.

Why a benchmark beside ``tests/e2e/test_scene_evidence.py``: the test asserts one setting on one seed;
choosing the setting (column model, region radius, evidence frames) needs the same measurement over
seeds, engines and settings, plus the **oracle**: the noise-free image itself as the LLR's alternative
(and the true vacuum), i.e. the best any denoiser could give on those counts. Where the oracle is below
a target, the region holds too few counts for it and no engine can reach it.

Frames: the bundled scene (``sbd_stream/samples/scenes.h5``) at 1024 x 1024 of 0.060 A, 0.45 counts/px,
no drift or focus change, a surface column vanishing at frame 8; frames 4-7 are each scored on the N
earlier frames. "Real": within 0.7 A of a column the likelihood stage's detector finds on the clean
image; "spurious": more than 0.7 A from every column of the atomic model.

    python -m benchmarks.bench_evidence [--engines sbd-unet3s2-paper,sbd-unet4-paper] [--seeds 3,4,5]
        [--settings constant:0.7,pattern:0.7,pattern:1.25] [--evidence-frames 4]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from benchmarks.common import table, write_result
from sbd_stream.compute.binning import bin_counts
from sbd_stream.compute.evidence import DETECTION_SIGMA_A
from sbd_stream.compute.likelihood import LikelihoodStage, disk_offsets
from sbd_stream.config import DetectorSettings, LikelihoodSettings
from sbd_stream.engines.card import default_engine_root
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.frames import Frame, FrameHeader
from sbd_stream.service.batch import BatchStage
from sbd_stream.service.evidence_history import EvidenceHistory
from sbd_stream.sources.emulator import FrameSource
from sbd_stream.sources.emulator_settings import EmulatorSettings
from sbd_stream.sources.scene import BUNDLED_SCENES

SHAPE, PIXEL_A, BIN, EVENT = (1024, 1024), 0.060, 4, 8
MATCH_PX = 0.7 / PIXEL_A


def scene_frames(seed: int) -> tuple[FrameSource, list[np.ndarray]]:
    cfg = EmulatorSettings(scene=BUNDLED_SCENES, shape=SHAPE, drift_A_per_s=0.0, focus_rate_nm_per_s=0.0,
                           event_frame=EVENT, seed=seed)  # fmt: skip
    src = FrameSource(cfg)
    frames = src.frames()
    return src, [next(frames)[0] for _ in range(EVENT + 5)]


def nearest(xy: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(xy[:, None, :2] - ref[None], axis=2)
    j = d.argmin(1)
    return j, d[np.arange(len(xy)), j]


def measure(
    den: Denoiser, src: FrameSource, raw: list[np.ndarray], model: str, radius: float, n: int
) -> dict:
    """One engine, seed and setting: the service's own batch stage, frame by frame."""
    s = LikelihoodSettings(enabled=True, evidence_frames=n, column_model=model, column_radius_A=radius,
                           log_sigma_A=DETECTION_SIGMA_A)  # fmt: skip
    stage, history = BatchStage(den, DetectorSettings(), s), EvidenceHistory(n)
    scored: list[np.ndarray] = []  # per frame, its columns
    for k, counts in enumerate(raw):
        f = Frame(FrameHeader("scene", k, time.time(), SHAPE, "uint16"), counts)
        columns = stage.process([f], history.take([f])).columns
        assert columns is not None  # the likelihood is enabled
        scored.append(columns[0])
    assert src.player is not None
    expected, event_truth = src.truth(0), src.player.event_truth()
    assert expected is not None and event_truth is not None  # a scene with its event
    ref = LikelihoodSettings(enabled=True)
    clean = bin_counts(torch.from_numpy(expected[None].copy()), BIN)
    clean_xy = LikelihoodStage(ref.at_pixel(PIXEL_A * BIN), "cpu")(clean, clean).columns[0].positions.numpy()
    clean_xy = clean_xy * BIN + (BIN - 1) / 2
    cols_model = src.player.columns(0)
    pt = cols_model["xy"][cols_model["species"] == 78]
    is_pt = np.linalg.norm(clean_xy[:, None] - pt[None], axis=2).min(1) < MATCH_PX
    real_n = real_pos = pt_n = pt_pos = sp_n = sp_pos = 0
    oracle_pos = 0
    binned = [bin_counts(torch.from_numpy(c[None].astype(np.float32)), BIN)[0].numpy() for c in raw]
    truth, lam0 = clean[0].numpy(), src.cfg.dose * BIN * BIN
    off = disk_offsets(radius / (PIXEL_A * BIN))
    for k in range(n, EVENT):
        cols = scored[k]
        j, d = nearest(cols, clean_xy)
        real, pos = d < MATCH_PX, cols[:, 2] > 0
        _, dm = nearest(cols, cols_model["xy"])
        spur = ~real & (dm > MATCH_PX)
        real_n, real_pos = real_n + int(real.sum()), real_pos + int((real & pos).sum())
        pt_n, pt_pos = pt_n + int((real & is_pt[j]).sum()), pt_pos + int((real & pos & is_pt[j]).sum())
        sp_n, sp_pos = sp_n + int(spur.sum()), sp_pos + int((spur & pos).sum())
        y = sum((binned[k - i] for i in range(1, n + 1)), start=np.zeros_like(binned[0]))
        for c in cols[real]:  # the oracle: truth x n as the alternative, the true vacuum as the null
            p = np.rint((c[:2] - (BIN - 1) / 2) / BIN).astype(int)
            rr = np.clip(p[0] + off[:, 0], 0, truth.shape[0] - 1)
            cc = np.clip(p[1] + off[:, 1], 0, truth.shape[1] - 1)
            x, l0 = truth[rr, cc] * n, lam0 * n
            oracle_pos += int((y[rr, cc] * np.log(x / l0) - (x - l0)).sum() > 0)
    site = np.asarray(event_truth["xy_px"])
    event = {}
    for k in range(EVENT - 4, EVENT + 5):
        cols = scored[k]
        d = np.linalg.norm(cols[:, :2] - site, axis=1)
        event[k] = round(float(cols[d.argmin(), 2]), 1) if len(d) and d.min() < MATCH_PX else None
    return {
        "real_columns": real_n,
        "real_positive": real_pos / max(real_n, 1),
        "pt_positive": pt_pos / max(pt_n, 1),
        "oracle_positive": oracle_pos / max(real_n, 1),
        "spurious_columns": sp_n,
        "spurious_positive": sp_pos / max(sp_n, 1),
        "event_llr": event,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="sbd-unet3s2-paper,sbd-unet4-paper")
    ap.add_argument("--seeds", default="3,4,5")
    ap.add_argument("--settings", default="constant:0.7,pattern:0.7,pattern:1.25")
    ap.add_argument("--evidence-frames", type=int, default=4)
    a = ap.parse_args()
    rows = []
    for engine in a.engines.split(","):
        den = Denoiser.load("onnxruntime", default_engine_root() / engine, device="cpu")
        for seed in (int(s) for s in a.seeds.split(",")):
            src, raw = scene_frames(seed)
            for setting in a.settings.split(","):
                model, radius = setting.split(":")
                r = measure(den, src, raw, model, float(radius), a.evidence_frames)
                rows.append({"engine": engine, "seed": seed, "column_model": model, "radius_A": float(radius),
                             "evidence_frames": a.evidence_frames, **r})  # fmt: skip
                real, oracle, spur = r["real_positive"], r["oracle_positive"], r["spurious_positive"]
                print(f"{engine} seed {seed} {setting}: real {real:.3f} of {r['real_columns']}, "
                      f"oracle {oracle:.3f}, spurious {spur:.2f}", flush=True)  # fmt: skip
    summary = []
    for key in sorted({(r["engine"], r["column_model"], r["radius_A"]) for r in rows}):
        sel = [r for r in rows if (r["engine"], r["column_model"], r["radius_A"]) == key]
        summary.append({
            "engine": key[0], "model": key[1], "radius A": key[2],
            "real + (min over seeds)": min(r["real_positive"] for r in sel),
            "real + (mean)": float(np.mean([r["real_positive"] for r in sel])),
            "Pt + (min)": min(r["pt_positive"] for r in sel),
            "oracle + (mean)": float(np.mean([r["oracle_positive"] for r in sel])),
            "spurious + (mean)": float(np.mean([r["spurious_positive"] for r in sel])),
            "event drops (seeds)": sum(_drops(r["event_llr"]) for r in sel),
        })  # fmt: skip
    print(table(summary, list(summary[0])))
    write_result("bench_evidence", {"rows": rows, "summary": summary, "event_frame": EVENT})


def _drops(llr: dict[int, float | None]) -> bool:
    """The event shows in its frame: the site's LLR there is below half its mean over the 4 frames
    before (or no column is found there), and so is the mean of the 4 frames after."""
    before = [v for k, v in llr.items() if k < EVENT and v is not None]
    if not before:
        return False
    ref = 0.5 * float(np.mean(before))
    at, after = llr[EVENT], float(np.mean([v or 0.0 for k, v in llr.items() if k > EVENT]))
    return (at is None or at < ref) and after < ref and not math.isnan(ref)


if __name__ == "__main__":
    main()
