"""`sbd-stream merge`: several `serve` instances sharing one detector stream, re-ordered into one.

The logic is ``sbd_stream.merge``; the deployment is described in docs/scale-out-nodes.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sbd_stream.cli.app import app, fail, on_signals, setup_logging
from sbd_stream.cli.options import Verbose
from sbd_stream.cli.time_options import MAX_WAIT_S

if TYPE_CHECKING:
    from sbd_stream.merge import MergeService
    from sbd_stream.security import CurveSettings


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
        max=MAX_WAIT_S,
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
    curve_secret_key: Path | None = typer.Option(
        None, "--curve-secret-key", help="CURVE: this merge's NAME.key_secret (with either option below)"
    ),
    curve_server_key: Path | None = typer.Option(
        None, "--curve-server-key", help="CURVE on the inputs: the instances' publisher key (NAME.key)"
    ),
    curve_clients: Path | None = typer.Option(
        None, "--curve-clients", help="CURVE on --output: folder of the subscribers' NAME.key allowed"
    ),
    verbose: Verbose = False,
) -> None:
    """Merge the outputs of several `serve` instances that share one PUSH detector stream.

    Each instance publishes the denoised frames (and likelihood maps) of its share under their frame
    numbers; this subscribes to all of them and republishes one stream in frame order on --output:
    every frame once, series_start first and series_end last. A frame that has not come after
    --gap-timeout seconds, or with more than --window later frames waiting, is declared missing
    (logged once per contiguous range, counted). Start it before the instances and the detector: a
    series it joins late has no series_start and misses its first frames (counted as joined
    mid-series, logged once). Prints a status line every 2 s and a JSON summary on Ctrl-C / SIGTERM.
    See docs/scale-out-nodes.md.
    """
    import threading

    import zmq

    from sbd_stream.cli.service_start import prepare_process
    from sbd_stream.merge import run_merge
    from sbd_stream.merge.service import MergeEndpointError
    from sbd_stream.security import CurveError

    setup_logging(verbose)
    prepare_process()  # one socket per input and subscriber, plus /metrics connections: as serve does
    stop = threading.Event()
    on_signals(stop)

    def started(svc: MergeService) -> None:
        typer.echo(
            f"merging {len(inputs)} inputs ({', '.join(inputs)}) -> {svc.endpoint}  (Ctrl-C to stop)",
            err=True,
        )

    input_curve, output_curve = merge_curve(curve_secret_key, curve_server_key, curve_clients)
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
            input_curve=input_curve,
            output_curve=output_curve,
        )
    except MergeEndpointError as e:  # "--output ...: Address already in use (...)", as serve says it
        fail(str(e))
    except (zmq.ZMQError, OSError, ValueError, CurveError) as e:
        fail(f"merge: {e}")
    typer.echo(json.dumps(result, indent=2))
    if result.get("failure"):
        typer.echo(f"sbd-stream merge stopped: {result['failure']}", err=True)
        raise typer.Exit(3)


def merge_curve(
    secret: Path | None, server_key: Path | None, clients: Path | None
) -> tuple[CurveSettings | None, CurveSettings | None]:
    """(input, output) CURVE settings from the flags; key files are read now, so a bad one is one line.

    Instances that publish with ``[publish] curve`` (across an untrusted network, docs/deployment.md)
    are CURVE servers: the merge connects to them as a client with its own key pair and their public
    key. Its own output is a CURVE server when ``--curve-clients`` names who may subscribe.
    """
    from sbd_stream.security import CurveError, CurveSettings, check_curve, load_keypair, load_public_key

    if (server_key or clients) and secret is None:
        fail("--curve-server-key / --curve-clients need --curve-secret-key (this merge's NAME.key_secret)")
    if secret is not None and not (server_key or clients):
        fail("--curve-secret-key alone does nothing: add --curve-server-key and/or --curve-clients")
    try:
        if secret is not None:
            load_keypair(secret)
        if server_key is not None:
            load_public_key(server_key)
        if clients is not None and not clients.is_dir():
            raise CurveError(f"--curve-clients {clients} is not a folder")
    except CurveError as e:
        fail(f"merge: {e}")
    if secret is None:
        return None, None  # plain TCP, as before
    key = {"enabled": True, "secret_key_file": secret}
    inp = CurveSettings(**key, role="client", server_public_key_file=server_key) if server_key else None
    out = CurveSettings(**key, role="server", authorized_keys_dir=clients) if clients else None
    try:  # each client key in the folder, as serve does: a malformed one was a traceback at set-up
        if out is not None:
            check_curve(out)
    except CurveError as e:
        fail(f"merge: --curve-clients: {e}")
    return inp, out
