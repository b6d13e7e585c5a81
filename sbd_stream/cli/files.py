"""`sbd-stream denoise | info | export`: files in, files out, and what this machine can run."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import typer

from sbd_stream.cli.app import Stopped, app, fail, setup_logging, stop_signals_unwind
from sbd_stream.cli.options import (
    Batch,
    CountsPerPx,
    DaskWorkers,
    Device,
    DosePerArea,
    Engine,
    Flags,
    Model,
    OutputCompression,
    PixelSize,
    Scheduler,
    Verbose,
    detector_section,
    service_settings,
    settings_from_flags,
)


@app.command()
def denoise(
    input: Path = typer.Argument(
        ...,
        help="Stack of counted frames: .h5/.hdf5/.nxs (a recording too), .emd, .npy, .tif/.tiff, "
        ".mrc/.mrcs, .dm3/.dm4 or a .zarr folder (abTEM's to_zarr)",
    ),
    output: Path = typer.Argument(
        ...,
        help="HDF5 file to write (dataset 'denoised', float32 counts; bitshuffle-LZ4 unless --compression "
        "says otherwise: read it with `import hdf5plugin` before h5py, as recordings)",
    ),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="HDF5 dataset holding the frames"),
    engine: Engine = "auto",
    model: Model = None,
    device: Device = None,
    pixel_size: PixelSize = None,
    dose: DosePerArea = None,
    counts_per_px: CountsPerPx = None,
    batch: Batch = None,
    tile: int | None = typer.Option(None, help="Tile size in working pixels (default: the engine card's)"),
    margin: int | None = typer.Option(
        None, help="Tile margin in working pixels (default: the engine card's)"
    ),
    orientations: int = typer.Option(
        8,
        help="Average the engine over 1, 2, 4 or 8 turned copies of each frame (8: equivariant); an "
        "engine trained with flips only gets its 4 flips for 4 or 8",
    ),
    upsample: str | None = typer.Option(
        None,
        help="Back to detector pixels: auto (bicubic here; the live service on a CPU: bilinear), bicubic "
        "or bilinear (as a CPU's live lane; with --orientations 1 its frames)",
    ),
    overwrite: bool = typer.Option(False, help="Replace OUTPUT if it exists"),
    scheduler: Scheduler = "local",
    dask_workers: DaskWorkers = None,
    chunk_frames: int = typer.Option(16, min=1, help="Frames per Dask task (a multiple of --batch)"),
    threads_per_worker: int | None = typer.Option(None, min=1, help="Intra-op threads per Dask worker"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Go on from OUTPUT.partial if it matches"),
    compression: OutputCompression = None,
    verbose: Verbose = False,
) -> None:
    """Denoise a recorded stack of counted frames into an HDF5 file (engine card in its attributes).

    The detector's sampling comes from the options, else from what the input states (HDF5 attributes
    ``pixel_size_A`` and ``dose_e_per_A2`` or ``counts_per_px``; an ImageJ TIFF's unit and resolution,
    an OME-TIFF's PhysicalSize, a TIFF's cm resolution tags; an MRC voxel size; a DM file's calibrations;
    a Velox / Berkeley EMD's or abTEM zarr store's pixel size), else the paper's K2 (0.060 A, 125 e/A^2
    per frame), with a warning. Frames are
    binned to the engine's working pixel and returned at theirs. The dose is checked against the vacuum
    level measured on the frames: one warning, and the output's ``dose_mismatch`` attribute, when they
    differ by more than the service's 0.8-1.25x (docs/foundation.md).
    """
    setup_logging(verbose)
    if (bad := compression_problem(compression)) is not None:  # before any work
        fail(bad)
    from sbd_stream.engines.base import EngineUnavailable
    from sbd_stream.formats.output_lock import OutputBusy
    from sbd_stream.service.offline_dask import denoise as run_denoise
    from sbd_stream.sources.stacks import StackError

    check_paths(input, output, overwrite)
    from sbd_stream.formats.recording import is_recording

    recording = dataset is None and is_recording(input)  # a `serve` recording: its raw frames, all parts
    from sbd_stream.engines.card import ArtefactError, offline_engine

    try:
        chosen = model or offline_engine()  # the quality engine on a GPU where installed
    except ArtefactError as e:  # $SBD_ENGINE_DIR names no folder
        fail(str(e))
    flags = Flags(
        pixel_size=pixel_size,
        dose=dose,
        counts_per_px=counts_per_px,
        engine=engine,
        model=chosen,
        device=device,
        batch=batch,
        tile=tile,
        margin=margin,
        orientations=orientations,
        upsample=upsample,
        threads=threads_per_worker,
    )
    settings = settings_from_flags(flags).denoise  # the live service's [denoise] settings
    try:
        summary = run_denoise(
            input,
            output,
            dataset,
            settings,
            detector=detector_section(flags),
            scheduler=scheduler,
            chunk_frames=chunk_frames,
            workers=dask_workers,
            resume=resume,
            progress=True,
            recording=recording,
            overwrite=overwrite,  # checked again before the output is renamed into place
            compression=compression,  # None: bitshuffle-lz4, or a resumed partial's own
        )
    except (StackError, FileNotFoundError, ValueError, OSError, EngineUnavailable, OutputBusy) as e:
        fail(str(e))
    typer.echo(json.dumps(summary, indent=2))


def compression_problem(compression: str | None) -> str | None:
    """Why ``--compression`` cannot be used (None: it can): one line naming the choices."""
    from sbd_stream.formats.compression import check_compression

    try:
        check_compression(compression)
    except ValueError as e:
        return str(e)
    return None


def check_paths(input: Path, output: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output that would destroy the input or cannot be written, and an
    input that is no regular file.

    A FIFO (or a socket, a device) named as the input blocked forever in h5py's open; one whose
    name is over the file system's limit made ``Path.exists()`` raise ENAMETOOLONG in a traceback.
    """
    try:
        _check_input(input)
        if output.exists() and input.exists() and output.resolve() == input.resolve():
            fail(f"{output} is the input; write the denoised frames to another file")
        if output.exists() and _part_of(input, output):
            fail(f"{output} is a rolled part of the input recording; write the denoised frames elsewhere")
        if output.is_dir():
            fail(f"{output} is a folder; name the HDF5 file to write")
        if not output.parent.is_dir():
            fail(f"{output}: folder {output.parent} does not exist")
        if output.exists() and not overwrite:
            fail(f"{output} exists; pass --overwrite to replace it")
    except OSError as e:  # ENAMETOOLONG, ELOOP: all Path.exists() lets through
        name = output if e.filename is None or Path(e.filename) != input else input
        fail(f"{name}: {e.strerror or e}{_too_long(name) if e.errno == errno.ENAMETOOLONG else ''}")


def _part_of(input: Path, output: Path) -> bool:
    """Whether ``output`` is one of the parts read with a recording ``input`` (its rolled
    continuations). Why: ``denoise REC.nxs REC_0001.nxs --overwrite`` replaced that part of the
    recording, raw frames and all, with the denoised output (exit 0); only the first file was checked."""
    from sbd_stream.formats.recording import recording_parts

    if input.suffix.lower() not in (".h5", ".hdf5", ".nxs") or not input.is_file():
        return False
    try:
        parts = recording_parts(input)
    except (OSError, ValueError, RuntimeError):  # not a recording: the reader says why, later
        return False
    return any(p.resolve() == output.resolve() for p in parts)


def _check_input(input: Path) -> None:
    """Refuse an input that exists but is no regular file (a FIFO blocked h5py's open for ever)."""
    from sbd_stream.sources.stacks import not_a_file

    try:
        why = not_a_file(input)
    except (FileNotFoundError, NotADirectoryError):  # the reader says "no such file"
        return
    if why is not None:
        fail(f"{input}: {why}")


def _too_long(path: Path) -> str:
    """Which part of ``path`` is over NAME_MAX (255 bytes on most file systems), and what to do."""
    longest = max(path.parts, key=lambda p: len(os.fsencode(p)), default="")
    size = len(os.fsencode(longest))
    return f" ({size} bytes in one name, {longest[:20]}...): shorten it" if size > 255 else ": shorten it"


@app.command()
def info(
    model: str | None = typer.Option(
        None, help="Engine name or path to describe alone (default: every engine under the engine root)"
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="TOML settings: show the engine workers they plan",
        readable=False,  # ours to check: an unreadable file is one `error:` line, not click's usage box
    ),
    service: str | None = typer.Option(
        None,
        "--service",
        help="A running serve instance's metrics URL, e.g. http://127.0.0.1:9105 (or 127.0.0.1:9105, or "
        "9105 for this machine): per-worker load",
    ),
    interval: float = typer.Option(
        1.0, "--interval", min=0.1, help="Seconds between the two --service scrapes"
    ),
) -> None:
    """Engines found, backends usable here, devices and versions; engine workers and their load."""
    from sbd_stream.engines.card import (
        ArtefactError,
        default_engine_root,
        is_path,
        live_engine,
        offline_engine,
    )
    from sbd_stream.service.build import worker_specs
    from sbd_stream.service.offline import environment_info

    try:
        root = default_engine_root()  # $SBD_ENGINE_DIR naming no folder: one line, not an empty listing
    except ArtefactError as e:
        fail(str(e))
    if not root.is_dir() and (model is None or not is_path(model)):
        # an install without engines (none in the source tree, none under <prefix>/share): this listed
        # "engines": [] with exit 0, as if the machine could run nothing and that were fine
        fail(f"no engine folder: {root} does not exist; set SBD_ENGINE_DIR to the folder holding the engines")
    try:
        out = environment_info(model)
    except ArtefactError as e:
        fail(f"--model: {e}")
    if model is not None and (problem := out["engines"][0].get("error")):
        fail(f"--model: {problem}")  # the one engine asked about cannot load: not a listing with exit 0
    # which engine runs when none is named, on this machine: live (serve, demo) and offline (denoise)
    out["default_engines"] = {"live": live_engine(), "offline": offline_engine()}
    out["workers"] = [w.describe() for w in worker_specs(service_settings(config, {}))]
    if service is not None:
        out["service"] = _service_load(_service_url(service), interval)
    typer.echo(json.dumps(out, indent=2))


def _service_url(given: str) -> str:
    """``--service`` as the URL of a metrics endpoint, without ``/metrics``: ``http://HOST:PORT``,
    ``HOST:PORT`` or a bare ``PORT`` (this machine, 127.0.0.1), as serve's log and the docs show them.

    Why (session 33): ``--service 127.0.0.1:9105`` failed with urllib's "unknown url type: 127.0.0.1"."""
    import urllib.parse

    url = given.strip().rstrip("/").removesuffix("/metrics")
    if url.isdigit():
        url = f"127.0.0.1:{url}"
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:  # a port that is no number or out of range
        fail(f"--service {given}: {e}; give http://HOST:PORT (e.g. http://127.0.0.1:9105)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"--service {given}: not an HTTP URL; give http://HOST:PORT (e.g. http://127.0.0.1:9105)")
    if port is None and "://" not in given:  # "localhost": serve's default metrics port, not HTTP's 80
        url = f"{url}:9105"
    return url


def _service_load(url: str, interval: float) -> dict[str, Any]:
    """Two scrapes of a running service's /metrics: each worker's load and rate in between.

    An endpoint with no engine worker series is refused in one line saying what it is: a merge's
    metrics port (it runs no workers) printed ``"workers": []`` with exit 0, as if the service were idle."""
    import urllib.error
    import urllib.request

    from sbd_stream.service.workers import worker_load, worker_samples

    def scrape() -> str:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            return r.read().decode("utf-8", "replace")

    try:
        before = scrape()
        if "\nsbd_starting 1" in before:  # httpd.StartingHandler: the engine loads; it waited here before
            fail(f"--service {url}: starting (loading the engine); ask again once its /healthz answers 200")
        if not worker_samples(before):
            fail(f"--service {url}: {_not_serve(before)}")
        time.sleep(interval)
        after = scrape()
        workers = worker_load(before, after, interval)
    except (urllib.error.URLError, OSError) as e:
        fail(f"--service {url}: {e}")
    except ValueError as e:  # no Prometheus text (another web server's page)
        fail(f"--service {url}: its /metrics is no Prometheus text ({e}); is it serve's metrics port?")
    return {"url": url, "interval_s": interval, "workers": workers}


def _not_serve(text: str) -> str:
    """What a metrics endpoint without engine worker series is, in words (``_service_load``)."""
    if "sbd_merge_" in text:
        from prometheus_client.parser import text_string_to_metric_families

        received = sum(
            s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == "sbd_merge_received_total"
        )  # fmt: skip
        return (
            f"this is a `sbd-stream merge`'s metrics endpoint ({received:.0f} messages received from its "
            "inputs; `curl` it for the rest), not a serve instance's: a merge runs no engine workers; "
            "give each instance's metrics port"
        )
    return "no engine worker series (sbd_worker_*) there: not a `sbd-stream serve` instance's metrics port"


@app.command()
def export(
    recording: Path = typer.Argument(
        ..., help="A recording (the first file of the series), or a denoise / replay --offline output"
    ),
    to: str = typer.Option(
        ..., "--to", help="tiff (ImageJ; also tif), mrc or npy (+ a JSON sidecar); csv for --kind columns"
    ),
    kind: str = typer.Option(
        "denoised",
        "--kind",
        help="raw, denoised or llr frames; columns: the detected-column table, one CSV line per column",
    ),
    out: Path | None = typer.Option(None, "--out", help="File to write (default: <recording>_<kind>.<ext>)"),
    overwrite: bool = typer.Option(False, help="Replace --out if it exists"),
) -> None:
    """Write a recording's frames, in frame order, as TIFF, MRC or NPY with the pixel size in the
    target's own fields; or (--kind columns --to csv) every detected atomic column of its llr rows, one
    line each with its frame's seq, ts, n_columns, vacuum level and flags (frames without columns: counted
    in the printed summary, no line)."""
    from sbd_stream.sinks.export import ExportError
    from sbd_stream.sinks.export import export as run_frames
    from sbd_stream.sinks.export_columns import KIND, export_columns
    from sbd_stream.sources.stacks import not_a_file

    if not recording.exists():
        fail(f"{recording} not found")
    if problem := not_a_file(recording):  # a FIFO blocked in HDF5's open for good, a folder was an HDF5 dump
        fail(f"{recording}: {problem}")
    try:
        with stop_signals_unwind():
            if kind.strip().lower() == KIND:  # the detected-column table (sinks/export_columns.py)
                summary = export_columns(recording, to, out, overwrite)
            else:
                summary = run_frames(recording, to, kind, out, overwrite)
            typer.echo(json.dumps(summary, indent=2))
    except (ExportError, OSError) as e:
        fail(str(e))
    except (Stopped, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Stopped) else 2
        name = str(e) if isinstance(e, Stopped) else "SIGINT"
        typer.echo(f"{name}: export stopped; nothing was written (its temporary file is removed)", err=True)
        raise typer.Exit(128 + signum) from None
