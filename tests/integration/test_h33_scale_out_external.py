"""``denoise --scheduler tls://...`` against a real TLS Dask scheduler, as docs/scale-out-offline.md
("Remote clusters: what they need") tells a facility to run one (audit h33, scale-out docs).

Before: without this client's certificate in dask's configuration the command ended in a rich
``TypeError: TLS expects a ssl_context argument`` traceback, exit 1; a CA file that is not there in a
bare "[Errno 2] No such file or directory" naming no file; and ``--dask-workers`` with an external
scheduler was dropped without a word. Now each is one ``error:`` line naming the settings (exit 2), the
documented configuration runs the job, and ``--dask-workers`` there is said to be ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import dask
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from sbd_stream.cli import app

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(address, the client's dask TLS configuration as files) of a real one-worker TLS cluster."""
    from distributed import LocalCluster
    from distributed.security import Security

    sec = Security.temporary()  # PEM text: written out as a facility's files would be
    files = {}
    for key, pem in (("ca-file", sec.tls_ca_file), ("client.cert", sec.tls_client_cert),
                     ("client.key", sec.tls_client_key)):  # fmt: skip
        path = tmp_path / f"{key}.pem"
        path.write_text(pem)
        files[f"distributed.comm.tls.{key}"] = str(path)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", host="127.0.0.1",
        security=sec, dashboard_address="127.0.0.1:0",
    ) as cluster:  # fmt: skip
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        yield cluster.scheduler_address, files


def _args(tmp_path: Path, engine: Path, address: str, out: str) -> list[str]:
    inp = tmp_path / "in.h5"
    if not inp.exists():
        with h5py.File(inp, "w") as f:
            f["frames"] = np.random.default_rng(0).poisson(0.45, (8, 64, 48)).astype(np.uint16)
            f.attrs.update({"pixel_size_A": 0.06, "counts_per_px": 0.45})
    return [
        "denoise", str(inp), str(tmp_path / out), "--model", str(engine), "--engine", "onnxruntime",
        "--batch", "2", "--chunk-frames", "4", "--scheduler", address,
    ]  # fmt: skip


@pytest.mark.timeout(180)
def test_a_tls_scheduler_is_one_line_without_this_clients_certificate_and_runs_with_it(
    tls_cluster: tuple[str, dict[str, str]], binning_engine_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    address, files = tls_cluster
    none = {k: None for k in files}
    with dask.config.set(none):  # nothing configured: the traceback before
        res = CliRunner().invoke(app, _args(tmp_path, binning_engine_dir, address, "a.h5"))
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "TypeError" not in res.output
    assert f"error: {address}: a tls:// scheduler needs this client's certificate" in res.output
    assert "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT" in res.output
    missing = str(tmp_path / "nope.pem")
    with dask.config.set({**files, "distributed.comm.tls.ca-file": missing}):
        res = CliRunner().invoke(app, _args(tmp_path, binning_engine_dir, address, "b.h5"))
    assert res.exit_code == 2, res.output
    assert f"DASK_DISTRIBUTED__COMM__TLS__CA_FILE={missing}" in res.output
    # the documented configuration: the job runs there; --dask-workers is the local cluster's, said so
    with dask.config.set(files), caplog.at_level(logging.WARNING):
        res = CliRunner().invoke(
            app, [*_args(tmp_path, binning_engine_dir, address, "c.h5"), "--dask-workers", "3"]
        )
    assert res.exit_code == 0, res.output
    assert f'"scheduler": "{address}"' in res.output and '"workers": 1' in res.output
    assert any("--dask-workers 3 is for --scheduler local" in r.getMessage() for r in caplog.records)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["denoised"].shape == (8, 64, 48)


def test_simulate_on_a_tls_scheduler_without_certificates_is_one_line(
    tmp_path: Path, tls_cluster: tuple[str, dict[str, str]]
) -> None:
    """``sbd-train simulate --scheduler tls://...`` without this client's certificate: was distributed's
    ``TypeError: TLS expects a ssl_context argument`` traceback (exit 1), now one line before any task."""
    from training.cli import app as train_app

    address, _ = tls_cluster
    out = tmp_path / "tiny.h5"
    res = CliRunner().invoke(
        train_app, ["simulate", "--preset", "tiny", "--out", str(out), "--scheduler", address]
    )
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --scheduler tls://"), res.output
    assert "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in lines[0] and not out.exists()
