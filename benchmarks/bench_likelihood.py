"""Cost of the likelihood stage against the denoise stage, per 1024 x 1024 frame, on one device.

The issue's budget: likelihood adds at most 10% to the denoise stage's time per frame. Both stages
are timed on the same device in the same process. The denoise stage is the real ``Denoiser`` (tiling,
normalisation, engine); without ``--engine-dir`` it runs a UNet(scales=4, channels=32) with random
weights written as a real engine directory (time does not depend on the weights). The likelihood
stage runs on a lattice frame with ~1500 columns (the denoised input is the clean frame, so the
column count is realistic rather than whatever an untrained network produces).

Run: python -m benchmarks.bench_likelihood [--device cpu|cuda] [--engine-dir DIR] [--engine auto]
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

from sbd_stream.compute.likelihood import LikelihoodConfig, LikelihoodStage
from sbd_stream.invocation import invocation

RESULTS = Path(__file__).resolve().parent / "results"


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--engine-dir", type=Path, default=None, help="trained engine; default: random UNet4x32")
    ap.add_argument("--engine", default="auto", help="engine backend: auto | torch | onnxruntime | tensorrt")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1, help="frames per call")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions of the denoise stage")
    ap.add_argument("--lk-reps", type=int, default=15, help="timed repetitions of the likelihood stage")
    ap.add_argument("--pixel-size", type=float, default=0.15, help="Angstrom per pixel of the test frame")
    ap.add_argument("--out", type=Path, default=RESULTS / "likelihood_cost.json")
    args = ap.parse_args(argv)

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
        t_denoise, t_lk, c_denoise, c_lk = [], [], [], []
        per = max(1, args.lk_reps // args.reps)
        for r in range(args.reps):
            t_denoise += _time(lambda: den.denoise(raw), device, 1, warmup=int(r == 0), cpu=c_denoise)
            t_lk += _time(lambda: stage(raw, den_truth), device, per, warmup=0, cpu=c_lk)
    parts = {
        "vacuum": _time(lambda: stage.vacuum(raw, den_truth), device, args.lk_reps),
        "detect": _time(lambda: stage.detect(den_truth, lam0), device, args.lk_reps),
    }
    centres = stage.detect(den_truth, lam0)
    parts["llr_and_paint"] = _time(
        lambda: stage.paint(tuple(den_truth.shape), centres, stage.llr(raw, den_truth, centres, lam0)[0]),
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
    args.out.write_text(json.dumps(result, indent=2) + "\n")

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
