"""The local Dask clusters the product starts, as its commands start them, for tests that probe them.

Why one module: the tests of the local cluster's ports (tests/integration/test_h33_sec_local_cluster.py:
mutual TLS; test_h33_local_cluster_no_http.py: no plain HTTP) must look at exactly the clusters
``denoise`` / ``replay --offline --scheduler local`` and ``sbd-train simulate --workers N`` run, through
the product's own start-up code; one copy of how each is started keeps both tests on the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from sbd_stream.service.offline_cluster import start_client


@contextmanager
def offline_client() -> Iterator[Any]:
    """The client ``replay --offline --scheduler local`` runs its job through (2 worker processes)."""
    with ExitStack() as stack:
        client, n, _ = start_client("local", 2, 4, False, stack)
        assert n == 2
        yield client


@contextmanager
def simulate_client(workers: int) -> Iterator[Any]:
    """The client ``sbd-train simulate --workers N`` runs its tasks through (1: one worker in-process)."""
    from training.sim.simulate import _client

    client = _client(None, workers)
    try:
        yield client
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
