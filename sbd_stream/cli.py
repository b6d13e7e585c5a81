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
    from sbd_stream.config import ServiceSettings

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
EvidenceFrames = Annotated[
    int,
    typer.Option(
        "--evidence-frames",
        min=0,
        max=16,
        help="Score columns on N other frames' counts (unbiased; static specimen; implies --likelihood)",
    ),
]
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
Workers = Annotated[
    int,
    typer.Option(
        "--workers", min=1, help="Engine workers (default: one per GPU, else 1; a CPU's cores are split)"
    ),
]
Scheduler = Annotated[
    str,
    typer.Option(
        "--scheduler",
        help="Offline: local (a Dask cluster on this machine), tcp://host:port (an existing Dask "
        "scheduler) or none (in this process); docs/scale-out-offline.md",
    ),
]
DaskWorkers = Annotated[
    int, typer.Option("--dask-workers", min=1, help="Local cluster workers (default: min(cores, chunks))")
]
Compression = Annotated[
    str,
    typer.Option(
        "--compression",
        help="Recording compression: bitshuffle-lz4 (default; readers need hdf5plugin), gzip or none",
    ),
]


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
    scheduler: Scheduler = "local",
    dask_workers: DaskWorkers = None,  # type: ignore[assignment]
    chunk_frames: int = typer.Option(16, min=1, help="Frames per Dask task (a multiple of --batch)"),
    threads_per_worker: int = typer.Option(None, min=1, help="Intra-op threads per Dask worker"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Go on from OUTPUT.partial if it matches"),
    verbose: Verbose = False,
) -> None:
    """Denoise a recorded stack of counted frames into an HDF5 file (engine card in its attributes).

    The detector's sampling comes from the options, else from the input's HDF5 attributes
    (``pixel_size_A`` and ``dose_e_per_A2`` or ``counts_per_px``), else the paper's K2 (0.060 A,
    125 e/A^2 per frame). Frames are binned to the engine's working pixel and returned at theirs.
    """
    _setup_logging(verbose)
    from sbd_stream.service.offline_dask import EngineSpec
    from sbd_stream.service.offline_dask import denoise as run_denoise
    from sbd_stream.sources.stacks import StackError

    if output.exists() and not overwrite:
        _fail(f"{output} exists; pass --overwrite to replace it")
    try:
        summary = run_denoise(
            input,
            output,
            dataset,
            EngineSpec(engine, model, device, tile, margin, threads=threads_per_worker),
            detector=_detector(pixel_size, dose, counts_per_px),
            scheduler=scheduler,
            batch=batch,
            chunk_frames=chunk_frames,
            workers=dask_workers,
            resume=resume,
            progress=True,
        )
    except (StackError, FileNotFoundError, ValueError, OSError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def info(
    model: str = typer.Option(None, help="Engine name or path to inspect (default: the shipped one)"),
    config: Path = typer.Option(
        None, "--config", "-c", help="TOML settings: show the engine workers they plan"
    ),
    service: str = typer.Option(
        None, "--service", help="A running service's metrics URL, e.g. http://127.0.0.1:9105: per-worker load"
    ),
    interval: float = typer.Option(
        1.0, "--interval", min=0.1, help="Seconds between the two --service scrapes"
    ),
) -> None:
    """Engines found, backends usable here, devices and versions; engine workers and their load."""
    from sbd_stream.service.offline import environment_info
    from sbd_stream.service.pipeline import worker_specs

    out = environment_info(model)
    out["workers"] = [w.describe() for w in worker_specs(_service_settings(config, {}))]
    if service is not None:
        out["service"] = _service_load(service.rstrip("/"), interval)
    typer.echo(json.dumps(out, indent=2))


def _service_load(url: str, interval: float) -> dict:
    """Two scrapes of a running service's /metrics: each worker's load and rate in between."""
    import urllib.error
    import urllib.request

    from sbd_stream.service.workers import worker_load

    def scrape() -> str:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            return r.read().decode()

    try:
        before = scrape()
        time.sleep(interval)
        after = scrape()
    except (urllib.error.URLError, OSError) as e:
        _fail(f"--service {url}: {e}")
        raise
    return {"url": url, "interval_s": interval, "workers": worker_load(before, after, interval)}


@app.command()
def export(
    recording: Path = typer.Argument(..., help="A recording (the first file of the series)"),
    to: str = typer.Option(..., "--to", help="tiff (ImageJ), mrc or npy (+ a JSON sidecar)"),
    kind: str = typer.Option("denoised", "--kind", help="raw, denoised or llr"),
    out: Path = typer.Option(None, "--out", help="File to write (default: <recording>_<kind>.<ext>)"),
) -> None:
    """Write a recording's frames as TIFF, MRC or NPY with the pixel size in the target's own fields."""
    from sbd_stream.sinks.export import ExportError
    from sbd_stream.sinks.export import export as run_export

    if not recording.exists():
        _fail(f"{recording} not found")
    try:
        typer.echo(json.dumps(run_export(recording, to, kind, out), indent=2))
    except (ExportError, OSError) as e:
        _fail(str(e))


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
    """Load the engine(s) and plan the detector geometry; a sampling they cannot serve ends the command."""
    from sbd_stream.compute.binning import SamplingError
    from sbd_stream.service.pipeline import load_stages

    try:
        return load_stages(s)  # one batch stage per engine worker (denoise.workers)
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


# the live-service commands (serve, replay, emulate, demo) and `merge` (cli_scale) register on ``app``
from sbd_stream import cli_live, cli_scale  # noqa: E402, F401

if __name__ == "__main__":  # `python -m sbd_stream.cli`: the commands registered on the imported module's app
    from sbd_stream.cli import app as _registered

    _registered()
