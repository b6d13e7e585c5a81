"""`sbd-stream serve | replay | emulate | demo`: the live commands (the logic lives in sbd_stream.service).

Kept apart from ``cli.py`` (the app, the shared options and the offline commands) only for length; they
register on the same typer app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sbd_stream.config import DetectorSettings

from sbd_stream.cli import (
    Batch,
    Compression,
    CountsPerPx,
    DaskWorkers,
    Device,
    DosePerArea,
    Engine,
    EvidenceFrames,
    Likelihood,
    Model,
    PixelSize,
    Scheduler,
    Verbose,
    Workers,
    _bundled_samples,
    _detector,
    _fail,
    _ingest_input,
    _on_signals,
    _service_settings,
    _setup_logging,
    _shape,
    _stage,
    app,
)


@app.command()
def serve(
    config: Path = typer.Option(None, "--config", "-c", help="TOML settings file (see docs/service.md)"),
    input: str = typer.Option(None, "--input", help="Where frames come from, e.g. tcp://127.0.0.1:5555"),
    bind_input: bool = typer.Option(None, "--bind-input/--connect-input", help="Bind and wait, or connect"),
    dialect: str = typer.Option(
        None, "--dialect", help="Input format: wire-v1 (default), dectris-stream-v1 or dectris-stream-v2"
    ),
    socket_type: str = typer.Option(
        None,
        "--socket-type",
        help="sub or pull. DECTRIS: pull from the DCU (default) or sub behind a proxy; wire-v1: sub from a "
        "PUB bridge (default) or pull from a PUSH one (several instances share it: docs/scale-out-nodes.md)",
    ),
    series_timeout: float = typer.Option(
        None, "--series-timeout", help="DECTRIS input: close a series after this many silent seconds"
    ),
    output: str = typer.Option(None, "--output", help="Where denoised frames are published (bound)"),
    record_dir: Path = typer.Option(None, "--record-dir", help="Folder for the HDF5 recordings"),
    record: bool = typer.Option(None, "--record/--no-record", help="Record raw + denoised frames"),
    compression: Compression = None,  # type: ignore[assignment]
    engine: Engine = None,  # type: ignore[assignment]
    model: Model = None,  # type: ignore[assignment]
    device: Device = None,  # type: ignore[assignment]
    batch: Batch = None,  # type: ignore[assignment]
    policy: str = typer.Option(None, help="lossless (every frame) or latest (skip to newest under load)"),
    workers: Workers = None,  # type: ignore[assignment]
    devices: str = typer.Option(None, "--devices", help="Devices for the workers, e.g. cuda:0,cuda:1"),
    likelihood: Likelihood = None,  # type: ignore[assignment]
    evidence_frames: EvidenceFrames = None,  # type: ignore[assignment]
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
                "input": _ingest_input(
                    _input_dialect(config, dialect, socket_type), socket_type, series_timeout
                ),
            },
            "publish": {"endpoint": output},
            "record": {"directory": record_dir, "enabled": record, "compression": compression},
            "denoise": {
                "engine": engine,
                "model": model,
                "device": device,
                "batch_frames": batch,
                "policy": policy,
                "workers": workers,
                "devices": [d.strip() for d in devices.split(",") if d.strip()] if devices else None,
                "likelihood": _likelihood(likelihood, evidence_frames),
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
    if result.get("failure"):  # a stage that could not go on (supervisor): say why, exit non-zero
        typer.echo(f"sbd-stream serve stopped: {result['failure']}", err=True)
        raise typer.Exit(3)


def _input_dialect(config: Path | None, dialect: str | None, socket_type: str | None) -> str | None:
    """``--socket-type`` alone keeps the dialect of the file / environment (default wire-v1)."""
    if dialect is not None or socket_type is None:
        return dialect
    return str(_service_settings(config, {}).ingest.input.dialect)


@app.command()
def replay(
    file: Path = typer.Argument(..., help="A recording made by `serve` (the first file of the series)"),
    realtime: bool = typer.Option(False, "--realtime", help="Keep the recorded frame rate (default: max)"),
    config: Path = typer.Option(None, "--config", "-c", help="TOML settings file"),
    output: str = typer.Option(None, "--output", help="Publish results here too"),
    publish: bool = typer.Option(False, "--publish/--no-publish", help="Publish results on --output"),
    record_dir: Path = typer.Option(None, "--record-dir", help="Record results here (default: none)"),
    compression: Compression = None,  # type: ignore[assignment]
    engine: Engine = None,  # type: ignore[assignment]
    model: Model = None,  # type: ignore[assignment]
    device: Device = None,  # type: ignore[assignment]
    batch: Batch = None,  # type: ignore[assignment]
    likelihood: Likelihood = None,  # type: ignore[assignment]
    evidence_frames: EvidenceFrames = None,  # type: ignore[assignment]
    pixel_size: PixelSize = None,  # type: ignore[assignment]
    dose: DosePerArea = None,  # type: ignore[assignment]
    counts_per_px: CountsPerPx = None,  # type: ignore[assignment]
    limit: int = typer.Option(None, min=1, help="Stop after this many frames"),
    workers: Workers = None,  # type: ignore[assignment]
    offline: bool = typer.Option(
        False, "--offline", help="Denoise the raw frames into one HDF5 file (--out) in Dask chunks instead"
    ),
    out: Path = typer.Option(None, "--out", help="--offline: the HDF5 file to write (resumable)"),
    scheduler: Scheduler = "local",
    dask_workers: DaskWorkers = None,  # type: ignore[assignment]
    verbose: Verbose = False,
) -> None:
    """Run a recording through the same pipeline as the live service.

    The detector's sampling is the one the recording states in its attributes, unless options say
    otherwise. With --offline the raw frames are denoised like `sbd-stream denoise` does instead
    (docs/scale-out-offline.md): no publishing, no pipeline, one output file in frame order.
    """
    from sbd_stream.metrics import summary
    from sbd_stream.service.pipeline import run_replay
    from sbd_stream.sources.replay import recorded_detector

    _setup_logging(verbose)
    if not file.exists():
        _fail(f"{file} not found")
    if offline:
        opts = {"engine": engine or "auto", "model": model, "device": device, "batch": batch}
        det = _detector(pixel_size, dose, counts_per_px)
        _replay_offline(file, out, opts, det, scheduler, dask_workers)
        return
    detector = {**recorded_detector(file), **_prune_none(_detector(pixel_size, dose, counts_per_px))}
    if detector.get("counts_per_px") is not None and (dose is not None or pixel_size is not None):
        detector.pop("counts_per_px" if dose is not None else "dose_e_per_A2", None)
    s = _service_settings(
        config,
        {
            "detector": detector,
            "publish": {"endpoint": output, "enabled": publish},
            "record": {
                "directory": record_dir,
                "enabled": record_dir is not None,
                "compression": compression,
            },
            "denoise": {
                "engine": engine,
                "model": model,
                "device": device,
                "batch_frames": batch,
                "workers": workers,
                "likelihood": _likelihood(likelihood, evidence_frames),
            },
            "metrics": {"enabled": False},
        },
    )
    stage = _stage(s)
    pipe, secs, n = run_replay(s, stage, file, realtime=realtime, limit=limit)  # type: ignore[arg-type]
    out = summary(pipe.metrics, secs)
    out.update(engine=pipe.denoiser.engine_id, frames_fed=n, frames_per_s=n / secs if secs else 0.0)
    out["workers"] = pipe.pool.load(secs)
    typer.echo(json.dumps(out, indent=2))


def _replay_offline(
    file: Path, out: Path | None, opts: dict, detector: dict, scheduler: str, workers: int | None
) -> None:
    """`replay --offline`: the recording's complete raw frames through the offline Dask path."""
    from sbd_stream.service.offline_dask import EngineSpec, denoise
    from sbd_stream.sources.stacks import StackError

    if out is None:
        _fail("--offline needs --out OUT.h5")
    if out.exists():
        _fail(f"{out} exists; remove it or choose another --out")
    try:
        es = EngineSpec(opts["engine"], opts["model"], opts["device"])
        summary = denoise(
            file, out, None, es, detector, recording=True, scheduler=scheduler, batch=opts["batch"] or 2,
            workers=workers, progress=True,
        )  # fmt: skip
    except (StackError, ValueError, OSError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))


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
    push: bool = typer.Option(
        False, "--push", help="PUSH instead of PUB: PULL peers (serve --socket-type pull) share the frames"
    ),
    peers: int = typer.Option(1, min=1, help="--push: wait for this many PULL peers before sending"),
    wait: float = typer.Option(5.0, min=0, help="Seconds to wait for subscribers / peers before sending"),
    sndhwm: int = typer.Option(None, min=1, help="Send high-water mark, messages (PUB 1000, PUSH 16)"),
    verbose: Verbose = False,
) -> None:
    """Pretend to be a counting detector: publish Poisson-noisy frames in wire format v1.

    With --push the frames are PUSHed like a DECTRIS DCU does: each goes to one of the connected
    `serve --socket-type pull` instances (round-robin); a send waits while no peer can take it.

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
        push=push,
        peers=peers,
        wait_subscriber_s=wait,
        sndhwm=sndhwm or (16 if push else 1000),
    )
    if acq:
        cfg.acq = acq
    try:
        emu = Emulator(cfg)
    except (OSError, ValueError) as e:
        _fail(str(e))
    typer.echo(
        f"emulating {cfg.shape} {dtype} at {rate} Hz from {emu.source.kind.value} images on "
        f"{emu.endpoint}{' (PUSH)' if push else ''} "
        f"({det.pixel_size_A:.4g} A pixels, {det.vacuum_counts:.4g} counts/px "
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
    likelihood: Likelihood = None,  # type: ignore[assignment]
    evidence_frames: EvidenceFrames = None,  # type: ignore[assignment]
    pixel_size: PixelSize = None,  # type: ignore[assignment]
    dose: DosePerArea = None,  # type: ignore[assignment]
    counts_per_px: CountsPerPx = None,  # type: ignore[assignment]
    record_dir: Path = typer.Option(None, "--record-dir", help="Also record to this folder"),
    engine: Engine = None,  # type: ignore[assignment]
    model: Model = None,  # type: ignore[assignment]
    workers: Workers = None,  # type: ignore[assignment]
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
                "workers": workers,
                "likelihood": _likelihood(likelihood, evidence_frames),
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


def _likelihood(enabled: bool | None, evidence_frames: int | None) -> dict[str, object]:
    """``--evidence-frames N`` (N > 0) turns the maps on unless ``--no-likelihood`` was given."""
    if evidence_frames and enabled is None:
        enabled = True
    if evidence_frames and enabled is False:
        raise typer.BadParameter("--evidence-frames scores likelihood maps: drop --no-likelihood")
    return {"enabled": enabled, "evidence_frames": evidence_frames}
