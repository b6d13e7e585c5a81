"""Cost of the likelihood stage against the denoise stage, per 1024 x 1024 frame, on one device.

The issue's budget: likelihood adds at most 10% to the denoise stage's time per frame. Both stages
are timed on the same device in the same process. The denoise stage is the real ``Denoiser`` (tiling,
normalisation, engine); without ``--engine-dir`` it runs a UNet(scales=4, channels=32) with random
weights written as a real engine directory (time does not depend on the weights). The likelihood
stage runs on a lattice frame with ~1500 columns (the denoised input is the clean frame, so the
column count is realistic rather than whatever an untrained network produces).

Run: python -m benchmarks.bench_likelihood [--device cpu|cuda] [--engine-dir DIR] [--engine auto]

``--stage``: what the likelihood costs the live lane instead, the whole batch stage
(``BatchStage.process``: binning, engine, interpolation back, scoring, painting) per frame with the
likelihood off, on (each frame's own counts) and on with ``--evidence-frames`` N, on the service's default
engine and detector (the shipped live CPU engine, 0.060 A binned 4 x 4), torch at one thread as the
service sets it. Frames are read-only (as the service's) and each is scored on the N before it, as the
service hands them; the three settings alternate frame by frame. Writes ``likelihood_stage_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import out_path, stamped
from sbd_stream.compute.likelihood import LikelihoodConfig, LikelihoodStage
from sbd_stream.invocation import invocation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(
    fn: Any, device: torch.device, reps: int, warmup: int = 1, cpu: list[float] | None = None
) -> list[float]:
    """Wall seconds per call; with ``cpu`` also appends this process's CPU seconds per call (all threads).

    On a shared machine wall time depends on everyone else's load, CPU time much less: both are kept.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
        if cpu is not None:
            cpu.append(time.process_time() - c)
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _random_engine(root: Path) -> Path:
    from sbd_stream.compute.model import UNet
    from sbd_stream.engines.card import EngineCard, TilingDefaults, write_engine

    torch.manual_seed(0)
    card = EngineCard(
        name="bench-unet4x32-random",
        scales=4,
        channels=32,
        tiling=TilingDefaults(),
        training_data={"description": "random weights, for timing only"},
    )
    path = root / "bench-unet4x32-random"
    write_engine(path, UNet(scales=4, channels=32).eval(), card)
    return path


def _lattice_frames(shape: tuple[int, int], n: int, seed: int = 5) -> list[np.ndarray]:
    """Read-only Poisson frames at 0.45 counts/px: vacuum around a round patch of bright columns."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dots = np.cos(xx * 2 * np.pi / 46) * np.cos(yy * 2 * np.pi / 46) > 0.7
    disc = (xx - shape[1] / 2) ** 2 + (yy - shape[0] / 2) ** 2 < (shape[0] / 3) ** 2
    lam = 0.45 * (1 + 1.5 * (dots & disc))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = rng.poisson(lam).astype(np.uint16)
        a.flags.writeable = False
        out.append(a)
    return out


def stage_cost(size: int, reps: int, evidence: int, out: Path, argv: list[str] | None) -> dict[str, Any]:
    """``--stage``: ms per frame of the whole batch stage, likelihood off / own counts / N evidence frames."""
    from sbd_stream.config import load_settings
    from sbd_stream.frames import Frame, FrameHeader
    from sbd_stream.service.batch import BatchStage
    from sbd_stream.service.build import load_stages

    s = load_settings()
    base = load_stages(s)[0]  # the default engine, light_torch applied
    den = base.denoiser
    modes = {"off": None, "own": 0, f"evidence_{evidence}": evidence}
    stages = {}
    for m, ev in modes.items():  # as the command line sets them (the evidence defaults applied)
        lk = {"enabled": ev is not None, "evidence_frames": ev or 0}
        d = load_settings(overrides={"denoise": {"likelihood": lk}}).denoise
        stages[m] = BatchStage(den, s.detector, d.likelihood, d.bin_tolerance, d.upsample, d.orientations)
    shape = (size, size)
    arrays = _lattice_frames(shape, reps + evidence + 2)
    frames = [Frame(FrameHeader("a", i, 0.0, shape, "uint16"), a) for i, a in enumerate(arrays)]
    wall: dict[str, list[float]] = {m: [] for m in modes}
    parts: dict[str, dict[str, list[float]]] = {m: {"denoise": [], "likelihood": []} for m in modes}
    columns: dict[str, list[int]] = {m: [] for m in modes}
    for i in range(evidence + 2 + reps):  # the first evidence + 2 frames warm up (plans, windows)
        order = list(modes)[i % 3 :] + list(modes)[: i % 3]
        for m in order:
            ev_frames = (
                [[frames[i - j] for j in range(1, evidence + 1) if i - j >= 0]]
                if m.startswith("ev")
                else None
            )
            t0 = time.perf_counter()
            res = stages[m].process([frames[i]], evidence=ev_frames)
            if i >= evidence + 2:
                wall[m].append(time.perf_counter() - t0)
                for k in parts[m]:
                    if k in res.timings:
                        parts[m][k].append(res.timings[k])
                columns[m].append(len(res.columns[0]) if res.columns else 0)
    med = {m: statistics.median(v) for m, v in wall.items()}
    result: dict[str, Any] = {
        "command": "python -m " + invocation("benchmarks.bench_likelihood", argv),
        "device": "cpu",
        "device_name": _cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "engine": den.engine_id,
        "frame": list(shape),
        "bin": base.geometry.bin,
        "upsample": base.upsample,
        "frames_timed": reps,
        "ms_per_frame": {m: 1e3 * v for m, v in med.items()},
        "stage_timings_ms": {
            m: {k: 1e3 * statistics.median(v) for k, v in p.items() if v} for m, p in parts.items()
        },
        "extra_vs_off": {m: med[m] / med["off"] - 1 for m in modes if m != "off"},
        "columns_per_frame": {m: statistics.median(v) for m, v in columns.items() if m != "off"},
        "load_average": os.getloadavg(),
        "samples_ms": {m: [round(1e3 * t, 3) for t in v] for m, v in wall.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stamped("bench_likelihood", result), indent=2) + "\n")
    print(f"{den.engine_id}, {size}x{size} at bin {result['bin']}, {reps} frames per setting, medians:")
    for m in modes:
        extra = "" if m == "off" else f"  (+{100 * result['extra_vs_off'][m]:.0f} %)"
        print(f"  likelihood {m:<12}{1e3 * med[m]:>8.1f} ms/frame{extra}")
    print(f"load average {os.getloadavg()[0]:.1f}; wrote {out}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", action="store_true", help="the whole batch stage on the live CPU engine")
    ap.add_argument("--evidence-frames", type=int, default=4, help="with --stage: N for the third setting")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--engine-dir", type=Path, default=None, help="trained engine; default: random UNet4x32")
    ap.add_argument("--engine", default="auto", help="engine backend: auto | torch | onnxruntime | tensorrt")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1, help="frames per call")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of the denoise stage")
    ap.add_argument("--lk-reps", type=int, default=15, help="timed repetitions of the likelihood stage")
    ap.add_argument("--pixel-size", type=float, default=0.15, help="Angstrom per pixel of the test frame")
    ap.add_argument("--out", type=Path, default=None, help="default: results/likelihood[_stage]_cost.json")
    args = ap.parse_args(argv)
    if args.stage:
        out = out_path("likelihood_stage_cost.json", args.out)
        return stage_cost(args.size, args.reps, args.evidence_frames, out, argv)
    args.out = out_path("likelihood_cost.json", args.out)

    from sbd_stream.engines.denoiser import Denoiser
    from training.sim.likelihood_synthetic import lattice_image

    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    clean, cols = lattice_image((args.size, args.size), args.pixel_size, rng, amplitude=0.5)
    dose = 0.45
    raw_np = rng.poisson(clean * dose).astype(np.float32)
    raw = torch.from_numpy(np.repeat(raw_np[None], args.batch, 0)).to(device)
    den_truth = torch.from_numpy(np.repeat((clean * dose)[None], args.batch, 0)).to(device)

    cfg = LikelihoodConfig(pixel_size_A=args.pixel_size)
    stage = LikelihoodStage(cfg, device)
    res = stage(raw, den_truth)
    lam0 = res.vacuum
    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = args.engine_dir or _random_engine(Path(tmp))
        den = Denoiser.load(args.engine, engine_dir, device=str(device))
        engine_desc = {"engine_id": den.engine_id, "kind": den.engine.kind, "dir": str(args.engine_dir)}
        # interleaved, so both stages see the same load on a shared machine
        t_denoise: list[float] = []
        t_lk: list[float] = []
        c_denoise: list[float] = []
        c_lk: list[float] = []
        per = max(1, args.lk_reps // args.reps)
        for r in range(args.reps):
            t_denoise += _time(lambda: den.denoise(raw), device, 1, warmup=int(r == 0), cpu=c_denoise)
            t_lk += _time(lambda: stage(raw, den_truth), device, per, warmup=0, cpu=c_lk)
    parts = {
        "vacuum": _time(lambda: stage.vacuum(raw, den_truth), device, args.lk_reps),
        "detect": _time(lambda: stage.detect(den_truth, lam0), device, args.lk_reps),
    }
    centres = stage.detect(den_truth, lam0)
    b, h, w = den_truth.shape
    parts["llr_and_paint"] = _time(
        lambda: stage.paint((b, h, w), centres, stage.llr(raw, den_truth, centres, lam0)[0]),
        device,
        args.lk_reps,
    )

    per_frame = {
        "denoise_s": statistics.median(t_denoise) / args.batch,
        "likelihood_s": statistics.median(t_lk) / args.batch,
        "denoise_cpu_s": statistics.median(c_denoise) / args.batch,
        "likelihood_cpu_s": statistics.median(c_lk) / args.batch,
    }
    ratio = per_frame["likelihood_s"] / per_frame["denoise_s"]
    ratio_cpu = per_frame["likelihood_cpu_s"] / per_frame["denoise_cpu_s"]
    result = {
        "command": "python -m " + invocation("benchmarks.bench_likelihood", argv),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "frame": [args.size, args.size],
        "batch": args.batch,
        "engine": engine_desc,
        "columns_per_frame": len(res.columns[0]),
        "true_columns": len(cols["xy"]),
        "likelihood_config": cfg.describe(),
        "per_frame": per_frame,
        "likelihood_parts_s": {k: statistics.median(v) / args.batch for k, v in parts.items()},
        "ratio_likelihood_to_denoise": ratio,
        "ratio_likelihood_to_denoise_cpu_time": ratio_cpu,
        "within_10_percent": ratio <= 0.10,
        "load_average": os.getloadavg(),
        "samples_s": {"denoise": t_denoise, "likelihood": t_lk},
        "samples_cpu_s": {"denoise": c_denoise, "likelihood": c_lk},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(stamped("bench_likelihood", result), indent=2) + "\n")

    print(f"device {result['device']} ({result['device_name']}), {args.size}x{args.size}, batch {args.batch}")
    print(f"{'stage':<22}{'wall ms/frame':>14}{'cpu ms/frame':>14}")
    kind = "denoise (" + engine_desc["kind"] + ")"
    print(f"{kind:<22}{1e3 * per_frame['denoise_s']:>14.1f}{1e3 * per_frame['denoise_cpu_s']:>14.1f}")
    lk, lk_cpu = 1e3 * per_frame["likelihood_s"], 1e3 * per_frame["likelihood_cpu_s"]
    print(f"{'likelihood (total)':<22}{lk:>14.1f}{lk_cpu:>14.1f}")
    for k, v in result["likelihood_parts_s"].items():
        print(f"{'  ' + k:<22}{1e3 * v:>12.2f}")
    print(
        f"columns/frame {result['columns_per_frame']}, likelihood/denoise = {100 * ratio:.2f}% wall, "
        f"{100 * ratio_cpu:.2f}% cpu time (load average {os.getloadavg()[0]:.1f})"
    )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
