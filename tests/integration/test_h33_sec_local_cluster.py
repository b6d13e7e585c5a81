"""A local Dask cluster (``denoise`` / ``replay --offline --scheduler local``, ``sbd-train simulate
--workers N``) runs work for this process only (audit h33).

Before: the scheduler, the workers and the nannies listened on plain ``tcp://127.0.0.1`` ports, and any
other local user of a shared workstation could connect a ``Client`` there and run pickled Python as us.
Now the cluster speaks mutual TLS with throw-away certificates (``service/offline_cluster.py``): an
attacker's plain ``tcp://`` connection, or ``tls://`` without the cluster's certificate, is refused by
each of its ports, while the product's own client still runs its work and its output stays bit for bit
the single-process one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from helpers_cluster import offline_client, simulate_client

from sbd_stream.config import DenoiseSettings
from sbd_stream.service import offline_dask as od
from sbd_stream.service.offline import denoise_file

pytestmark = pytest.mark.integration

ATTACK_TIMEOUT = "3s"  # how long the attacker's connect retries; refused ports fail within it


def _plain(address: str) -> str:
    """The address as an attacker writes it: ``tcp://`` whatever the cluster's scheme."""
    return "tcp://" + address.split("://", 1)[1]


def _attacker_runs_code(address: str, security: Any = None) -> int:
    """Connect a Client to ``address`` without the cluster's credentials and run a function there."""
    from distributed import Client

    with Client(address, timeout=ATTACK_TIMEOUT, security=security) as c:
        return c.submit(os.getpid, pure=False).result(timeout=30)


async def _identity(address: str) -> dict:
    """One raw RPC to a worker or nanny port (the same door as its ``run`` handler)."""
    from distributed.comm import connect

    comm = await connect(address, timeout=ATTACK_TIMEOUT)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "factory", [offline_client, lambda: simulate_client(2)], ids=["replay-offline", "simulate"]
)
def test_a_local_cluster_refuses_a_client_without_its_certificates(factory: Callable) -> None:
    from distributed.security import Security

    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # the refused handshakes' log lines
    with factory() as client:
        address = client.scheduler.address
        assert address.startswith(("tcp://127.0.0.1:", "tls://127.0.0.1:"))
        workers = client.scheduler_info()["workers"]
        ports = [*workers, *(w["nanny"] for w in workers.values() if w.get("nanny"))]
        assert len(ports) == 4  # 2 workers and their nannies listen too
        # the attacker: plain tcp:// to the scheduler, as anyone on the machine can
        with pytest.raises((OSError, TimeoutError)):
            _attacker_runs_code(_plain(address))
        # nor tls:// with a certificate of its own making (not signed by the cluster's throw-away CA)
        with pytest.raises((OSError, TimeoutError)):
            _attacker_runs_code(address.replace("tcp://", "tls://"), Security.temporary())
        for port in ports:  # no worker or nanny answers either
            with pytest.raises((OSError, TimeoutError)):
                asyncio.run(_identity(_plain(port)))
        # ours still runs: on the workers, and they are other processes
        assert client.submit(os.getpid, pure=False).result(timeout=60) != os.getpid()
        assert len(set(client.run(os.getpid).values())) == 2


def _stack(path: Path, n: int, shape: tuple[int, int]) -> Path:
    with h5py.File(path, "w") as f:
        f["frames"] = np.random.default_rng(3).poisson(0.45, (n, *shape)).astype(np.uint16)
        f.attrs.update({"pixel_size_A": 0.06, "counts_per_px": 0.45})
    return path


@pytest.mark.timeout(240)
def test_the_secured_local_cluster_still_writes_the_single_process_output(
    binning_engine_dir: Path, tmp_path: Path
) -> None:
    inp = _stack(tmp_path / "in.h5", 24, (64, 48))
    es = DenoiseSettings(engine="onnxruntime", model=str(binning_engine_dir))
    denoise_file(inp, tmp_path / "ref.h5", settings=es.model_copy(update={"batch_frames": 2}))
    s = od.denoise(inp, tmp_path / "dask.h5", es=es, scheduler="local", workers=2, batch=2, chunk_frames=6)
    assert s["scheduler"] == "local (2 workers)" and s["chunks"] == 4
    with h5py.File(tmp_path / "ref.h5", "r") as fa, h5py.File(tmp_path / "dask.h5", "r") as fb:
        assert np.array_equal(fa["denoised"][:], fb["denoised"][:])
        assert dict(fa.attrs) == dict(fb.attrs)
