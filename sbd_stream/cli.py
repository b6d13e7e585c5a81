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
