"""Training and inference cost on this machine: train-step throughput per preset, 1024^2 frame latency.

Run: ``python -m benchmarks.bench_training`` (writes benchmarks/results/bench_training.json;
``--onnx-sweep``: the ONNX channel sweep, bench_onnx_channels.json; ``--help``). Numbers on
a shared 2-core machine move with the load; the JSON records the load average next to each number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import out_path, stamped, table
from sbd_stream.compute.normalisation import Normalisation
from sbd_stream.invocation import invocation
from training.train.augment import draw_batch
from training.train.network import build_network
from training.train.presets import preset_config

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
    from sbd_stream.engines.denoiser import Denoiser

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


def onnx_channel_sweep(
    channels: tuple[int, ...] = (8, 12, 16),
    size: int = 256,
    batch: int = 4,
    threads: int = 2,
    repeats: int = 40,
) -> list[dict]:
    """ONNX Runtime time per working-pixel frame for 4-scale UNets of several widths.

    The live goal: 1024^2 detector frames binned 4x4 to 256^2 at 40 Hz on this CPU, i.e. <= ~20 ms per
    256^2 frame, run as batches of ``batch`` whole frames with ``threads`` intra-op threads. Random
    weights (speed does not depend on them); each model goes through ``write_engine`` (verified ONNX)
    and ``load_engine("onnxruntime", ...)`` like a shipped engine.
    """
    import tempfile

    from sbd_stream.compute.model import UNet
    from sbd_stream.engines import load_engine
    from sbd_stream.engines.card import EngineCard, write_engine

    os.environ["SBD_ORT_THREADS"] = str(threads)
    out = []
    x = torch.poisson(torch.full((batch, 1, size, size), 7.2)) / 7.2
    for ch in channels:
        torch.manual_seed(0)
        net = UNet(scales=4, channels=ch)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / f"unet4-c{ch}"
            card = write_engine(d, net, EngineCard(name=d.name, scales=4, channels=ch))
            eng = load_engine("onnxruntime", d, device="cpu", batch=batch)
            eng.run(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                eng.run(x)
                times.append(time.perf_counter() - t)
            onnx_bytes = (d / "model.onnx").stat().st_size
        per_frame = float(np.median(times)) / batch
        out.append(
            {
                "channels": ch,
                "parameters": card.parameters,
                "field_of_view": card.field_of_view,
                "frame": size,
                "batch": batch,
                "threads": threads,
                "ms_per_frame_median": 1e3 * per_frame,
                "ms_per_frame_best": 1e3 * float(np.min(times)) / batch,
                "frames_per_s": 1.0 / per_frame,
                "onnx_bytes": onnx_bytes,
                "load_avg": os.getloadavg()[0],
            }
        )
    return out


def _args(argv: list[str] | None) -> argparse.Namespace:
    """A parser, so that ``--help`` or a typo stops before a minute of measuring and never overwrites the
    committed results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--onnx-sweep",
        action="store_true",
        help="instead: ONNX Runtime ms per 256^2 frame for 4-scale UNets of 8 / 12 / 16 channels "
        "(writes results/bench_onnx_channels.json)",
    )
    ap.add_argument("--out", type=Path, default=None, help="results file (default: under results/)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = _args(argv)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    command = "python -m " + invocation("benchmarks.bench_training", argv)
    if a.onnx_sweep:
        sweep = onnx_channel_sweep()
        path = out_path("bench_onnx_channels.json", a.out)
        _write(path, {"command": command, "cpus": os.cpu_count(), "rows": sweep})
        cols = ["channels", "parameters", "frame", "batch", "threads", "ms_per_frame_median"]
        print(table(sweep, [*cols, "ms_per_frame_best", "frames_per_s", "load_avg"]))
        print(f"wrote {path}", file=sys.stderr)
        return
    res: dict[str, Any] = {
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "train_step": [train_step_rate(p) for p in ("default", "fov53", "fov1013", "small_unet", "dncnn")],
        "frame_latency": [frame_latency(k) for k in ("onnxruntime", "torch")] if ENGINE.is_dir() else [],
    }
    path = out_path("bench_training.json", a.out)
    _write(path, res)
    print(
        table(res["train_step"], ["preset", "batch", "patch", "step_s_median", "samples_per_s", "load_avg"])
    )
    if res["frame_latency"]:
        print()
        print(f"denoise one 1024^2 frame, engine {ENGINE.name}:")
        print(
            table(res["frame_latency"], ["backend", "frame", "tile", "tiles", "seconds_median", "load_avg"])
        )
    print(f"wrote {path}", file=sys.stderr)


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamped("bench_training", payload), indent=2) + "\n")


if __name__ == "__main__":
    main()
