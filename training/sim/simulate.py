"""Dask orchestration of the training-set simulation: workers image a world's tasks, this process writes.

One Dask task per (structure, tilt): it builds the model at the largest thickness, runs one multislice
pass with an exit plane per support thickness, and images every selected defocus from those exit waves.
Workers return images; only this process writes the HDF5 file, one committed task at a time, so a rerun
skips finished tasks and a killed run loses at most the tasks in flight. What is simulated (the world
and its plan) is ``training.sim.worlds``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from training.sim.dataset import ImageRecord, SimulatedDatasetWriter, TaskResult
from training.sim.worlds import TaskSpec, World, file_attrs, plan, sampled_test_path


def run_task(spec_json: str, preset_json: str) -> TaskResult:
    """Worker side: model, exit waves, every defocus image and its ground truth."""
    from training.sim import imaging
    from training.sim.structures import Z_PERIOD, build, support_layers_for

    t0 = time.perf_counter()
    spec = TaskSpec.model_validate_json(spec_json)
    world = World.model_validate_json(preset_json)
    sp = world.sampling
    thick_A = [support_layers_for(t) * Z_PERIOD for t in spec.thicknesses_nm]
    atoms, desc = build(spec.structure, max(thick_A))
    z_pt_max = float(atoms.positions[atoms.numbers == 78, 2].max())
    keep = [i for i, t in enumerate(thick_A) if t >= z_pt_max + 0.5]  # the whole particle must be crossed
    thick_A = [thick_A[i] for i in keep]
    thick_nm = [spec.thicknesses_nm[i] for i in keep]
    tilt_mrad = (float(np.deg2rad(spec.tilt_deg[0]) * 1e3), float(np.deg2rad(spec.tilt_deg[1]) * 1e3))
    seed = int(
        np.random.default_rng([spec.structure.seed, *np.round(spec.tilt_deg).astype(int)]).integers(2**31)
    )
    waves = imaging.exit_waves(atoms, thick_A, sp, tilt_mrad, seed, world.optics.energy_eV)
    extent = float(atoms.cell[0, 0])
    view = sp.view()
    # (view or None = whole cell, pixel, dose, records): the training images, and the test view
    outputs: list[tuple[imaging.View | None, float, float, list[ImageRecord]]] = [
        (view, world.pixel_size_A(), world.dose, [])
    ]
    if spec.test_view and world.test_view is not None:
        outputs.append((world.test_view, world.test_view.pixel_A, world.test_dose(), []))
    truths = [
        [
            imaging.column_truth(
                atoms.positions,
                atoms.numbers,
                t,
                tilt_mrad,
                extent,
                sp.image_px,
                desc["y_interface_A"],
                view=v,
            )
            for t in thick_A
        ]
        for v, _, _, _ in outputs
    ]
    fixed = world.optics.focal_spread_range_nm is None
    imager = (
        imaging.CoherentImager(waves, world.optics)
        if world.optics.focal_mode == "explicit" and fixed
        else None
    )
    optics_rng = np.random.default_rng([seed, 1])  # this task's per-image optics, reproducible
    for df in spec.defocus_nm:
        optics = world.optics.draw(optics_rng)
        vib_A = optics.vibration_pm / 100.0
        if optics.focal_mode == "explicit":
            stack = (imager or imaging.CoherentImager(waves, optics)).images(df)
        else:
            stack = imaging.envelope_images(waves, df, optics)
        for (v, pixel, dose, records), vtruths in zip(outputs, truths, strict=True):
            if v is None:
                images = imaging.to_detector(imaging.vibration_blur(stack, extent, vib_A), sp.image_px)
            else:
                images = imaging.render_view(stack, extent, v, vib_A)
            for j, (t_nm, truth) in enumerate(zip(thick_nm, vtruths, strict=True)):
                contrast = imaging.contrast_classes(images[j], truth["xy"], pixel, periodic=v is None)
                meta = {
                    "structure_id": spec.structure.structure_id,
                    "task_key": spec.key,
                    "particle_class": spec.structure.particle_class.value,
                    "defect_class": spec.structure.defect_class.value,
                    "contrast_class": imaging.image_contrast_class(contrast, truth["species"]),
                    "thickness_nm": t_nm,
                    "tilt_x_deg": spec.tilt_deg[0],
                    "tilt_y_deg": spec.tilt_deg[1],
                    "defocus_nm": df,
                    "pixel_size_A": pixel,
                    "dose": dose,
                    "focal_spread_nm": optics.focal_spread_nm,
                    "vibration_pm": optics.vibration_pm,
                }
                records.append(
                    ImageRecord(clean=images[j], meta=meta, columns={**truth, "contrast": contrast})
                )
    desc |= {"tilt_deg": list(spec.tilt_deg), "thicknesses_A": thick_A, "phonon_seed": seed}
    extra = {"test_view": outputs[1][3]} if len(outputs) > 1 else {}
    return TaskResult(
        key=spec.key, structure=desc, images=outputs[0][3], seconds=time.perf_counter() - t0, extra=extra
    )


def _client(scheduler: str | None, workers: int) -> Any:
    """A client of ``scheduler`` (the user's cluster, the user's to secure: dask's ``distributed.comm.tls``
    configuration applies), else of a local cluster that only this process can use: in-process for one
    worker, else worker processes on 127.0.0.1 with mutual TLS and throw-away certificates, so that no
    other local user can connect and run pickled code as us, and no HTTP server that would show them its
    workers, logs and task keys (audit h33; ``offline_cluster.local_cluster``)."""
    from distributed import Client

    from sbd_stream.service.offline_cluster import local_cluster

    if scheduler:
        return Client(scheduler)
    if workers == 1:  # in-process (inproc:// transport): a kill stops everything; no HTTP server either
        cluster = local_cluster(1, processes=False)
    else:  # a group's Ctrl-C is the parent's to handle
        cluster = local_cluster(workers, preload=["training.sim.worker_signals"])
    return Client(cluster)


def simulate(
    world: World,
    out: Path,
    scheduler: str | None = None,
    workers: int = 1,
    max_tasks: int | None = None,
    progress: bool = True,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a world into ``out``; returns counts and timings.

    ``check`` is called between tasks and at least every 0.1 s while waiting for one: it raises to stop
    the run there (``training.cli.sim_stop``: a stop whose signal-handler raise Python swallowed)."""
    from distributed import as_completed

    tasks = plan(world)
    writer = SimulatedDatasetWriter(out, (world.sampling.image_px,) * 2, file_attrs(world))
    done = writer.done_keys()
    aux = None
    if world.test_view is not None:
        aux_path = sampled_test_path(world, out)
        aux = SimulatedDatasetWriter(
            aux_path, (world.test_view.image_px,) * 2, file_attrs(world, "test_view")
        )
        aux_done = aux.done_keys()
        done = {k for k in done if k in aux_done or not any(t.key == k and t.test_view for t in tasks)}
        _log(f"test split at {world.test_view.pixel_A} A -> {aux_path}")
    todo = [t for t in tasks if t.key not in done]
    if max_tasks is not None:
        todo = todo[:max_tasks]
    _log(f"{world.name}: {len(tasks)} tasks, {len(done)} done, {len(todo)} to run -> {out}")
    t0 = time.perf_counter()
    failed: list[str] = []
    n_new = 0
    if todo:
        client = _client(scheduler, workers)
        preset_json = world.model_dump_json()
        n_slots = max(1, 2 * len(client.scheduler_info().get("workers", {}) or [1]))
        queue = list(todo)
        futures = as_completed()
        for _ in range(min(n_slots, len(queue))):
            spec = queue.pop(0)
            futures.add(_submit(client, spec, preset_json))
        bar = _Bar(len(todo), enabled=progress)
        try:
            for fut in each_done(futures, check or _go_on):
                try:
                    res: TaskResult = fut.result()
                    if aux is not None and "test_view" in res.extra and res.key not in aux.done_keys():
                        aux.append_task(
                            TaskResult(res.key, res.structure, res.extra["test_view"], res.seconds)
                        )
                    if res.key not in writer.done_keys():
                        writer.append_task(res)
                    n_new += len(res.images)
                    bar.advance(f"{res.key}: {len(res.images)} images, {res.seconds:.1f} s")
                except Exception as exc:  # one bad task must not stop a long run
                    failed.append(str(fut.key))
                    bar.advance(f"FAILED {fut.key}: {exc!r}")
                if queue:
                    spec = queue.pop(0)
                    futures.add(_submit(client, spec, preset_json))
        finally:
            bar.close()
            client.close()
    total = len(writer)
    writer.close()
    if aux is not None:
        aux.close()
    summary = {
        "out": str(out),
        "tasks_total": len(tasks),
        "tasks_run": len(todo) - len(failed),
        "failed": failed,
        "images_new": n_new,
        "images_total": total,
        "seconds": time.perf_counter() - t0,
    }
    _log(f"done: {summary}")
    return summary


def _go_on() -> None:
    """No stop to check for."""


def each_done(futures: Any, check: Callable[[], None], poll_s: float = 0.1) -> Iterator[Any]:
    """Futures of a ``distributed.as_completed`` as they finish, calling ``check`` before each and every
    ``poll_s`` while none is ready: iterating ``as_completed`` itself waits inside distributed's code,
    where nothing of ours runs until a task ends (minutes, or never once the workers are gone)."""
    while True:
        check()
        if futures.has_ready():
            yield from futures.next_batch(block=False)
        elif futures.is_empty():
            return
        else:
            time.sleep(poll_s)


def _submit(client: Any, spec: TaskSpec, preset_json: str) -> Any:
    return client.submit(run_task, spec.model_dump_json(), preset_json, key=f"task-{spec.key}")


def _log(msg: str) -> None:
    """A progress line to stderr, dropped where stderr cannot take it (``2>/dev/full``, a log on a full
    disk, closed): until session 28 the first line's OSError ended an hours-long simulation at once,
    status 2, nothing simulated; the committed tasks and the summary on stdout are what counts."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # full, closed, or None (``2>&-``)
        print(msg, file=sys.stderr, flush=True)


class _Bar:
    """Rich progress bar with ETA on a terminal; one line per task otherwise (log files)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.n, self.t0 = total, 0, time.perf_counter()
        self._progress = None
        if enabled and sys.stderr is not None and sys.stderr.isatty():  # None: started with ``2>&-``
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task("simulating", total=total)

    def advance(self, msg: str) -> None:
        self.n += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.n * (self.total - self.n)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=msg[:40])
        else:
            _log(f"[{self.n}/{self.total}] {msg} | elapsed {elapsed:.0f} s, ETA {eta:.0f} s")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
