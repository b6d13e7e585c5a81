"""The Dask cluster an offline job runs on: a local one that only this process can use, or the user's.

Why TLS on loopback: a ``LocalCluster`` listens on 127.0.0.1 ports (scheduler, each worker, each nanny),
and any local user of a shared facility workstation could connect a ``Client`` there and run pickled
Python as us (audit h33). Its cluster now has throw-away certificates made in memory
(``Security.temporary``: one self-signed CA, mutual TLS, ``require_encryption``), handed to the worker
processes when they are spawned and to our ``Client``; a connection without them (plain ``tcp://``, or
``tls://`` without a certificate of that CA) fails its handshake before any message is read. An external
``--scheduler tcp://`` / ``tls://`` cluster is the user's to secure: ``Client`` takes dask's own
``distributed.comm.tls.*`` configuration (docs/scale-out-offline.md, "Remote clusters: what they need").

Nor does a local cluster serve HTTP: ``distributed`` gives its scheduler and each worker a plain-HTTP
server (info pages, JSON, Prometheus, the dashboard) with no authentication, which any local user could
read (worker names, logs, task keys with file paths); ``local_cluster`` closes them (``offline_nohttp``).
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from typing import Any

from sbd_stream.service.offline_nohttp import NO_HTTP_ROUTES
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


def local_cluster(n_workers: int, processes: bool = True, preload: list[str] | None = None, **kw: Any) -> Any:
    """A ``LocalCluster`` that only this process can use: bound to 127.0.0.1, mutual TLS between worker
    processes (``local_security``), and no HTTP server on its scheduler nor its workers (``offline_nohttp``:
    ``dashboard_address=None`` still listened on 8787, and an in-process cluster's on 0.0.0.0)."""
    import dask
    from distributed import LocalCluster

    if processes:
        kw["security"] = local_security()  # tls://127.0.0.1: no other local user can submit work
        kw["host"] = "127.0.0.1"
    else:  # inproc:// takes no host; the worker's HTTP server would take 0.0.0.0 until the preload runs
        kw["worker_dashboard_address"] = "127.0.0.1:0"
    preloads = [*(preload or []), "sbd_stream.service.offline_nohttp"]
    with dask.config.set(NO_HTTP_ROUTES):  # the nannies hand this configuration to their workers
        return LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=processes,
            dashboard_address="127.0.0.1:0", preload=preloads,
            scheduler_kwargs={"dashboard": False, "preload": ["sbd_stream.service.offline_nohttp"]},
            **kw,
        )  # fmt: skip


_TLS_KEYS = ("ca-file", "client.cert", "client.key")


def external_tls_checked(scheduler: str) -> None:
    """Refuse a ``tls://`` scheduler in one line when dask's configuration gives this client no TLS
    context (no CA or no client certificate: ``Client`` raised a bare ``TypeError``, "TLS expects a
    ssl_context argument", a traceback) or names a file that is not there (a bare "[Errno 2] No such
    file or directory" without the file)."""
    if not scheduler.startswith("tls://"):
        return
    import dask
    from distributed.security import Security

    paths = {k: dask.config.get(f"distributed.comm.tls.{k}", None) for k in _TLS_KEYS}
    env = {
        k: "DASK_DISTRIBUTED__COMM__TLS__" + k.upper().replace(".", "__").replace("-", "_") for k in _TLS_KEYS
    }
    if missing := [f"{env[k]}={v}" for k, v in paths.items() if v and not os.path.isfile(v)]:
        raise ValueError(f"{scheduler}: this client's TLS files are not there: {', '.join(missing)}")
    try:
        context = Security().get_connection_args("client").get("ssl_context")
    except (OSError, ValueError) as e:  # a file that is not a certificate or key, a key without its cert
        raise ValueError(f"{scheduler}: this client's TLS configuration cannot be used: {e}") from e
    if context is None:
        unset = ", ".join(env[k] for k, v in paths.items() if not v)
        raise ValueError(
            f"{scheduler}: a tls:// scheduler needs this client's certificate and the cluster's CA: set "
            f"{unset} (dask's distributed.comm.tls configuration; docs/scale-out-offline.md, "
            '"Remote clusters")'
        )


def start_client(scheduler: str, workers: int | None, n_chunks: int, gpu: bool, stack: ExitStack) -> tuple:
    """(client, number of workers, description); a local cluster is bound to 127.0.0.1 with mutual TLS
    (``local_security``) and no HTTP server (``local_cluster``).

    Its workers log at CRITICAL only (ERROR with ``-v``): a task's exception is raised on the client
    with its own message, and each worker printed it first as a multi-line "Compute Failed / Key /
    State / Task / Exception / Traceback" block before the command's ``error:`` line."""
    from distributed import Client

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
            local_cluster(
                n, resources={"GPU": 1} if gpu else None,
                silence_logs=logging.ERROR if verbose else logging.CRITICAL,  # below: see the docstring
            )
        )  # fmt: skip
        return stack.enter_context(Client(cluster)), n, f"local ({n} workers)"
    refuse_closed_port(scheduler)
    external_tls_checked(scheduler)
    if workers is not None:  # the cluster's own workers run the job: one line rather than silence
        logging.getLogger(__name__).warning(
            "--dask-workers %d is for --scheduler local; %s runs the job on its own workers",
            workers,
            scheduler,
        )
    client = stack.enter_context(Client(scheduler))  # timeout: distributed.comm.timeouts.connect (30 s)
    info = client.scheduler_info()["workers"]
    if not info:
        raise ValueError(f"{scheduler}: the cluster has no workers")
    if gpu and not any(w.get("resources", {}).get("GPU") for w in info.values()):
        raise ValueError(f"{scheduler}: no worker offers a GPU resource (start them with --resources GPU=1)")
    return client, len(info), scheduler
