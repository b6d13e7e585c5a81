"""Simulation commands: ``simulate`` (a world into an HDF5 set), ``contact-sheet``, ``demo-samples``."""

from __future__ import annotations

from pathlib import Path

import typer

from sbd_stream.cli.app import fail
from training.cli.checks import need_dataset
from training.cli.errors import need_modules


def simulate(
    preset: str = typer.Option(
        "mini",
        help="tiny | mini | detector | paper | paper-envelope | paper-optics | paper-twins "
        "(see docs/simulation.md)",
    ),
    out: Path = typer.Option(Path("data/mini.h5"), help="HDF5 file; an existing one is resumed"),
    scheduler: str | None = typer.Option(
        None, help="dask.distributed scheduler address, e.g. tcp://host:8786"
    ),
    workers: int = typer.Option(2, min=1, help="local Dask workers when no scheduler is given"),
    max_tasks: int | None = typer.Option(None, min=1, help="stop after this many new tasks"),
    plan_only: bool = typer.Option(False, "--plan", help="print the grid size and exit"),
) -> None:
    """Simulate clean TEM images with abTEM multislice into an appendable, resumable HDF5 set."""
    from training.sim.simulate import simulate as run_simulation
    from training.sim.worlds import WORLDS, describe

    if preset not in WORLDS:
        fail(f"--preset: unknown world {preset!r}; choose from {', '.join(WORLDS)}")  # one line, as train's
    world = WORLDS[preset]
    if plan_only:
        typer.echo(describe(world))
        return
    need_modules("ase", "abtem")  # the `train` extra, imported in the Dask tasks: one line here instead
    if out.is_dir():
        fail(f"--out {out}: a folder, not an HDF5 file")
    if out.exists():  # resumed: it must open (a truncated copy fails in h5py, without its name)
        import h5py

        try:
            h5py.File(out, "r").close()
        except OSError as e:
            why = " ".join(str(e).split())
            fail(f"--out {out}: not a readable HDF5 file ({why}): move it away to start over")
    if scheduler is not None:  # a tls:// cluster without this client's certificates: distributed's
        # bare TypeError ("TLS expects a ssl_context argument"), a traceback, before any task ran
        from sbd_stream.service.offline_cluster import external_tls_checked

        try:
            external_tls_checked(scheduler)
        except ValueError as e:
            fail(f"--scheduler {e}")
    from training.cli.sim_stop import simulation_stops

    try:
        with simulation_stops(out) as check:  # Ctrl-C / SIGTERM: one line, what is kept; no Dask chatter
            summary = run_simulation(
                world, out, scheduler=scheduler, workers=workers, max_tasks=max_tasks, check=check
            )
    except OSError as e:  # distributed's "Timed out trying to connect to ADDR" is a plain OSError
        if scheduler is None or scheduler not in str(e):
            raise
        # was "error: Timed out trying to connect ... (a damaged or truncated HDF5 file?)": not the file
        why = " ".join(str(e).split())
        fail(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({why}); is one running there?")
    if summary["failed"]:
        raise typer.Exit(1)


def contact_sheet(
    data: Path = typer.Option(Path("data/mini.h5"), help="simulated HDF5 set"),
    out: Path = typer.Option(Path("docs/contact_sheet.png"), help="PNG to write"),
    seed: int = typer.Option(0, help="seed of the Poisson noise"),
) -> None:
    """Clean and noisy images across defocus, thickness and particle class, as one small PNG."""
    from training.sim.contact_sheet import make_contact_sheet

    need_dataset(data, "--data")
    # matplotlib takes the format from the suffix: a folder or a bare name ended in "error: unknown file
    # extension:", which named neither the option nor the path
    if out.is_dir():
        fail(f"--out {out}: a folder, not an image file (e.g. {out / 'contact_sheet.png'})")
    if not out.suffix:
        fail(f"--out {out}: no file extension to take the image format from (e.g. {out}.png)")
    make_contact_sheet(data, out, seed=seed)
    typer.echo(f"wrote {out}")


def demo_samples(
    data: Path = typer.Option(Path("data/mini.h5"), help="Simulated dataset to take test images from"),
    n: int = typer.Option(12, min=1, help="How many clean images"),
) -> None:
    """Bundle a few held-out clean images for `sbd-stream demo` (sbd_stream/samples/)."""
    from training.sim.samples import write_demo_samples

    need_dataset(data, "--data")
    typer.echo(f"wrote {write_demo_samples(data, n=n)}")


def scenes(
    out: Path = typer.Option(Path("sbd_stream/samples/scenes.h5"), help="Scene bundle to write"),
    models: int = typer.Option(1, min=1, max=3, help="Test-split models (each: base + vanish + hop)"),
    thickness: float = typer.Option(4.0, help="Support thickness along the beam, nm"),
) -> None:
    """Held-out scenes for the emulator: one model of the paper world's test split over a defocus series,
    plus a column that vanishes / hops, imaged by abTEM (~5 min per variant on 2 busy cores; nice it)."""
    from training.sim.scenes import write_scenes

    need_modules("ase", "abtem")  # the `train` extra: one line before the .tmp.h5 is created
    typer.echo(f"wrote {write_scenes(out, n_models=models, thickness_nm=thickness, log=typer.echo)}")
