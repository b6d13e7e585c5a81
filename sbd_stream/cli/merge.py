"""`sbd-stream merge`: several `serve` instances sharing one detector stream, re-ordered into one.

The logic is ``sbd_stream.merge``; the deployment is described in docs/scale-out-nodes.md.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from sbd_stream.cli.app import app, fail, on_signals, setup_logging
from sbd_stream.cli.options import Verbose

if TYPE_CHECKING:
    from sbd_stream.merge import MergeService


@app.command()
def merge(
    inputs: list[str] = typer.Option(
        ...,
        "--input",
        "-i",
        help="A serve instance's --output (repeat: one per instance), e.g. tcp://node1:5556",
    ),
    output: str = typer.Option(
        "tcp://127.0.0.1:5570", "--output", "-o", help="Where the merged stream is bound"
    ),
    gap_timeout: float = typer.Option(
        2.0,
        "--gap-timeout",
        min=0,
        help="Seconds a frame waits for a missing earlier one (and an end for stragglers)",
    ),
    window: int = typer.Option(
        64,
        "--window",
        min=0,
        help="Frames held behind a missing one before it is declared missing (memory bound)",
    ),
    first_seq: int | None = typer.Option(
        None, "--first-seq", min=0, help="Every acquisition's first frame number (default: learnt per stream)"
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="Prometheus /metrics on 127.0.0.1 (0: any port)"
    ),
    verbose: Verbose = False,
) -> None:
    """Merge the outputs of several `serve` instances that share one PUSH detector stream.

    Each instance publishes the denoised frames (and likelihood maps) of its share under their frame
    numbers; this subscribes to all of them and republishes one stream in frame order on --output:
    every frame once, series_start first and series_end last. A frame that has not come after
    --gap-timeout seconds, or with more than --window later frames waiting, is declared missing
    (logged once per contiguous range, counted). Prints a status line every 2 s and a JSON summary
    on Ctrl-C / SIGTERM. See docs/scale-out-nodes.md.
    """
    import threading

    import zmq

    from sbd_stream.merge import run_merge

    setup_logging(verbose)
    stop = threading.Event()
    on_signals(stop)

    def started(svc: MergeService) -> None:
        typer.echo(
            f"merging {len(inputs)} inputs ({', '.join(inputs)}) -> {svc.endpoint}  (Ctrl-C to stop)",
            err=True,
        )

    try:
        result = run_merge(
            list(inputs),
            output,
            stop,
            window=window,
            gap_timeout_s=gap_timeout,
            first_seq=first_seq,
            metrics_port=metrics_port,
            status=lambda line: typer.echo(line, err=True),
            started=started,
        )
    except (zmq.ZMQError, OSError, ValueError) as e:
        fail(f"merge: {e}")
    typer.echo(json.dumps(result, indent=2))
    if result.get("failure"):
        typer.echo(f"sbd-stream merge stopped: {result['failure']}", err=True)
        raise typer.Exit(3)
