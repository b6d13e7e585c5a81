"""`sbd-stream demo`: emulator + service + subscriber (+ viewer) in one process, both lanes reported.

Apart from ``live`` because it is the one command a new user runs first, and its options (the held
scene, recording into a temporary folder, a results file) are its own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from sbd_stream.cli.app import app, fail, log, on_signals, settings_error, setup_logging
from sbd_stream.cli.live import stages_or_fail
from sbd_stream.cli.options import (
    Complete,
    CountsPerPx,
    DosePerArea,
    Engine,
    EvidenceFrames,
    Flags,
    Likelihood,
    Live,
    Model,
    PixelSize,
    Policy,
    Verbose,
    Workers,
    endpoints_named,
    folder_named,
    parse_shape,
    settings_from_flags,
)
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
from sbd_stream.cli.time_options import rate_problem
from sbd_stream.invocation import invocation

if TYPE_CHECKING:
    from sbd_stream.config import ServiceSettings


@app.command()
def demo(
    frames: int = typer.Option(1200, min=1, help="How many frames the emulator sends (1200: 30 s at 40 Hz)"),
    shape: str | None = typer.Option(
        None, help="Detector frame size HxW (default 1024x1024; a recording's own with --source)"
    ),
    rate: float = typer.Option(40.0, help="Emulated detector frame rate (Hz)"),
    source: Path | None = typer.Option(
        None,
        help="Simulated dataset (.h5) whose images cycle, one per frame, or a recording whose raw counts "
        "are re-sent at its own sampling; default: the held scene (--scene)",
    ),
    synthetic: bool = typer.Option(False, "--synthetic", help="Use a synthetic lattice instead"),
    scene: Scene = None,
    drift: Drift = None,
    drift_angle: DriftAngle = None,
    focus: Focus = None,
    focus_rate: FocusRate = None,
    event_frame: EventFrame = None,
    event: Event = None,
    live: Live = None,
    complete: Complete = None,
    policy: Policy = None,
    likelihood: Likelihood = None,
    evidence_frames: EvidenceFrames = None,
    pixel_size: PixelSize = None,
    dose: DosePerArea = None,
    counts_per_px: CountsPerPx = None,
    record_dir: Path | None = typer.Option(
        None,
        "--record-dir",
        parser=folder_named,
        help="Keep the recording in this folder (default: a temporary one, removed)",
    ),
    record: bool = typer.Option(
        True,
        "--record/--no-record",
        help="Record raw and denoised frames (read back for the complete lane's summary)",
    ),
    engine: Engine = None,
    model: Model = None,
    workers: Workers = None,
    viewer: bool = typer.Option(False, "--viewer", help="Live viewer page too (raise --frames)"),
    viewer_port: int = typer.Option(8090, help="Live viewer port (0: any free port)"),
    json_out: Path | None = typer.Option(
        None, "--json-out", help="Also write the summary, with the command and machine, to this JSON file"
    ),
    verbose: Verbose = False,
) -> None:
    """Emulator + service (+ viewer) in one command: live status, then both lanes and PSNR.

    By default the emulated detector is the paper's K2 (0.060 A pixels, 0.45 counts/px in vacuum), so
    the PSNR printed at the end is the real-condition number, and it plays one held-out specimen
    (the bundled scene) drifting at 0.5 A/s with slowly changing focus, as a microscope would.
    The summary reports the live lane (frames shown per second, latency to the subscriber) and the
    complete lane (raw and denoised frames read back from the recording, kept only with --record-dir).

    With --source RECORDING its raw counts are re-sent as recorded, and the service is set to the
    recording's sampling (pixel size, dose), as `emulate --source` announces it; a flag that states
    otherwise is refused. A recording holds no clean truth, so no PSNR is reported (``psnr_note``).
    """
    from pydantic import ValidationError

    from sbd_stream.cli.service_start import holding_ports, prepare_process
    from sbd_stream.sinks.writable import file_problem
    from sbd_stream.sources.emulator import EmulatorSettings

    setup_logging(verbose)
    if problem := rate_problem(rate):  # before the models load (EmulatorSettings refused it with a traceback)
        fail(problem)
    prepare_process()  # the demo runs the service itself: its recording, sockets and /metrics (serve's limit)
    if json_out is not None and (problem := file_problem(json_out)):  # before the run, not after it
        fail(f"--json-out {json_out}: {problem}")
    held = (scene, drift, drift_angle, focus, focus_rate, event_frame, event)
    scene_flags_need_the_scene(synthetic, source, *held)  # before the engine loads
    if source is not None and not synthetic:
        pixel_size, dose, counts_per_px = _recorded_sampling(source, shape, pixel_size, dose, counts_per_px)
    flags = Flags(
        pixel_size=pixel_size,
        dose=dose,
        counts_per_px=counts_per_px,
        input="tcp://127.0.0.1:*",
        mode="connect",
        output="tcp://127.0.0.1:*",
        record_dir=record_dir,  # None: a temporary folder, made once the engine has loaded (_temporary)
        record=record,
        engine=engine,
        model=model,
        policy=policy,
        live=live,
        complete=complete,
        workers=workers,
        likelihood=likelihood,
        evidence_frames=evidence_frames,
        metrics=viewer,  # the viewer's rate / latency tiles read them
        metrics_port=0,
        viewer=viewer,
        viewer_port=viewer_port,
    )
    s = settings_from_flags(flags)
    if record and record_dir is not None:
        _check_record_dir(s)
    try:  # every emulator value checked before the engine loads: one line, not a traceback
        emu_cfg = EmulatorSettings(
            endpoint="tcp://127.0.0.1:*",
            shape=parse_shape(shape or "1024x1024"),
            dose=s.detector.vacuum_counts,
            pixel_size_A=s.detector.pixel_size_A,
            rate_hz=rate,
            n_frames=frames,
            source=None if synthetic else source,
            pool=8,
            **(
                {}
                if synthetic or source
                else scene_fields(scene, drift, drift_angle, focus, focus_rate, event_frame, event)
            ),
        )
    except ValidationError as e:
        fail(settings_error(e, EMULATOR_FLAGS))
    with ExitStack() as ports:
        with endpoints_named(flags):  # a busy --viewer-port: one line, before the engine loads (h34)
            ports.enter_context(holding_ports(s))
        _run(s, flags, stages_or_fail(s), emu_cfg, source, synthetic, shape, record, record_dir, json_out)


def _run(
    s: ServiceSettings,
    flags: Flags,
    stages: list[Any],
    emu_cfg: Any,
    source: Path | None,
    synthetic: bool,
    shape: str | None,
    record: bool,
    record_dir: Path | None,
    json_out: Path | None,
) -> None:
    """The demo once its ports are held and the engine loaded: the emulator, the service, the summary."""
    from sbd_stream.service.demo import run_demo

    if source is not None and not synthetic:
        from sbd_stream.sources.emulator_recording import for_recording

        try:  # checked already by _recorded_sampling; a file changed since is still one line
            emu_cfg, _ = for_recording(emu_cfg, shape_given=shape is not None)  # its frame size and dtype
        except (ValueError, OSError) as e:
            fail(f"--source {source}: {e}")
    from sbd_stream.sources.emulator import FrameSource

    try:  # what the emulator's child would refuse (a dose its count type cannot hold), said here
        note = FrameSource(emu_cfg).note
    except (ValueError, OSError) as e:
        fail(f"emulator: {e}")
    if note:  # the PSNR would score a flat truth that no atom entered
        log.warning(
            "%s, only vacuum: its PSNR scores no atom; give a larger --shape or a dataset with a specimen",
            note,
        )
    from sbd_stream.cli.run_info import run_started

    started = run_started()  # the load before the run: "a quiet machine" is checkable in the file
    stop = threading.Event()
    made: list[str] = []  # the temporary folder, for a third signal that ends the process at once

    # Ctrl-C, SIGTERM, SIGHUP: one clean stop (child ended, temporary folder gone); a third: folder gone
    def remove_made() -> None:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)

    release = on_signals(stop, on_abort=remove_made)
    try:
        tmp = _temporary(s) if record and record_dir is None else None
        made += [tmp.name] if tmp is not None else []
        try:
            with endpoints_named(flags):  # a busy --viewer-port: one line, not a traceback
                result = run_demo(s, stages, emu_cfg, status=lambda ln: typer.echo(ln, err=True), stop=stop)
        finally:
            if tmp is not None:
                tmp.cleanup()
    finally:
        release()
    if record:  # the temporary folder is gone; --record-dir keeps the files
        result["lanes"]["complete"]["recording"]["kept"] = record_dir is not None
    try:
        typer.echo(json.dumps(result, indent=2))
    finally:  # --json-out is written even when standard output cannot be (cli/stdout_guard.py)
        if json_out is not None:  # a results file for benchmarks/readme_tables.py (README's demo table)
            _write_json_out(json_out, result, started)


def _write_json_out(json_out: Path, result: dict[str, Any], started: dict[str, Any]) -> None:
    """The summary with the date (UTC), commit + dirty flag, load average at start and end, library
    versions and machine; a disk filled since the start check, or the folder removed, is one line."""
    from sbd_stream.cli.run_info import run_info

    head = {"benchmark": "demo", "command": invocation("sbd-stream"), **run_info(started)}
    try:
        json_out.write_text(json.dumps({**head, **result}, indent=2) + "\n")
    except OSError as e:
        fail(f"--json-out {json_out}: {e.strerror or e}")


def _check_record_dir(s: ServiceSettings) -> None:
    """``--record-dir`` where no file can be created: one line, exit 2, before the engine loads."""
    from sbd_stream.service.build import RecordDirError, check_record_dir

    try:
        check_record_dir(s)
    except RecordDirError as e:
        fail(f"--record-dir {e.where}: {e.reason}")


def _temporary(s: ServiceSettings) -> tempfile.TemporaryDirectory[str]:
    """The recording's temporary folder, set as ``record.directory``; made after the engine loaded and
    with the stop signals handled, so neither a signal during the load nor a stop leaves it behind."""
    try:
        tmp = tempfile.TemporaryDirectory(prefix="sbd-demo-")
    except OSError as e:  # no writable TMPDIR, /tmp or working folder
        fail(f"a temporary folder for the recording: {e}; use --record-dir DIR or --no-record")
    s.record.directory = Path(tmp.name)
    return tmp


def _recorded_sampling(
    source: Path, shape: str | None, pixel_size: float | None, dose: float | None, counts: float | None
) -> tuple[float | None, float | None, float | None]:
    """(pixel size, dose, counts per px) for the service: a recording's own, else the flags unchanged.

    Why: the emulator re-sends a recording's counts at the sampling they were taken at; a service left
    at the flags' default (0.060 A, 0.45 counts) denoised a 0.12 A, 1.8-count recording at bin 4 and
    the wrong dose. Contradicting flags end in one line, as for ``emulate --source``.
    """
    from sbd_stream.sources.emulator_recording import for_recording, recorded_layout
    from sbd_stream.sources.emulator_settings import EmulatorSettings
    from sbd_stream.sources.stacks import StackError

    try:
        if not source.is_file() or recorded_layout(source) is None:
            return pixel_size, dose, counts
        probe = EmulatorSettings(source=source, shape=parse_shape(shape or "1024x1024"))
        cfg, _ = for_recording(
            probe,
            shape_given=shape is not None,
            pixel_size_A=pixel_size,
            dose_e_per_A2=dose,
            counts_per_px=counts,
        )
    except (OSError, ValueError, StackError) as e:
        fail(f"--source {source}: {e}")
    return cfg.pixel_size_A, None, cfg.dose
