"""`sbd-stream`: denoise counted TEM frames offline or live, and inspect engines.

Thin by design: options are parsed here and handed to the modules that do the work.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import typer

app = typer.Typer(
    help=(
        "Real-time simulation-based denoising of counted TEM frames.\n\n"
        "Start with `sbd-stream demo` (no microscope needed), `sbd-stream denoise IN OUT` for files, "
        "`sbd-stream info` to see which engines and devices are usable here."
    ),
    no_args_is_help=True,
    add_completion=False,
)

log = logging.getLogger("sbd_stream")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def denoise(
    input: Path = typer.Argument(..., help="Stack of counted frames: .h5/.hdf5, .npy or .tif/.tiff"),
    output: Path = typer.Argument(..., help="HDF5 file to write (dataset 'denoised', float32 counts)"),
    dataset: str = typer.Option(None, "--dataset", "-d", help="HDF5 dataset holding the frames"),
    engine: str = typer.Option("auto", help="Backend: auto, tensorrt, onnxruntime or torch"),
    model: str = typer.Option(None, help="Engine name under engines/ or a path (default: the shipped one)"),
    device: str = typer.Option(None, help="cpu or cuda[:N] (default: the best available)"),
    dose: float = typer.Option(None, help="Vacuum counts per pixel per frame (default: the engine's)"),
    batch: int = typer.Option(2, min=1, help="Frames per batch"),
    tile: int = typer.Option(None, help="Tile size in pixels (default: the engine card's)"),
    margin: int = typer.Option(None, help="Tile margin in pixels (default: the engine card's)"),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Denoise a recorded stack of counted frames into an HDF5 file (engine card in its attributes)."""
    _setup_logging(verbose)
    from sbd_stream.offline import denoise_file
    from sbd_stream.stacks import StackError

    if output.exists() and not overwrite:
        _fail(f"{output} exists; pass --overwrite to replace it")
    try:
        summary = denoise_file(
            input, output, dataset, engine, model, device, dose, batch, tile, margin, progress=True
        )
    except (StackError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def info(
    model: str = typer.Option(None, help="Engine name or path to inspect (default: the shipped one)"),
) -> None:
    """Engines found, backends usable here, devices and versions."""
    from sbd_stream.offline import environment_info

    typer.echo(json.dumps(environment_info(model), indent=2))


def main() -> None:  # pragma: no cover - console entry
    t0 = time.perf_counter()
    app()
    log.debug("done in %.1fs", time.perf_counter() - t0)


# ==== BEGIN live-service commands (issue 5: serve, replay, emulate, demo; logic lives in the modules) ====
def _service_settings(config: Path | None, overrides: dict) -> object:
    from pydantic import ValidationError

    from sbd_stream.config import load_settings

    def prune(d: dict) -> dict:
        out = {k: prune(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}
        return {k: v for k, v in out.items() if v != {}}

    try:
        return load_settings(config, prune(overrides))
    except (ValidationError, OSError, ValueError) as e:
        _fail(f"settings: {e}")


def _on_signals(stop: object) -> None:
    """SIGINT / SIGTERM ask for a clean stop (drain queues, flush and close files)."""
    import signal

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping (draining queues, closing files)", signum)
        stop.set()  # type: ignore[attr-defined]

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _bundled_samples() -> Path | None:
    """Held-out simulated clean images shipped with the package (see `sbd-train demo-samples`)."""
    path = Path(__file__).resolve().parent / "samples" / "pt_ceo2_test.h5"
    return path if path.is_file() else None


def _shape(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        _fail(f"--shape must look like 1024x1024, got {text!r}")
    return h, w


@app.command()
def serve(
    config: Path = typer.Option(None, "--config", "-c", help="TOML settings file (see docs/service.md)"),
    input: str = typer.Option(None, "--input", help="Where frames come from, e.g. tcp://127.0.0.1:5555"),
    bind_input: bool = typer.Option(None, "--bind-input/--connect-input", help="Bind and wait, or connect"),
    output: str = typer.Option(None, "--output", help="Where denoised frames are published (bound)"),
    record_dir: Path = typer.Option(None, "--record-dir", help="Folder for the HDF5 recordings"),
    record: bool = typer.Option(None, "--record/--no-record", help="Record raw + denoised frames"),
    engine: str = typer.Option(None, help="Backend: auto, tensorrt, onnxruntime or torch"),
    model: str = typer.Option(None, help="Engine name under engines/ or a path (default: the shipped one)"),
    device: str = typer.Option(None, help="cpu or cuda[:N]"),
    batch: int = typer.Option(None, min=1, help="Denoise up to this many frames at once"),
    policy: str = typer.Option(None, help="lossless (every frame) or latest (skip to newest under load)"),
    likelihood: bool = typer.Option(None, "--likelihood/--no-likelihood", help="Publish likelihood maps"),
    metrics_port: int = typer.Option(None, help="Prometheus port on 127.0.0.1 (0: any free port)"),
    viewer: bool = typer.Option(False, "--viewer", help="Live viewer page on http://127.0.0.1:8090/"),
    viewer_port: int = typer.Option(None, help="Live viewer port (0: any free port)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Live service: receive detector frames, denoise them, publish and record, until Ctrl-C.

    Typical use: start the detector bridge (or `sbd-stream emulate`), then
    `sbd-stream serve --record-dir /data/today`. Viewers connect to --output; raw and denoised frames
    are written to one HDF5 file per acquisition; http://127.0.0.1:9105/metrics shows the counters.
    Ctrl-C finishes the queued frames and closes the files. Every option can also come from a TOML
    file (--config) or SBD_* environment variables; see docs/service.md.
    """
    import threading

    from sbd_stream.pipeline import serve as run_service

    _setup_logging(verbose)
    mode = None if bind_input is None else ("bind" if bind_input else "connect")
    s = _service_settings(
        config,
        {
            "ingest": {"endpoint": input, "mode": mode},
            "publish": {"endpoint": output},
            "record": {"directory": record_dir, "enabled": record},
            "denoise": {
                "engine": engine,
                "model": model,
                "device": device,
                "batch_frames": batch,
                "policy": policy,
                "likelihood": likelihood,
            },
            "metrics": {"port": metrics_port},
            "viewer": {"enabled": viewer or None, "port": viewer_port},  # docs/viewer.md
        },
    )
    stop = threading.Event()
    _on_signals(stop)
    typer.echo(
        f"serving: in {s.ingest.endpoint} ({s.ingest.mode.value}), out {s.publish.endpoint}, "  # type: ignore[attr-defined]
        f"metrics http://{s.metrics.host}:{s.metrics.port}/metrics  (Ctrl-C to stop)",
        err=True,
    )  # type: ignore[attr-defined]
    result = run_service(s, stop, status=lambda line: typer.echo(line, err=True))  # type: ignore[arg-type]
    typer.echo(json.dumps(result, indent=2))


@app.command()
def replay(
    file: Path = typer.Argument(..., help="A recording made by `serve` (the first file of the series)"),
    realtime: bool = typer.Option(False, "--realtime", help="Keep the recorded frame rate (default: max)"),
    config: Path = typer.Option(None, "--config", "-c", help="TOML settings file"),
    output: str = typer.Option(None, "--output", help="Publish results here too"),
    publish: bool = typer.Option(False, "--publish/--no-publish", help="Publish results on --output"),
    record_dir: Path = typer.Option(None, "--record-dir", help="Record results here (default: none)"),
    engine: str = typer.Option(None, help="Backend: auto, tensorrt, onnxruntime or torch"),
    model: str = typer.Option(None, help="Engine name under engines/ or a path"),
    device: str = typer.Option(None, help="cpu or cuda[:N]"),
    batch: int = typer.Option(None, min=1, help="Frames per batch"),
    likelihood: bool = typer.Option(None, "--likelihood/--no-likelihood"),
    limit: int = typer.Option(None, min=1, help="Stop after this many frames"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run a recording through the same pipeline as the live service."""
    from sbd_stream.pipeline import load_denoiser, run_replay, summary

    _setup_logging(verbose)
    if not file.exists():
        _fail(f"{file} not found")
    s = _service_settings(
        config,
        {
            "publish": {"endpoint": output, "enabled": publish},
            "record": {"directory": record_dir, "enabled": record_dir is not None},
            "denoise": {
                "engine": engine,
                "model": model,
                "device": device,
                "batch_frames": batch,
                "likelihood": likelihood,
            },
            "metrics": {"enabled": False},
        },
    )
    den = load_denoiser(s.denoise)  # type: ignore[attr-defined]
    pipe, secs, n = run_replay(s, den, file, realtime=realtime, limit=limit)  # type: ignore[arg-type]
    out = summary(pipe.metrics, secs)
    out.update(engine=den.engine_id, frames_fed=n, frames_per_s=n / secs if secs else 0.0)
    typer.echo(json.dumps(out, indent=2))


@app.command()
def emulate(
    endpoint: str = typer.Option("tcp://127.0.0.1:5555", help="Where to publish frames"),
    connect: bool = typer.Option(False, "--connect", help="Connect to a bound service instead of binding"),
    shape: str = typer.Option("1024x1024", help="Frame size HxW, up to 3838x3710 (K2)"),
    dtype: str = typer.Option("uint16", help="uint8 or uint16 counts"),
    dose: float = typer.Option(0.45, help="Vacuum counts per pixel per frame"),
    rate: float = typer.Option(40.0, help="Frames per second (0: as fast as possible)"),
    frames: int = typer.Option(400, min=1, help="How many frames to send"),
    source: Path = typer.Option(None, help="Simulated dataset or recording (.h5); default: synthetic"),
    pool: int = typer.Option(0, min=0, help="Cycle N pre-drawn noisy frames (needed for 40 Hz at K2 size)"),
    seed: int = typer.Option(0),
    acq: str = typer.Option(None, help="Acquisition id (default: random)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Pretend to be a counting detector: publish Poisson-noisy frames in wire format v1."""
    from sbd_stream.config import SocketMode
    from sbd_stream.emulator import Emulator, EmulatorConfig

    _setup_logging(verbose)
    if dtype not in ("uint8", "uint16"):
        _fail("--dtype must be uint8 or uint16")
    cfg = EmulatorConfig(
        endpoint=endpoint,
        mode=SocketMode.connect if connect else SocketMode.bind,
        shape=_shape(shape),
        dtype=dtype,
        dose=dose,
        rate_hz=rate,
        n_frames=frames,
        source=source,
        seed=seed,
        pool=pool,
    )
    if acq:
        cfg.acq = acq
    try:
        emu = Emulator(cfg)
    except (OSError, ValueError) as e:
        _fail(str(e))
    typer.echo(
        f"emulating {cfg.shape} {dtype} at {rate} Hz from {emu.source.kind.value} images on {emu.endpoint}",
        err=True,
    )
    try:
        n = emu.run()
    except KeyboardInterrupt:
        n = emu.n_sent
    emu.close()
    typer.echo(json.dumps({"acq": cfg.acq, "frames_sent": n, "source": emu.source.kind.value}))


@app.command()
def demo(
    frames: int = typer.Option(200, min=1, help="How many frames the emulator sends"),
    shape: str = typer.Option("512x512", help="Frame size HxW"),
    rate: float = typer.Option(40.0, help="Emulated detector frame rate (Hz)"),
    source: Path = typer.Option(
        None,
        help="Simulated dataset (.h5) for clean images; default: the bundled held-out abTEM test images",
    ),
    synthetic: bool = typer.Option(False, "--synthetic", help="Use a synthetic lattice instead"),
    policy: str = typer.Option("latest", help="lossless or latest"),
    likelihood: bool = typer.Option(False, "--likelihood/--no-likelihood"),
    record_dir: Path = typer.Option(None, "--record-dir", help="Also record to this folder"),
    engine: str = typer.Option(None, help="Backend: auto, tensorrt, onnxruntime or torch"),
    model: str = typer.Option(None, help="Engine name under engines/ or a path (default: the shipped one)"),
    viewer: bool = typer.Option(False, "--viewer", help="Live viewer page too (raise --frames)"),
    viewer_port: int = typer.Option(8090, help="Live viewer port (0: any free port)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Emulator + service + viewer in one command: live status, then latency and PSNR."""
    from sbd_stream.demo import run_demo
    from sbd_stream.emulator import EmulatorConfig
    from sbd_stream.pipeline import load_denoiser

    _setup_logging(verbose)
    s = _service_settings(
        None,
        {
            "ingest": {"endpoint": "tcp://127.0.0.1:*", "mode": "connect"},
            "publish": {"endpoint": "tcp://127.0.0.1:*"},
            "record": {"directory": record_dir, "enabled": record_dir is not None},
            "denoise": {"engine": engine, "model": model, "policy": policy, "likelihood": likelihood},
            "metrics": {"enabled": viewer, "port": 0},  # the viewer's rate / latency tiles read them
            "viewer": {"enabled": viewer, "port": viewer_port},
        },
    )
    den = load_denoiser(s.denoise)  # type: ignore[attr-defined]
    emu_cfg = EmulatorConfig(
        endpoint="tcp://127.0.0.1:*",
        shape=_shape(shape),
        rate_hz=rate,
        n_frames=frames,
        source=None if synthetic else (source or _bundled_samples()),
        pool=8,
    )
    result = run_demo(s, den, emu_cfg, status=lambda line: typer.echo(line, err=True))
    typer.echo(json.dumps(result, indent=2))


# ==== END live-service commands ====


if __name__ == "__main__":
    app()
