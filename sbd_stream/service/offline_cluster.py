"""The Dask cluster an offline job runs on: a local one that only this process can use, or the user's.

Why TLS on loopback: a ``LocalCluster`` listens on 127.0.0.1 ports (scheduler, each worker, each nanny),
and any local user of a shared facility workstation could connect a ``Client`` there and run pickled
Python as us (audit h33). Its cluster now has throw-away certificates made in memory
(``Security.temporary``: one self-signed CA, mutual TLS, ``require_encryption``), handed to the worker
processes when they are spawned and to our ``Client``; a connection without them (plain ``tcp://``, or
``tls://`` without a certificate of that CA) fails its handshake before any message is read. An external
``--scheduler tcp://`` / ``tls://`` cluster is the user's to secure: ``Client`` takes dask's own
``distributed.comm.tls.*`` configuration (docs/scale-out-offline.md, "Security").
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from typing import Any

from sbd_stream.service.offline_plan import default_workers
from sbd_stream.service.offline_results import refuse_closed_port


def local_security() -> Any:
    """A ``distributed.security.Security`` with a fresh in-memory CA and key (``cryptography`` makes
    them): only the processes it is given to can talk to the cluster."""
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError as e:  # a base dependency; named here in case an environment lost it
        raise ImportError(f"a local Dask cluster needs `cryptography` for its TLS certificates: {e}") from e


def start_client(scheduler: str, workers: int | None, n_chunks: int, gpu: bool, stack: ExitStack) -> tuple:
    """(client, number of workers, description); a local cluster is bound to 127.0.0.1 with mutual TLS
    (``local_security``), and its scheduler's HTTP server to a free port there (``dashboard_address=None``
    still took 8787).

    Its workers log at CRITICAL only (ERROR with ``-v``): a task's exception is raised on the client
    with its own message, and each worker printed it first as a multi-line "Compute Failed / Key /
    State / Task / Exception / Traceback" block before the command's ``error:`` line."""
    from distributed import Client, LocalCluster

    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    if not verbose:  # its import set its loggers to INFO again: the closing cluster's tracebacks
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # a lost scheduler: "Failed to reconnect" and the closing client's CancelledError tracebacks,
        # before the one line that says so (SchedulerLost)
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    if scheduler == "local":
        cores = os.cpu_count() or 1
        if gpu:
            import torch

            n = workers or max(1, min(torch.cuda.device_count(), n_chunks))
        else:
            n = workers or default_workers(n_chunks, cores)
        cluster = stack.enter_context(
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0", resources={"GPU": 1} if gpu else None,
                silence_logs=logging.ERROR if verbose else logging.CRITICAL,  # below: see the docstring
                security=local_security(),  # tls://127.0.0.1: no other local user can submit work
            )
        )  # fmt: skip
        return stack.enter_context(Client(cluster)), n, f"local ({n} workers)"
    refuse_closed_port(scheduler)
    client = stack.enter_context(Client(scheduler))  # timeout: distributed.comm.timeouts.connect (30 s)
    info = client.scheduler_info()["workers"]
    if not info:
        raise ValueError(f"{scheduler}: the cluster has no workers")
    if gpu and not any(w.get("resources", {}).get("GPU") for w in info.values()):
        raise ValueError(f"{scheduler}: no worker offers a GPU resource (start them with --resources GPU=1)")
    return client, len(info), scheduler
