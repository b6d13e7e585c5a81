"""`sbd-stream serve | replay | emulate | demo`: the live commands (the logic lives in sbd_stream.service)."""

from __future__ import annotations

import json
import math
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sbd_stream.cli.app import app, fail, log, on_signals, settings_error, setup_logging
from sbd_stream.cli.options import (
    Batch,
    Complete,
    Compression,
    ConfigFile,
    CountsPerPx,
    DaskWorkers,
    Device,
    DosePerArea,
    Engine,
    EvidenceFrames,
    Flags,
    Likelihood,
    Live,
    Model,
    PixelSize,
    Policy,
    Scheduler,
    Verbose,
    Workers,
    detector_settings,
    endpoints_named,
    folder_named,
    parse_shape,
    settings_from_flags,
)
from sbd_stream.cli.replay_offline import check_replay_file, offline_conflicts, replay_offline
from sbd_stream.cli.scene_options import (
    EMULATOR_FLAGS,
    Drift,
    DriftAngle,
    Event,
    EventFrame,
    Focus,
    FocusRate,
    Scene,
    scene_fields,
    scene_flags_need_the_scene,
)
from sbd_stream.cli.service_start import (
    check_curve_keys,
    holding_ports,
    metrics_where,
    output_where,
    prepare_process,
    starting,
)
from sbd_stream.cli.time_options import rate_problem, wait_problem

if TYPE_CHECKING:
    from sbd_stream.config import ServiceSettings
    from sbd_stream.service.batch import BatchStage


@app.command()
def serve(
    config: ConfigFile = None,
    input: str | None = typer.Option(
        None, "--input", help="Where frames come from, e.g. tcp://127.0.0.1:5555"
    ),
    bind_input: bool | None = typer.Option(
        None, "--bind-input/--connect-input", help="Bind and wait, or connect"
    ),
    dialect: str | None = typer.Option(
        None, "--dialect", help="Input format: wire-v1 (default), dectris-stream-v1 or dectris-stream-v2"
    ),
    socket_type: str | None = typer.Option(
        None,
        "--socket-type",
        help="sub or pull. DECTRIS: pull from the DCU (default) or sub behind a proxy; wire-v1: sub from a "
        "PUB bridge (default) or pull from a PUSH one (several instances share it: docs/scale-out-nodes.md)",
    ),
    series_timeout: float | None = typer.Option(
        None, "--series-timeout", help="DECTRIS input: close a series after this many silent seconds"
    ),
    output: str | None = typer.Option(None, "--output", help="Where denoised frames are published (bound)"),
    record_dir: Path | None = typer.Option(
        None, "--record-dir", parser=folder_named, help="Folder for the recordings (<acq>.nxs)"
    ),
    record: bool | None = typer.Option(None, "--record/--no-record", help="Record raw + denoised frames"),
    compression: Compression = None,
    engine: Engine = None,
    model: Model = None,
    device: Device = None,
    batch: Batch = None,
    live: Live = None,
    complete: Complete = None,
    policy: Policy = None,
    workers: Workers = None,
    devices: str | None = typer.Option(None, "--devices", help="Devices for the workers, e.g. cuda:0,cuda:1"),
    likelihood: Likelihood = None,
    evidence_frames: EvidenceFrames = None,
    pixel_size: PixelSize = None,
    dose: DosePerArea = None,
    counts_per_px: CountsPerPx = None,
    metrics_port: int | None = typer.Option(None, help="Prometheus port on 127.0.0.1 (0: any free port)"),
    viewer: bool = typer.Option(False, "--viewer", help="Live viewer page on http://127.0.0.1:8090/"),
    viewer_port: int | None = typer.Option(None, help="Live viewer port (0: any free port)"),
    verbose: Verbose = False,
) -> None:
    """Live service: receive detector frames, denoise them, publish and record, until Ctrl-C.

    Typical use: start the detector bridge (or `sbd-stream emulate`), then
    `sbd-stream serve --record-dir /data/today --pixel-size 0.060 --dose 125`. Viewers connect to
    --output and get the live lane: the newest frame, about one denoise behind the detector. Every raw
    frame is written to one HDF5 file per acquisition with its denoised frame, live or completed later
    by the complete lane (the frames the live lane skipped). http://127.0.0.1:9105/metrics shows the
    counters. Ctrl-C finishes the queued frames and the complete lane's backlog (at most
    lanes.complete_timeout_s, 15 s) and closes the files, within stop_timeout_s (10 s) more; what is
    still queued then is counted and logged (left for offline, NOT recorded). Options can also come
    from a TOML file (--config) or SBD_* environment variables; see docs/service.md ("Two lanes")."""
    setup_logging(verbose)
    prepare_process()  # the open-file limit up to the hard one (httpd.raise_fd_limit)
    flags = Flags(
        pixel_size=pixel_size,
        dose=dose,
        counts_per_px=counts_per_px,
        input=input,
        mode=None if bind_input is None else ("bind" if bind_input else "connect"),
        dialect=dialect,
        socket_type=socket_type,
        series_timeout=series_timeout,
        output=output,
        record_dir=record_dir,
        record=record,
        compression=compression,
        engine=engine,
        model=model,
        device=device,
        batch=batch,
        policy=policy,
        live=live,
        complete=complete,
        workers=workers,
        devices=devices,
        likelihood=likelihood,
        evidence_frames=evidence_frames,
        metrics_port=metrics_port,
        viewer=viewer or None,  # docs/viewer.md; without --viewer the file / environment decide
        viewer_port=viewer_port,
    )
    s = settings_from_flags(flags, config)
    with ExitStack() as held:
        with endpoints_named(flags):  # a port in use, or malformed: one line before the engine loads
            held.enter_context(holding_ports(s))  # bound now, taken over by the service (h34)
            from sbd_stream.service.build import check_endpoints  # the engines' imports: after the ports
            from sbd_stream.service.build import serve as run_service

            check_endpoints(s)
        stages = stages_or_fail(s)
        stop = threading.Event()
        on_signals(stop)
        typer.echo(
            f"serving: in {s.ingest.endpoint} ({s.ingest.mode.value}), {output_where(s)}, "
            f"{metrics_where(s)}  (Ctrl-C to stop)",
            err=True,
        )
        with starting(flags):  # an endpoint or a CURVE key the service cannot use: one line, exit 2
            result = run_service(s, stop, status=lambda line: typer.echo(line, err=True), stage=stages)
    typer.echo(json.dumps(result, indent=2))
    if result.get("failure"):  # a stage that could not go on (supervisor): say why, exit non-zero
        typer.echo(f"sbd-stream serve stopped: {result['failure']}", err=True)
        raise typer.Exit(3)


def stages_or_fail(s: ServiceSettings) -> list[BatchStage]:
    """Load the engine(s) and plan the detector geometry; what cannot work ends the command in one line.

    A sampling the engine cannot serve, a device this machine lacks (``--device cuda`` on a CPU box, the
    GPU settings of deploy/sbd-stream.toml), an engine no backend can run, unreadable CURVE keys: each
    was a 90-line traceback, and the keys only failed after the engine had loaded.
    """
    from sbd_stream.compute.binning import SamplingError
    from sbd_stream.engines.base import EngineUnavailable
    from sbd_stream.engines.card import ArtefactError
    from sbd_stream.service.build import load_stages

    check_curve_keys(s)
    try:
        return load_stages(s)  # one batch stage per engine worker (denoise.workers)
    except SamplingError as e:
        fail(f"detector sampling: {e}")
    except (EngineUnavailable, ArtefactError) as e:
        fail(f"engine: {e}")
    except (RuntimeError, ValueError) as e:  # torch: "Invalid device string", no CUDA, an absent GPU index
        fail(f"engine: cannot load on device {s.denoise.device or 'auto'} ({s.denoise.devices or ''}): {e}")


@app.command()
def replay(
    file: Path = typer.Argument(..., help="A recording made by `serve` (the first file of the series)"),
    realtime: bool = typer.Option(False, "--realtime", help="Keep the recorded frame rate (default: max)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="TOML settings file", readable=False),
    output: str | None = typer.Option(None, "--output", help="Publish results here too"),
    publish: bool = typer.Option(False, "--publish/--no-publish", help="Publish results on --output"),
    record_dir: Path | None = typer.Option(
        None, "--record-dir", parser=folder_named, help="Record results here (default: none)"
    ),
    compression: Compression = None,
    engine: Engine = None,
    model: Model = None,
    device: Device = None,
    batch: Batch = None,
    likelihood: Likelihood = None,
    evidence_frames: EvidenceFrames = None,
    pixel_size: PixelSize = None,
    dose: DosePerArea = None,
    counts_per_px: CountsPerPx = None,
    limit: int | None = typer.Option(None, min=1, help="Stop after this many frames"),
    wait: float = typer.Option(
        1.0,
        min=0,
        help="--publish: seconds between binding --output and the first message (subscribers join)",
    ),
    workers: Workers = None,
    live: bool = typer.Option(
        False, "--live/--no-live", help="Replay as the live service would: newest first, skipped completed"
    ),
    offline: bool = typer.Option(
        False, "--offline", help="Denoise the raw frames into one HDF5 file (--out) in Dask chunks instead"
    ),
    out: Path | None = typer.Option(None, "--out", help="--offline: the HDF5 file to write (resumable)"),
    scheduler: Scheduler = "local",
    dask_workers: DaskWorkers = None,
    verbose: Verbose = False,
) -> None:
    """Run a recording through the same pipeline as the live service.

    The detector's sampling is the one the recording states in its attributes, unless options say
    otherwise. Every frame is denoised in order (one lane) unless --live asks for the live service's
    two lanes. With --offline the raw frames are denoised like `sbd-stream denoise` does instead
    (docs/scale-out-offline.md): no publishing, no pipeline, one output file in frame order.
    """
    from sbd_stream.formats.limits import RecordingError
    from sbd_stream.formats.recording import recorded_detector
    from sbd_stream.metrics_summary import summary
    from sbd_stream.service.build import check_endpoints, run_replay

    setup_logging(verbose)
    if problem := wait_problem(wait) if math.isfinite(wait) else f"--wait must be finite, got {wait}":
        fail(problem)
    check_replay_file(file)  # missing, a folder, a FIFO (h5py's open blocked for good): one line
    given = {"--realtime": realtime, "--output": output, "--publish": publish, "--record-dir": record_dir,
             "--likelihood": likelihood, "--evidence-frames": evidence_frames, "--limit": limit,
             "--wait": wait != 1.0, "--workers": workers, "--live": live}  # fmt: skip
    if problem := offline_conflicts(offline, given, out, dask_workers):
        fail(problem)
    sampling = Flags(pixel_size=pixel_size, dose=dose, counts_per_px=counts_per_px)
    if offline:
        offline_flags = Flags(engine=engine, model=model, device=device, batch=batch, orientations=8)
        s = settings_from_flags(offline_flags, config)  # offline: all 8 orientations, as `denoise`
        replay_offline(file, out, s, sampling, scheduler, dask_workers, compression)
        return
    flags = Flags(
        pixel_size=pixel_size,
        dose=dose,
        counts_per_px=counts_per_px,
        recorded=recorded_detector(file),
        output=output,
        publish=publish,
        record_dir=record_dir,
        record=record_dir is not None,
        compression=compression,
        engine=engine,
        model=model,
        device=device,
        batch=batch,
        live=live,
        workers=workers,
        likelihood=likelihood,
        evidence_frames=evidence_frames,
        metrics=False,
    )
    s = settings_from_flags(flags, config)
    settle = wait if publish else 0.0
    with endpoints_named(flags), ExitStack() as held:
        check_endpoints(s, receiver=False)
        held.enter_context(holding_ports(s, receiver=False))  # a busy --output before the engine loads
        stages = stages_or_fail(s)
        stop = threading.Event()  # Ctrl-C / SIGTERM / SIGHUP: end the feed, drain, close the recording
        release = on_signals(stop)
        try:
            pipe, secs, n = run_replay(
                s, stages, file, realtime=realtime, limit=limit, settle_s=settle, stop=stop
            )
        except (OSError, RecordingError) as e:  # unreadable, or implausible sizes (formats/limits.py)
            fail(str(e))
        finally:
            release()
    result = summary(pipe.metrics, secs)
    result.update(engine=pipe.denoiser.engine_id, frames_fed=n, frames_per_s=n / secs if secs else 0.0)
    result["workers"] = pipe.pool.load(secs)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def emulate(
    endpoint: str = typer.Option("tcp://127.0.0.1:5555", help="Where to publish frames"),
    connect: bool = typer.Option(False, "--connect", help="Connect to a bound service instead of binding"),
    shape: str | None = typer.Option(
        None,
        help="Frame size HxW, sides 1-16384 (serve refuses frames over ingest.max_payload_bytes, 57 MB by "
        "default); default 1024x1024, a recording's own with --source",
    ),
    dtype: str | None = typer.Option(
        None, help="uint8 or uint16 counts; default uint16, a recording's own with --source"
    ),
    pixel_size: PixelSize = None,
    dose: DosePerArea = None,
    counts_per_px: CountsPerPx = None,
    rate: float = typer.Option(40.0, help="Frames per second (0: as fast as possible)"),
    frames: int = typer.Option(400, min=1, help="How many frames to send"),
    source: Path | None = typer.Option(
        None, help="Simulated dataset or recording (.nxs); default: the bundled scene"
    ),
    pool: int = typer.Option(0, min=0, help="Cycle N pre-drawn noisy frames (needed for 40 Hz at K2 size)"),
    seed: int = typer.Option(0, help="Noise seed, >= 0"),
    acq: str | None = typer.Option(None, help="Acquisition id, 1-256 printable characters (default: random)"),
    push: bool = typer.Option(
        False, "--push", help="PUSH instead of PUB: PULL peers (serve --socket-type pull) share the frames"
    ),
    peers: int = typer.Option(1, min=1, help="--push: wait for this many PULL peers before sending"),
    wait: float = typer.Option(5.0, min=0, help="Seconds to wait for subscribers / peers before sending"),
    sndhwm: int | None = typer.Option(None, min=1, help="Send high-water mark, messages (PUB 1000, PUSH 16)"),
    scene: Scene = None,
    drift: Drift = None,
    drift_angle: DriftAngle = None,
    focus: Focus = None,
    focus_rate: FocusRate = None,
    event_frame: EventFrame = None,
    event: Event = None,
    verbose: Verbose = False,
) -> None:
    """Pretend to be a counting detector: publish Poisson-noisy frames in wire format v1.

    With --source RECORDING its raw counts are re-sent as recorded: frame size, dtype, pixel size and
    dose come from the recording, and a flag that states otherwise is refused (docs/emulator.md).

    With --push the frames are PUSHed like a DECTRIS DCU does: each goes to one of the connected
    `serve --socket-type pull` instances (round-robin); a send waits while no peer can take it.

    Clean images are resampled to the detector pixel (--pixel-size) and drawn at its dose, so the
    default is the paper's K2: 0.060 A pixels, 0.45 counts per pixel in vacuum. Without --source the
    bundled scene is played: one held-out specimen, drifting, changing focus (docs/emulator.md).
    """
    import zmq
    from pydantic import ValidationError

    from sbd_stream.config import SocketMode
    from sbd_stream.sources.emulator import VACUUM_HINT, Emulator, EmulatorSettings
    from sbd_stream.sources.emulator_recording import for_recording

    setup_logging(verbose)
    if dtype not in (None, "uint8", "uint16"):
        fail("--dtype must be uint8 or uint16")
    if problem := rate_problem(rate) or wait_problem(
        wait
    ):  # rate 0 is "as fast as possible", as the help says
        fail(problem)
    det = detector_settings(Flags(pixel_size=pixel_size, dose=dose, counts_per_px=counts_per_px))
    shape_hw = parse_shape(shape or "1024x1024")
    scene_values = (scene, drift, drift_angle, focus, focus_rate, event_frame, event)
    scene_flags_need_the_scene(False, source, *scene_values)  # a recording's frames: no drift, no event
    held = {} if source else scene_fields(*scene_values)
    try:  # every value is checked (EmulatorSettings); a socket that cannot open names --endpoint
        cfg = EmulatorSettings(
            endpoint=endpoint,
            mode=SocketMode.connect if connect else SocketMode.bind,
            shape=shape_hw,
            dtype=dtype or "uint16",
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
            **({} if acq is None else {"acq": acq}),
            **held,
        )
        # a recording states what is sent (shape, dtype, sampling); contradicting flags end here
        cfg, sampled = for_recording(
            cfg,
            shape_given=shape is not None,
            dtype_given=dtype is not None,
            pixel_size_A=pixel_size,
            dose_e_per_A2=dose,
            counts_per_px=counts_per_px,
        )
        emu = Emulator(cfg)
    except ValidationError as e:
        fail(settings_error(e, EMULATOR_FLAGS))
    except zmq.ZMQError as e:
        shown = endpoint or '""'
        fail(f"--endpoint {shown}: {zmq.strerror(e.errno) if e.errno is not None else e}")
    except (OSError, ValueError) as e:  # h5py's messages may span lines; ProtocolError is a ValueError
        fail(" ".join(str(e).split()))
    # Ctrl-C / SIGTERM / SIGHUP set the emulator's stop (it polls it between frames and in its wait for a
    # subscriber): the series ends with its series_end and the summary line. Before, Ctrl-C was a raise
    # (lost where Python swallowed it; no series_end) and SIGTERM / SIGHUP killed it without either.
    # In place before the banner, so a stop after the banner is always a clean one.
    release = on_signals(emu.stop_event)
    try:
        h, w = emu.source.shape
        pace = f"at {rate:g} Hz" if rate > 0 else "as fast as possible"
        typer.echo(  # what series_start announces and the frames carry, whatever the flags said
            f"emulating {h}x{w} {cfg.dtype} {pace} (exposure {emu.exposure_s:g} s) from "
            f"{emu.source.kind.value} images on {emu.endpoint}{' (PUSH)' if push else ''} "
            f"({cfg.pixel_size_A:.4g} A pixels, {cfg.dose:.4g} counts/px = {cfg.dose_per_area:.4g} e/A^2"
            f"{', ' + sampled if sampled else ''})",
            err=True,
        )
        if emu.source.note:  # as demo warns, once: a simulated dataset cut to frames that no atom entered
            log.warning("%s, only vacuum: %s", emu.source.note, VACUUM_HINT)
        n = emu.run()
    finally:
        release()
    emu.close()
    typer.echo(json.dumps({"acq": cfg.acq, "frames_sent": n, "source": emu.source.kind.value}))
