"""A local Dask cluster (``denoise`` / ``replay --offline --scheduler local``, ``sbd-train simulate
--workers N``, one worker in-process or several) serves no plain HTTP while a job runs (audit h33).

Before: its Dask ports were mutual TLS, but ``distributed`` gave the scheduler and each worker an HTTP
server as well (``dashboard_address=None`` still listened: on 0.0.0.0:8787 for the in-process cluster of
``simulate --workers 1``), and anyone could GET ``/info/main/workers.html``, ``/json/...`` or
``/metrics``: worker names, logs, task keys with file paths. Now ``offline_cluster.local_cluster``
closes them (``offline_nohttp``): every listening socket of the process tree is one that does not
speak HTTP.
"""

from __future__ import annotations

import glob
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers_cluster import offline_client, simulate_client

pytestmark = pytest.mark.integration


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:  # gone meanwhile
            continue
        pid, ppid = int(text.split()[0]), int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _listening_ports(root: int) -> set[tuple[str, int]]:
    """(host to dial, port) of each listening TCP socket of ``root`` and its descendants (/proc)."""
    inodes = set()
    for pid in _process_tree(root):
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table, host in (("/proc/net/tcp", "127.0.0.1"), ("/proc/net/tcp6", "::1")):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                ports.add((host, int(cols[1].split(":")[1], 16)))
    return ports


def _speaks_http(host: str, port: int) -> bool:
    """Whether a plain ``GET /`` there gets an HTTP status line (a TLS listener drops the connection)."""
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"GET /info/main/workers.html HTTP/1.0\r\nHost: x\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def _wait_for(path: str) -> str:
    """A task that stays running until ``path`` exists: the job the probe looks at."""
    import time

    while not os.path.exists(path):
        time.sleep(0.05)
    return path


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "factory",
    [offline_client, lambda: simulate_client(2), lambda: simulate_client(1)],
    ids=["replay-offline", "simulate-2-workers", "simulate-in-process"],
)
def test_no_port_of_a_running_local_cluster_answers_plain_http(factory: Callable, tmp_path: Path) -> None:
    before = _listening_ports(os.getpid())
    release = str(tmp_path / "release")
    with factory() as client:
        fut = client.submit(_wait_for, release, key=f"denoise-{tmp_path}/in.h5", pure=False)
        done = threading.Event()
        fut.add_done_callback(lambda _: done.set())
        ours = _listening_ports(os.getpid()) - before
        if client.scheduler.address.startswith("tls://"):  # worker processes: their Dask ports listen
            assert len(ours) >= 5  # the scheduler, 2 workers, 2 nannies
        answering = sorted(p for p in ours if _speaks_http(*p))
        assert not done.is_set()  # all probed while the task ran
        Path(release).touch()
        assert fut.result(timeout=60) == release
    assert answering == []
