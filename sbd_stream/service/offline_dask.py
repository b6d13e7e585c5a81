"""Offline denoising of large stacks and recordings on a Dask cluster: resumable, equal to ``denoise_file``.

The client plans chunks of frames, the workers read them where they run (the client never reads
pixels), denoise them with an engine loaded once per worker and send back float32 counts, and the
client writes them to one HDF5 file strictly in frame order. Chunks are whole multiples of the batch,
so every batch the engine sees is exactly one of the single-process path's batches: batch composition
changes float results, so this is what makes the output equal to ``denoise_file``'s bit for bit.

Resumable: frames go to ``<output>.partial`` (written in SWMR mode, so a killed client leaves a file
that is consistent up to its last flush) next to ``<output>.partial.json`` (a fingerprint of the input,
engine and settings, and ``frames_done``: the prefix flushed so far). A rerun with the same fingerprint
goes on from there; on completion the partial is renamed over the output and the sidecar removed.
What a resume trusts, and a full disk: ``offline_partial.py``. The job holds the output's lock
(``formats/output_lock.py``), so a second job on the same output is refused at once. SIGINT / SIGTERM
stop it between results with the partial kept (``offline_results.py``: exit 130 / 143). The cluster it
runs on, a local one only this process can use (mutual TLS) or the user's: ``offline_cluster.py``. Pure
helpers first, worker-side functions next, the client last (docs/scale-out-offline.md).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Generator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from sbd_stream.config import DenoiseSettings
from sbd_stream.formats.compression import check_compression
from sbd_stream.service.batch import dose_warning
from sbd_stream.service.edge import EdgeTally, negative_pixels, replace_invalid, replaced, report_values
from sbd_stream.service.frame_flags import blank_dataset
from sbd_stream.service.offline_cluster import start_client
from sbd_stream.service.offline_dose import (
    dose_verdict,
    measured_vacuum,
    record_verdict,
    vacuum_dataset,
    warn_mismatch,
)
from sbd_stream.service.offline_partial import PartialWriter, open_partial
from sbd_stream.service.offline_plan import (  # re-exported: the job's pure parts
    Source,
    chunk_size,
    default_threads,
    default_workers,  # noqa: F401 - re-exported
    fingerprint,
    inspect_recording,
    inspect_stack,
    overridden,
    plan_chunks,
    recording_index,
    resolve_detector,
    unstated,
)
from sbd_stream.service.offline_results import (
    JobInterrupted,
    SchedulerLost,
    StopFlag,
    lost_scheduler,
    ordered,
    workers_ignore_sigint,
)
from sbd_stream.service.offline_terminal import progress as progress_bar
from sbd_stream.service.offline_terminal import say
from sbd_stream.sources.stack_cache import close_all, read_rows
from sbd_stream.sources.stacks import StackError

log = logging.getLogger(__name__)

DEFAULT_CHUNK_FRAMES = 16
GEOMETRY_KEYS: tuple[str, ...] = ("pixel_size_A", "dose_e_per_A2", "counts_per_px", "bin", "working_pixel_A")
GEOMETRY_KEYS += ("working_vacuum_counts", "dose_factor")  # Geometry.describe(), as the summary shows them
GEOMETRY_KEYS += ("dose_range", "dose_in_range")  # the engine's trained dose factors, and whether this fits


# ---- worker side ----------------------------------------------------------------------------------
_DENOISERS: dict[tuple, Any] = {}
_STAGES: dict[tuple, Any] = {}
_LOADS: dict[tuple, int] = {}  # engine loads in this process per key: 1 per worker is the point


def _device(es: DenoiseSettings, gpu_per_worker: bool) -> str | None:
    if gpu_per_worker:
        from distributed import get_worker

        name = get_worker().name
        if isinstance(name, int):
            return f"cuda:{name}"
    return es.device


def worker_stage(es: DenoiseSettings, detector: dict[str, float], gpu_per_worker: bool = False) -> Any:
    """The ``BatchStage`` for these settings, built once per process (engine loaded once per worker).

    ``gpu_per_worker``: a local GPU cluster, where worker i uses cuda:i.
    """
    from sbd_stream.config import DetectorSettings
    from sbd_stream.engines.card import ArtefactError
    from sbd_stream.engines.denoiser import Denoiser
    from sbd_stream.service.batch import BatchStage
    from sbd_stream.service.offline import offline_upsample

    threads = es.threads_per_worker
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ["SBD_ORT_THREADS"] = str(threads)  # read when the ORT session is made
    device = _device(es, gpu_per_worker)
    dkey = (es.engine, es.model, device, es.tile, es.margin, threads)
    skey = (dkey, tuple(sorted(detector.items())), es.bin_tolerance, offline_upsample(es), es.orientations)
    if skey not in _STAGES:
        if dkey not in _DENOISERS:
            try:
                _DENOISERS[dkey] = Denoiser.load(es.engine, es.model, device, tile=es.tile, margin=es.margin)
            except ArtefactError as e:
                raise StackError(f"engine: {e}") from e
            _LOADS[dkey] = _LOADS.get(dkey, 0) + 1
        det = DetectorSettings(**detector)
        _STAGES[skey] = BatchStage(
            _DENOISERS[dkey],
            det,
            bin_tolerance=es.bin_tolerance,
            upsample=offline_upsample(es),
            orientations=es.orientations,
        )
    return _STAGES[skey]


def describe(
    src: Source, es: DenoiseSettings, detector: dict[str, float], gpu_per_worker: bool = False
) -> dict[str, Any]:
    """The output's attributes, exactly as ``denoise_file`` writes them (runs on a worker)."""
    from sbd_stream.compute.binning import binned_shape
    from sbd_stream.service.offline import _version

    stage = worker_stage(es, detector, gpu_per_worker)
    den, g = stage.denoiser, stage.geometry
    _, h, w = src.shape
    hb, wb = binned_shape(h, w, g.bin)
    return {
        "engine_id": den.engine_id,
        "engine_card": den.card,
        "source": src.label,
        "source_dtype": src.dtype,
        **g.describe(),
        "tiling": {k: getattr(den.plan(hb, wb), k) for k in ("tile", "margin", "overlap")},
        "orientations": stage.orientations,
        "upsample": stage.upsample,  # what ran (``auto`` resolved): a live recording's may differ
        "sbd_stream_version": _version(),
        "dose_range": list(g.dose_range),
        "dose_in_range": bool(g.dose_in_range),
    }


def read_frames(src: Source, start: int, stop: int, column: str = "frames") -> np.ndarray:
    """Frames [start, stop) of the source, read here (on the worker); of a recording, ``column`` "seq":
    their sequence numbers instead."""
    import hdf5plugin  # noqa: F401 - registers bitshuffle / LZ4 for compressed inputs and recordings

    from sbd_stream.formats.recording import open_recording
    from sbd_stream.formats.safe_chunks import read_safely

    out, off = [], 0
    for path, rows in src.parts:
        a, b = max(start, off) - off, min(stop, off + rows) - off
        if a < b:
            if src.recording:
                with open_recording(path) as f:  # never through a filter that can crash
                    out.append(read_safely(f[f"raw/{column}"], slice(a, b), f"{path}:raw/{column}"))
            else:
                out.append(read_rows(Path(path), src.dataset, a, b))  # opened once per process
        off += rows
    return out[0] if len(out) == 1 else np.concatenate(out)


def denoise_chunk(
    src: Source, es: DenoiseSettings, detector: dict[str, float], start: int, stop: int, batch: int,
    gpu_per_worker: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """Denoise frames [start, stop) in the single-process path's batches; float32 counts + who did it
    and what the edge (``service/edge.py``, at the configured dose) replaced."""
    from sbd_stream.frames import Frame, FrameHeader

    stage = worker_stage(es, detector, gpu_per_worker)
    loads = _LOADS.get(next(k for k, v in _DENOISERS.items() if v is stage.denoiser), 0)
    frames = read_frames(src, start, stop)
    # a recording's frames are named by their seq, as the service named them ("frame 90: ... beam blanked?"
    # named row 88 here, audit h28); other stacks by their row
    seqs = read_frames(src, start, stop, "seq") if src.recording else np.arange(start, stop)
    _, h, w = src.shape
    out = np.empty((stop - start, h, w), np.float32)
    bad, blank = np.zeros(stop - start, np.int64), np.zeros(stop - start, bool)
    vacuum = np.empty(stop - start, np.float32)  # each frame's measured level (``offline_dose.py``)
    negative, tally = 0, EdgeTally(dose := stage.geometry.detector.vacuum_counts)  # hot pixels: the dose
    for i in range(0, len(frames), batch):
        part = np.array(frames[i : i + batch])
        hds = [FrameHeader(src.label, int(q), 0.0, (h, w), part.dtype.name) for q in seqs[i : i + len(part)]]
        frs = [replace_invalid(Frame(hd, fr), counts_per_px=dose) for hd, fr in zip(hds, part, strict=True)]
        bad[i : i + len(part)] = [replaced(fr) for fr in frs]
        for j, fr in enumerate(frs):  # by row: its warning points at the output's /replaced_pixels rows
            tally.add(start + i + j, fr.header.meta)
        negative += negative_pixels(part)
        res = stage.process(frs)
        out[i : i + len(part)] = res.denoised
        blank[i : i + len(part)] = res.blank if res.blank is not None else False
        raw = np.stack([np.asarray(fr.data) for fr in frs])  # as denoised: replaced pixels
        vacuum[i : i + len(part)] = measured_vacuum(
            stage.geometry, raw, res.denoised, blank[i : i + len(part)]
        )
    info = {"pid": os.getpid(), "engine_loads": loads, "replaced": bad, "negative_pixels": negative}
    info["blank"] = blank  # per frame: no beam (``/blank_frames``)
    info["vacuum"] = vacuum  # per frame: the measured vacuum level (``/measured_vacuum``)
    return out, {**info, "edge": tally}  # which pixels were replaced, and frames too bright for the rule


# ---- client ---------------------------------------------------------------------------------------
def _inline(
    src: Source, es: DenoiseSettings, det: dict, chunks: list, batch: int, stop: StopFlag
) -> Generator[tuple, None, None]:  # a generator: closed when stopped
    for a, b in chunks:
        if stop:  # a signal came while the last chunk ran (one chunk cannot be cut short)
            return
        yield (a, b), *denoise_chunk(src, es, det, a, b, batch)


def _wants_gpu(es: DenoiseSettings, scheduler: str) -> bool:
    """``--device cuda[:N]``, or no device on a local GPU machine whose backend would pick CUDA."""
    if es.device is not None or scheduler != "local":
        return (es.device or "").startswith("cuda")
    import torch

    from sbd_stream.engines import _ort_has_cuda

    return torch.cuda.is_available() and (es.engine != "onnxruntime" or _ort_has_cuda())


def _close_on_workers(client: Any) -> None:
    try:
        client.run(close_all)
    except Exception as e:  # a worker gone: its process took its files with it
        log.debug("closing the input on the workers: %s", e)


def denoise_distributed(
    src: Source, output: Path, es: DenoiseSettings, detector: dict | None = None, batch: int | None = None,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES, scheduler: str = "local", workers: int | None = None,
    resume: bool = True, progress: bool = False, overwrite: bool = True, compression: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Denoise ``src`` into ``output`` in chunks on a Dask cluster (or in-process); returns a summary.

    ``batch``: frames per batch (default: ``es.batch_frames``, as everywhere). The whole job holds the
    output's lock (``formats/output_lock.py``: a second job on the same output is refused, ``OutputBusy``);
    ``overwrite=False`` refuses an ``output`` that exists, checked again just before the rename, so an
    output that appeared while the job ran is not replaced (the finished partial stays).
    """
    from sbd_stream.config import DetectorSettings
    from sbd_stream.service.offline import offline_upsample
    from sbd_stream.service.offline_output import output_held

    batch = batch or es.batch_frames
    output = Path(output)
    if output.suffix.lower() not in {".h5", ".hdf5"}:
        raise StackError(f"{output}: output must be an HDF5 file (.h5 or .hdf5)")
    if scheduler not in ("local", "none") and not scheduler.startswith(("tcp://", "tls://")):
        raise ValueError(f"--scheduler must be local, none, tcp://host:port or tls://host:port: {scheduler}")
    if (note := unstated(dict(src.sampling), detector)) is not None:
        log.warning("%s", note)
    if (note := overridden(dict(src.sampling), detector)) is not None:
        log.warning("%s", note)
    det = DetectorSettings(**resolve_detector(dict(src.sampling), detector)).model_dump(exclude_none=True)
    size = chunk_size(chunk_frames, batch)
    chunks = plan_chunks(src.shape[0], size, batch)
    gpu = _wants_gpu(es, scheduler)
    n = src.shape[0]
    t0 = time.perf_counter()
    stop = StopFlag()
    with ExitStack() as stack:
        # before the partial or its sidecar is touched (the sidecar's temporary name: the longest)
        stack.enter_context(output_held(output, output.name + ".partial.json.tmp"))
        _refuse_existing(output, overwrite)
        stack.enter_context(stop.installed())  # Ctrl-C / SIGTERM: stop between results, resumable
        if scheduler == "none" or len(chunks) == 1:
            where = "in-process" if scheduler == "none" else "in-process (one chunk)"
            stack.callback(close_all)  # the input, open since the first chunk
            client, n_workers, es_run, resources, per_gpu = None, 1, es, None, False
            attrs = describe(src, es, det)
        else:
            with workers_ignore_sigint():  # the client handles Ctrl-C; a terminal sends it to them too
                client, n_workers, where = start_client(scheduler, workers, len(chunks), gpu, stack)
            local = scheduler == "local"
            if not local:  # long-lived workers: let go of the input when the job ends (before the client)
                stack.callback(_close_on_workers, client)
            threads = es.threads_per_worker or (
                default_threads(os.cpu_count() or 1, n_workers) if local else None
            )
            es_run = es.model_copy(update={"threads_per_worker": threads})
            resources, per_gpu = ({"GPU": 1} if gpu else None), gpu and local
            fut = client.submit(describe, src, es_run, det, per_gpu, pure=False, resources=resources)
            try:
                attrs = fut.result()
            except Exception as e:
                if lost_scheduler(e):
                    raise _lost(0, n, where) from None
                raise
        partial, sidecar = (output.with_name(output.name + ext) for ext in (".partial", ".partial.json"))
        fp = fingerprint(src, attrs, det, batch, size, offline_upsample(es).value)
        index = recording_index(src) if src.recording else None
        f, start = open_partial(partial, sidecar, fp, attrs, resume, index, compression)
        out = PartialWriter(f, partial, sidecar, fp, output, start)
        blank_ds = blank_dataset(f, n)  # written before each chunk's flush in ``out.write``
        vac_ds = vacuum_dataset(f, n)  # so is each frame's measured vacuum (a resume keeps the earlier)
        stack.callback(out.close)
        todo = [c for c in chunks if c[0] >= start]
        bar = stack.enter_context(progress_bar(n, start, show=progress))
        if client is None:
            results = _inline(src, es_run, det, todo, batch, stop)
        else:
            job, limit = (src, es_run, det), max(2, 2 * n_workers)
            results = ordered(client, denoise_chunk, job, batch, todo, limit, resources, per_gpu, stop)
        loads: dict[int, int] = {}
        negative, tally = 0, EdgeTally(DetectorSettings(**det).vacuum_counts)  # a resume: its chunks only
        try:
            for (a, b), arr, info in results:
                blank_ds[a:b] = info["blank"]
                vac_ds[a:b] = info["vacuum"]
                out.write(a, b, arr, info["replaced"])
                negative += info["negative_pixels"]
                tally.merge(info["edge"])
                loads[info["pid"]] = info["engine_loads"]
                if bar is not None:
                    bar[0].update(bar[1], completed=b)
                if stop:
                    break
        except SchedulerLost:
            raise _lost(out.done, n, where) from None
        if stop and out.done < n:  # every chunk in order is flushed: the partial stays to resume
            stop_at = JobInterrupted(stop.signum or signal.SIGINT, out.done, n)
            results.close()  # chunks in flight cancelled
            stack.close()  # the progress bar, the file, the client and its cluster
            say(str(stop_at))  # a terminal that cannot take it changes nothing
            raise stop_at
        per_frame, blank, levels = out.replaced(), np.asarray(blank_ds[:]), np.asarray(vac_ds[:])
        out.close()
        verdict = dose_verdict(levels, detector_used := DetectorSettings(**det))
        _record(partial, verdict)  # the stated dose against the data, as the single-process path's
        _refuse_existing(output, overwrite, partial)
        os.replace(partial, output)
        sidecar.unlink(missing_ok=True)
    dt = time.perf_counter() - t0
    if not attrs.get("dose_in_range", True):
        log.warning("%s", dose_warning(attrs["dose_e_per_A2"], attrs["dose_factor"], attrs["dose_range"]))
    warn_mismatch(verdict, levels, detector_used)
    report_values(per_frame, negative, output, tally)
    h, w = src.shape[1:]
    return {
        "input": src.label, "output": str(output), "frames": n, "shape": [h, w],
        "engine_id": attrs["engine_id"],
        **{k: v for k, v in attrs.items() if k in GEOMETRY_KEYS},
        "seconds": round(dt, 3), "frames_per_s": round((n - start) / dt, 3) if dt > 0 else 0.0,
        "scheduler": where, "workers": n_workers, "threads_per_worker": es_run.threads_per_worker,
        "batch": batch,
        "chunk_frames": size, "chunks": len(chunks), "resumed_from": start,
        "engine_loads_per_worker": sorted(loads.values()),  # per worker that ran a chunk: 1 each
        "replaced_pixels": int(per_frame.sum()), "frames_with_replaced": int(np.count_nonzero(per_frame)),
        "negative_pixels": negative, "blank_frames": int(blank.sum()), **verdict,
    }  # fmt: skip


def _record(partial: Path, verdict: dict[str, Any]) -> None:
    """The verdict as the finished partial's attributes: written after its SWMR writer closed (SWMR
    creates no attribute), before it is renamed into place."""
    import h5py

    with h5py.File(partial, "r+") as f:
        record_verdict(f, verdict)


def _refuse_existing(output: Path, overwrite: bool, partial: Path | None = None) -> None:
    """Without ``overwrite``, an existing output is refused: at the start, and again before the rename
    (``partial``: the finished frames, kept so that a rerun with ``--overwrite`` only renames them)."""
    if overwrite or not output.exists():
        return
    if partial is None:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    raise FileExistsError(
        f"{output} appeared while this job ran; its frames are kept in {partial}: run the same command "
        "with --overwrite to replace it (it only renames), or move it away and run it again"
    )


def _lost(done: int, total: int, where: str) -> SchedulerLost:
    return SchedulerLost(
        f"lost the Dask scheduler {where}: interrupted after frame {done} of {total}; run the same command "
        "to resume"
    )


def denoise(
    input: Path, output: Path, dataset: str | None = None, es: DenoiseSettings | None = None,
    detector: dict | None = None, recording: bool = False, scheduler: str = "local", **kw: Any,
) -> dict[str, Any]:  # fmt: skip
    """Entry point of ``sbd-stream denoise`` and ``replay --offline``: ``none`` is ``denoise_file``.

    A ``MemoryError`` (``ulimit -v``, a cgroup: here or on a worker) is one ``StackError`` line naming
    the limit and what to do (``offline_output.out_of_memory``); the Dask path's partial stays.

    ``es``: the ``[denoise]`` settings, as the live service takes them; ``batch`` in ``kw`` overrides
    their ``batch_frames``.
    """
    es = es or DenoiseSettings()
    if kw.get("batch") is not None:
        es = es.model_copy(update={"batch_frames": kw["batch"]})
    kw["batch"] = es.batch_frames
    single = scheduler == "none" and not recording
    check_compression(kw.get("compression"))  # a typo: one ValueError line before any work
    try:
        if single:
            from sbd_stream.service.offline import denoise_file

            s = denoise_file(
                input, output, dataset, es, detector=detector, progress=kw.get("progress", False),
                overwrite=kw.get("overwrite", True), compression=kw.get("compression"),
            )  # fmt: skip
            return {**s, "scheduler": "in-process"}
        src = inspect_recording(input) if recording else inspect_stack(input, dataset)
        return denoise_distributed(src, output, es, detector, scheduler=scheduler, **kw)
    except MemoryError as e:  # here or raised again from a worker: the job's files are let go by now
        from sbd_stream.service.offline_output import out_of_memory

        raise StackError(out_of_memory(Path(output), e, resumable=not single)) from None
