"""A Dask preload that closes the HTTP server of the scheduler or worker it is loaded into (audit h33).

Why: ``distributed`` starts an HTTP server on every scheduler and worker whatever ``dashboard_address``
says (``None`` still listens, on 8787 for a scheduler; an in-process worker's even on 0.0.0.0). Its
routes (``/info``, ``/json``, ``/metrics``, ``/health``, the dashboard) are plain HTTP with no
authentication: any local user could read worker names, logs and task keys (file paths) of a job
whose Dask ports are mutual TLS (``offline_cluster.local_security``). A local cluster of ours loads
this module as a preload of its scheduler and of each worker (``preload=[__name__]``), and
``NO_HTTP_ROUTES`` (given to dask's configuration while the cluster starts, and so to the worker
processes) leaves the server nothing to answer in the instant before the preload runs. Nothing of ours
reads these routes: a job's progress is the command's own output.
"""

from __future__ import annotations

from typing import Any

#: dask configuration: no HTTP route on the scheduler nor the workers (``distributed.yaml``'s defaults
#: are the info pages, JSON, Prometheus, health and a proxy)
NO_HTTP_ROUTES: dict[str, list[str]] = {
    "distributed.scheduler.http.routes": [],
    "distributed.worker.http.routes": [],
}


def dask_setup(server: Any) -> None:
    """Called by ``distributed`` once ``server`` (a Scheduler or a Worker) listens: stop its HTTP
    listener (tornado's ``stop`` closes the socket; the server's own close calls it again, a no-op)."""
    http = getattr(server, "http_server", None)
    if http is not None:
        http.stop()
