"""Training and inference cost on this machine: train-step throughput per preset, 1024^2 frame latency.

Run: ``python -m benchmarks.bench_training`` (writes benchmarks/results/bench_training.json). Numbers on
a shared 2-core machine move with the load; the JSON records the load average next to each number.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sbd_stream.normalisation import Normalisation
from training.augment import draw_batch
from training.train import build_network, preset_config

OUT = Path(__file__).resolve().parent / "results" / "bench_training.json"
ENGINE = Path(__file__).resolve().parents[1] / "engines" / "sbd-unet4-default"


def train_step_rate(preset: str, steps: int = 5) -> dict:
    """Samples per second of forward + backward + Adam on random 256^2 sources, after one warm-up step."""
    cfg = preset_config(preset)
    net = build_network(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    src = torch.rand(cfg.batch, 256, 256) + 0.5
    norm = Normalisation()
    times = []
    for i in range(steps + 1):
        x, y = draw_batch(src, np.random.default_rng(i), cfg.augment, 0.45, norm)
        t = time.perf_counter()
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    return {
        "preset": preset,
        "batch": cfg.batch,
        "patch": cfg.augment.patch,
        "step_s_median": float(np.median(times)),
        "samples_per_s": cfg.batch / float(np.median(times)),
        "load_avg": os.getloadavg()[0],
    }


def frame_latency(kind: str, size: int = 1024, repeats: int = 3) -> dict:
    from sbd_stream.denoiser import Denoiser

    den = Denoiser.load(engine=kind, engine_dir=ENGINE, device="cpu")
    x = torch.poisson(torch.full((1, size, size), 0.45))
    den.denoise(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        den.denoise(x)
        times.append(time.perf_counter() - t)
    plan = den.plan(size, size)
    return {
        "backend": kind,
        "frame": size,
        "tile": plan.tile,
        "tiles": plan.tiles_per_frame,
        "seconds_median": float(np.median(times)),
        "seconds_all": times,
        "load_avg": os.getloadavg()[0],
    }


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    res = {
        "command": "python -m benchmarks.bench_training",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "train_step": [train_step_rate(p) for p in ("default", "fov53", "fov1013", "small_unet", "dncnn")],
        "frame_latency": [frame_latency(k) for k in ("onnxruntime", "torch")] if ENGINE.is_dir() else [],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    for r in res["train_step"]:
        print(
            f"train {r['preset']:<11} batch {r['batch']} x {r['patch']}^2: {r['step_s_median']:.2f} s/step "
            f"({r['samples_per_s']:.1f} samples/s, load {r['load_avg']:.1f})"
        )
    for r in res["frame_latency"]:
        print(
            f"denoise 1024^2 with {r['backend']:<11}: {r['seconds_median']:.2f} s ({r['tiles']} tile(s) of "
            f"{r['tile']}^2, load {r['load_avg']:.1f})"
        )
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
