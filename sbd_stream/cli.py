"""`sbd-stream`: denoise counted TEM frames offline or live, and inspect engines.

Thin by design: options are parsed here and handed to the modules that do the work.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from sbd_stream.config import DetectorSettings, ServiceSettings

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


# --- options shared by several commands, defined once ---------------------------------------------
Engine = Annotated[str, typer.Option(help="Backend: auto, tensorrt, onnxruntime or torch")]
Model = Annotated[str, typer.Option(help="Engine name under engines/ or a path (default: the shipped one)")]
Device = Annotated[str, typer.Option(help="cpu or cuda[:N] (default: the best available)")]
Batch = Annotated[int, typer.Option(min=1, help="Denoise up to this many frames at once")]
Likelihood = Annotated[bool, typer.Option("--likelihood/--no-likelihood", help="Likelihood-ratio maps too")]
PixelSize = Annotated[
    float,
    typer.Option("--pixel-size", help="Detector pixel at the specimen, A (default 0.060, the paper's K2)"),
]
DosePerArea = Annotated[
    float, typer.Option("--dose", help="Dose per frame, e/A^2 (default 125, the paper's; or --counts-per-px)")
]
CountsPerPx = Annotated[
    float, typer.Option("--counts-per-px", help="Dose as counts per detector pixel in vacuum per frame")
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v")]


def _detector(pixel_size: float | None, dose: float | None, counts: float | None) -> dict:
    """The ``detector`` settings section from the shared options (None: keep file / env / default)."""
    return {"pixel_size_A": pixel_size, "dose_e_per_A2": dose, "counts_per_px": counts}


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
    engine: Engine = "auto",
    model: Model = None,  # type: ignore[assignment]
    device: Device = None,  # type: ignore[assignment]
    pixel_size: PixelSize = None,  # type: ignore[assignment]
    dose: DosePerArea = None,  # type: ignore[assignment]
    counts_per_px: CountsPerPx = None,  # type: ignore[assignment]
    batch: Batch = 2,
    tile: int = typer.Option(None, help="Tile size in working pixels (default: the engine card's)"),
    margin: int = typer.Option(None, help="Tile margin in working pixels (default: the engine card's)"),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists"),
    verbose: Verbose = False,
) -> None:
    """Denoise a recorded stack of counted frames into an HDF5 file (engine card in its attributes).

    The detector's sampling comes from the options, else from the input's HDF5 attributes
    (``pixel_size_A`` and ``dose_e_per_A2`` or ``counts_per_px``), else the paper's K2 (0.060 A,
    125 e/A^2 per frame). Frames are binned to the engine's working pixel and returned at theirs.
    """
    _setup_logging(verbose)
    from sbd_stream.service.offline import denoise_file
    from sbd_stream.sources.stacks import StackError

    if output.exists() and not overwrite:
        _fail(f"{output} exists; pass --overwrite to replace it")
    try:
        summary = denoise_file(
            input,
            output,
            dataset,
            engine,
            model,
            device,
            detector=_detector(pixel_size, dose, counts_per_px),
            batch=batch,
            tile=tile,
            margin=margin,
            progress=True,
        )
    except (StackError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def info(
    model: str = typer.Option(None, help="Engine name or path to inspect (default: the shipped one)"),
) -> None:
    """Engines found, backends usable here, devices and versions."""
    from sbd_stream.service.offline import environment_info

    typer.echo(json.dumps(environment_info(model), indent=2))


def main() -> None:  # pragma: no cover - console entry
    t0 = time.perf_counter()
    app()
    log.debug("done in %.1fs", time.perf_counter() - t0)


# ---- live-service commands: serve, replay, emulate, demo (the logic lives in sbd_stream.service) ----
def _service_settings(config: Path | None, overrides: dict) -> ServiceSettings:
    from pydantic import ValidationError

    from sbd_stream.config import load_settings

    def prune(d: dict) -> dict:
        out = {k: prune(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}
        return {k: v for k, v in out.items() if v != {}}

    try:
        return load_settings(config, prune(overrides))
    except (ValidationError, OSError, ValueError) as e:
        _fail(f"settings: {e}")
        raise  # unreachable: _fail exits


def _stage(s: ServiceSettings) -> object:
    """Load the engine and plan the detector geometry; a sampling it cannot serve ends the command."""
    from sbd_stream.compute.binning import SamplingError
    from sbd_stream.service.pipeline import load_stage

    try:
        return load_stage(s)
    except SamplingError as e:
        _fail(f"detector sampling: {e}")
        raise


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


def _ingest_input(dialect: str | None, socket_type: str | None, series_timeout: float | None) -> dict:
    """The ``ingest.input`` table from the flags (None: keep file / env / default).

    The DECTRIS-only flags need a DECTRIS dialect, from ``--dialect`` or the settings file: the
    settings refuse them for wire format v1 rather than ignore them.
    """
    return {"dialect": dialect, "socket_type": socket_type, "series_timeout_s": series_timeout}


@app.command()
def serve(
    config: Path = typer.Option(None, "--config", "-c", help="TOML settings file (see docs/service.md)"),
    input: str = typer.Option(None, "--input", help="Where frames come from, e.g. tcp://127.0.0.1:5555"),
    bind_input: bool = typer.Option(None, "--bind-input/--connect-input", help="Bind and wait, or connect"),
    dialect: str = typer.Option(
        None, "--dialect", help="Input format: wire-v1 (default), dectris-stream-v1 or dectris-stream-v2"
    ),
    socket_type: str = typer.Option(
        None, "--socket-type", help="DECTRIS input: pull from the DCU (default) or sub behind a proxy"
    ),
    series_timeout: float = typer.Option(
        None, "--series-timeout", help="DECTRIS input: close a series after this many silent seconds"
    ),
    output: str = typer.Option(None, "--output", help="Where denoised frames are published (bound)"),
    record_dir: Path = typer.Option(None, "--record-dir", help="Folder for the HDF5 recordings"),
    record: bool = typer.Option(None, "--record/--no-record", help="Record raw + denoised frames"),
    engine: Engine = None,  # type: ignore[assignment]
    model: Model = None,  # type: ignore[assignment]
    device: Device = None,  # type: ignore[assignment]
    batch: Batch = None,  # type: ignore[assignment]
    policy: str = typer.Option(None, help="lossless (every frame) or latest (skip to newest under load)"),
    likelihood: Likelihood = None,  # type: ignore[assignment]
    pixel_size: PixelSize = None,  # type: ignore[assignment]
    dose: DosePerArea = None,  # type: ignore[assignment]
    counts_per_px: CountsPerPx = None,  # type: ignore[assignment]
    metrics_port: int = typer.Option(None, help="Prometheus port on 127.0.0.1 (0: any free port)"),
    viewer: bool = typer.Option(False, "--viewer", help="Live viewer page on http://127.0.0.1:8090/"),
    viewer_port: int = typer.Option(None, help="Live viewer port (0: any free port)"),
    verbose: Verbose = False,
) -> None:
    """Live service: receive detector frames, denoise them, publish and record, until Ctrl-C.

    Typical use: start the detector bridge (or `sbd-stream emulate`), then
    `sbd-stream serve --record-dir /data/today --pixel-size 0.060 --dose 125`. Viewers connect to
    --output; raw and denoised frames are written to one HDF5 file per acquisition;
    http://127.0.0.1:9105/metrics shows the counters. Ctrl-C finishes the queued frames and closes the
    files. Every option can also come from a TOML file (--config) or SBD_* environment variables;
    see docs/service.md.
    """
    import threading

    from sbd_stream.service.pipeline import serve as run_service

    _setup_logging(verbose)
    mode = None if bind_input is None else ("bind" if bind_input else "connect")
    s = _service_settings(
        config,
        {
            "detector": _detector(pixel_size, dose, counts_per_px),
            "ingest": {
                "endpoint": input,
                "mode": mode,
                "input": _ingest_input(dialect, socket_type, series_timeout),
            },
            "publish": {"endpoint": output},
            "record": {"directory": record_dir, "enabled": record},
            "denoise": {
                "engine": engine,
                "model": model,
                "device": device,
                "batch_frames": batch,
                "policy": policy,
                "likelihood": {"enabled": likelihood},
            },
            "metrics": {"port": metrics_port},
            "viewer": {"enabled": viewer or None, "port": viewer_port},  # docs/viewer.md
        },
    )
    stage = _stage(s)
    stop = threading.Event()
    _on_signals(stop)
    typer.echo(
        f"serving: in {s.ingest.endpoint} ({s.ingest.mode.value}), out {s.publish.endpoint}, "
        f"metrics http://{s.metrics.host}:{s.metrics.port}/metrics  (Ctrl-C to stop)",
        err=True,
    )
    result = run_service(s, stop, status=lambda line: typer.echo(line, err=True), stage=stage)  # type: ignore[arg-type]
    typer.echo(json.dumps(result, indent=2))


@app.command()
def replay(
    file: Path = typer.Argument(..., help="A recording made by `serve` (the first file of the series)"),
    realtime: bool = typer.Option(False, "--realtime", help="Keep the recorded frame rate (default: max)"),
    config: Path = typer.Option(None, "--config", "-c", help="TOML settings file"),
    output: str = typer.Option(None, "--output", help="Publish results here too"),
    publish: bool = typer.Option(False, "--publish/--no-publish", help="Publish results on --output"),
    record_dir: Path = typer.Option(None, "--record-dir", help="Record results here (default: none)"),
    engine: Engine = None,  # type: ignore[assignment]
    model: Model = None,  # type: ignore[assignment]
    device: Device = None,  # type: ignore[assignment]
    batch: Batch = None,  # type: ignore[assignment]
    likelihood: Likelihood = None,  # type: ignore[assignment]
    pixel_size: PixelSize = None,  # type: ignore[assignment]
    dose: DosePerArea = None,  # type: ignore[assignment]
    counts_per_px: CountsPerPx = None,  # type: ignore[assignment]
    limit: int = typer.Option(None, min=1, help="Stop after this many frames"),
    verbose: Verbose = False,
) -> None:
    """Run a recording through the same pipeline as the live service.

    The detector's sampling is the one the recording states in its attributes, unless options say
    otherwise.
    """
    from sbd_stream.metrics import summary
    from sbd_stream.service.pipeline import run_replay
    from sbd_stream.sources.replay import recorded_detector

    _setup_logging(verbose)
    if not file.exists():
        _fail(f"{file} not found")
    detector = {**recorded_detector(file), **_prune_none(_detector(pixel_size, dose, counts_per_px))}
    if detector.get("counts_per_px") is not None and (dose is not None or pixel_size is not None):
        detector.pop("counts_per_px" if dose is not None else "dose_e_per_A2", None)
    s = _service_settings(
        config,
        {
            "detector": detector,
            "publish": {"endpoint": output, "enabled": publish},
            "record": {"directory": record_dir, "enabled": record_dir is not None},
            "denoise": {
                "engine": engine,
                "model": model,
                "device": device,
                "batch_frames": batch,
                "likelihood": {"enabled": likelihood},
            },
            "metrics": {"enabled": False},
        },
    )
    stage = _stage(s)
    pipe, secs, n = run_replay(s, stage, file, realtime=realtime, limit=limit)  # type: ignore[arg-type]
    out = summary(pipe.metrics, secs)
    out.update(engine=pipe.denoiser.engine_id, frames_fed=n, frames_per_s=n / secs if secs else 0.0)
    typer.echo(json.dumps(out, indent=2))


def _prune_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


@app.command()
def emulate(
    endpoint: str = typer.Option("tcp://127.0.0.1:5555", help="Where to publish frames"),
    connect: bool = typer.Option(False, "--connect", help="Connect to a bound service instead of binding"),
    shape: str = typer.Option("1024x1024", help="Frame size HxW, up to 3838x3710 (K2)"),
    dtype: str = typer.Option("uint16", help="uint8 or uint16 counts"),
    pixel_size: PixelSize = None,  # type: ignore[assignment]
    dose: DosePerArea = None,  # type: ignore[assignment]
    counts_per_px: CountsPerPx = None,  # type: ignore[assignment]
    rate: float = typer.Option(40.0, help="Frames per second (0: as fast as possible)"),
    frames: int = typer.Option(400, min=1, help="How many frames to send"),
    source: Path = typer.Option(None, help="Simulated dataset or recording (.h5); default: synthetic"),
    pool: int = typer.Option(0, min=0, help="Cycle N pre-drawn noisy frames (needed for 40 Hz at K2 size)"),
    seed: int = typer.Option(0),
    acq: str = typer.Option(None, help="Acquisition id (default: random)"),
    verbose: Verbose = False,
) -> None:
    """Pretend to be a counting detector: publish Poisson-noisy frames in wire format v1.

    Clean images are resampled to the detector pixel (--pixel-size) and drawn at its dose, so the
    default is the paper's K2: 0.060 A pixels, 0.45 counts per pixel in vacuum.
    """
    from sbd_stream.config import SocketMode
    from sbd_stream.sources.emulator import Emulator, EmulatorConfig

    _setup_logging(verbose)
    if dtype not in ("uint8", "uint16"):
        _fail("--dtype must be uint8 or uint16")
    det: DetectorSettings = _detector_settings(pixel_size, dose, counts_per_px)  # type: ignore[assignment]
    cfg = EmulatorConfig(
        endpoint=endpoint,
        mode=SocketMode.connect if connect else SocketMode.bind,
        shape=_shape(shape),
        dtype=dtype,
        dose=det.vacuum_counts,
        pixel_size_A=det.pixel_size_A,
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
        f"emulating {cfg.shape} {dtype} at {rate} Hz from {emu.source.kind.value} images on "
        f"{emu.endpoint} ({det.pixel_size_A:.4g} A pixels, {det.vacuum_counts:.4g} counts/px "
        f"= {det.dose_per_area:.4g} e/A^2)",
        err=True,
    )
    try:
        n = emu.run()
    except KeyboardInterrupt:
        n = emu.n_sent
    emu.close()
    typer.echo(json.dumps({"acq": cfg.acq, "frames_sent": n, "source": emu.source.kind.value}))


def _detector_settings(pixel_size: float | None, dose: float | None, counts: float | None) -> object:
    from pydantic import ValidationError

    from sbd_stream.config import DetectorSettings

    try:
        return DetectorSettings(**_prune_none(_detector(pixel_size, dose, counts)))
    except ValidationError as e:
        _fail(f"detector: {e}")
        raise


@app.command()
def demo(
    frames: int = typer.Option(200, min=1, help="How many frames the emulator sends"),
    shape: str = typer.Option("1024x1024", help="Detector frame size HxW"),
    rate: float = typer.Option(40.0, help="Emulated detector frame rate (Hz)"),
    source: Path = typer.Option(
        None,
        help="Simulated dataset (.h5) for clean images; default: the bundled held-out abTEM test images",
    ),
    synthetic: bool = typer.Option(False, "--synthetic", help="Use a synthetic lattice instead"),
    policy: str = typer.Option("lossless", help="lossless (every frame) or latest (skip under overload)"),
    likelihood: Likelihood = False,
    pixel_size: PixelSize = None,  # type: ignore[assignment]
    dose: DosePerArea = None,  # type: ignore[assignment]
    counts_per_px: CountsPerPx = None,  # type: ignore[assignment]
    record_dir: Path = typer.Option(None, "--record-dir", help="Also record to this folder"),
    engine: Engine = None,  # type: ignore[assignment]
    model: Model = None,  # type: ignore[assignment]
    viewer: bool = typer.Option(False, "--viewer", help="Live viewer page too (raise --frames)"),
    viewer_port: int = typer.Option(8090, help="Live viewer port (0: any free port)"),
    verbose: Verbose = False,
) -> None:
    """Emulator + service + viewer in one command: live status, then latency and PSNR.

    By default the emulated detector is the paper's K2 (0.060 A pixels, 0.45 counts/px in vacuum), so
    the PSNR printed at the end is the real-condition number.
    """
    from sbd_stream.service.demo import run_demo
    from sbd_stream.sources.emulator import EmulatorConfig

    _setup_logging(verbose)
    s = _service_settings(
        None,
        {
            "detector": _detector(pixel_size, dose, counts_per_px),
            "ingest": {"endpoint": "tcp://127.0.0.1:*", "mode": "connect"},
            "publish": {"endpoint": "tcp://127.0.0.1:*"},
            "record": {"directory": record_dir, "enabled": record_dir is not None},
            "denoise": {
                "engine": engine,
                "model": model,
                "policy": policy,
                "likelihood": {"enabled": likelihood},
            },
            "metrics": {"enabled": viewer, "port": 0},  # the viewer's rate / latency tiles read them
            "viewer": {"enabled": viewer, "port": viewer_port},
        },
    )
    stage = _stage(s)
    emu_cfg = EmulatorConfig(
        endpoint="tcp://127.0.0.1:*",
        shape=_shape(shape),
        dose=s.detector.vacuum_counts,
        pixel_size_A=s.detector.pixel_size_A,
        rate_hz=rate,
        n_frames=frames,
        source=None if synthetic else (source or _bundled_samples()),
        pool=8,
    )
    result = run_demo(s, stage, emu_cfg, status=lambda line: typer.echo(line, err=True))
    typer.echo(json.dumps(result, indent=2))


if __name__ == "__main__":
    app()
