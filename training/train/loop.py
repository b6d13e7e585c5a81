"""Training as in Sec. 5: augmented patches, fresh Poisson noise, MSE, Adam, LR halving, early stopping.

One process or many: under ``torchrun`` every rank draws its own batches (seeded by seed, rank and
step, so a resumed run draws exactly what the interrupted one would have) and DistributedDataParallel
averages the gradients; validation is sharded over the ranks and all-reduced, so every rank takes the
same LR / stopping decision. Checkpoints hold only tensors and plain values and load with
``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sbd_stream.compute.model import count_parameters, field_of_view
from sbd_stream.compute.normalisation import Normalisation
from sbd_stream.engines.artefact_files import load_tensors
from sbd_stream.engines.symmetry import orientations, turn, unturn
from sbd_stream.invocation import invocation
from training.train.augment import draw_batch
from training.train.config import LRSchedule, TrainConfig
from training.train.data import TrainData
from training.train.lock import RunBusy, RunLock
from training.train.network import build_network, init_weights, predict_full, set_train_mode, warn_sampling
from training.train.resume import effective_freeze, resumed_config, stored_config
from training.train.stop import Interrupted, StopRequest


def scheduled_lr(
    cfg: TrainConfig, step: int, elapsed_s: float, anchor: dict[str, Any] | None = None
) -> float | None:
    """The cosine schedule's rate at this point of the budget; None for the plateau schedule.

    ``anchor`` (``{"step", "elapsed_s", "lr"}``): where a resumed run was given another budget. From
    there the rate decays from the rate it had (``lr``) to ``min_lr`` at the new budget's end, so a
    larger ``--max-steps`` never raises it (the curve of the new budget from step 0 would: +50 % at the
    resume step in audit 24). Without one: from ``cfg.lr`` at step 0."""
    if cfg.lr_schedule is not LRSchedule.cosine:
        return None
    a = anchor or {"step": 0, "elapsed_s": 0.0, "lr": cfg.lr}
    fractions = [_fraction(step - a["step"], cfg.max_steps - a["step"])]
    if cfg.max_minutes:
        fractions.append(_fraction(elapsed_s - a["elapsed_s"], 60.0 * cfg.max_minutes - a["elapsed_s"]))
    p = min(1.0, max(0.0, *fractions))
    return cfg.min_lr + 0.5 * (a["lr"] - cfg.min_lr) * (1.0 + math.cos(math.pi * p))


def _fraction(done: float, total: float) -> float:
    return done / total if total > 0 else 1.0


def retime_anchor(old: TrainConfig, new: TrainConfig, state: dict[str, Any]) -> dict[str, Any] | None:
    """The anchor a resumed cosine run goes on from when its budget changed (None: unchanged, or not
    cosine): the rate the run's own schedule gives at its current step and time."""
    if new.lr_schedule is not LRSchedule.cosine or (old.max_steps, old.max_minutes) == (
        new.max_steps,
        new.max_minutes,
    ):
        return None
    rate = scheduled_lr(old, state["step"], state["elapsed_s"], state.get("lr_anchor"))
    return {"step": state["step"], "elapsed_s": state["elapsed_s"], "lr": rate}


def _save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``<path>.tmp``, then a rename: a kill or a full disk during the write leaves the
    previous file whole (``best.pt`` was written in place: a truncated one lost the run's best weights)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --- distributed helpers ----------------------------------------------------------------------------


def _dist() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _all_reduce(values: list[float]) -> list[float]:
    if not torch.distributed.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


# --- the loop -----------------------------------------------------------------------------------------


def validate(
    model: nn.Module, data: TrainData, norm: Normalisation, device: torch.device, factor: float | None = None
) -> float:
    """Mean PSNR (clean units, clean data range) over the whole validation set, all ranks together.

    ``factor``: the validation set drawn at that multiple of the nominal dose (``val_dose_factors``).
    """
    from training.evaluate.metrics import psnr

    model.eval()
    total = 0.0
    counts_set = data.val_counts if factor is None else data.val_counts_at[factor]
    dose = data.dose * (1.0 if factor is None else factor)
    with torch.no_grad():
        for counts, clean in zip(counts_set, data.val_clean, strict=True):
            x = norm.to_input(torch.from_numpy(counts)[None, None].to(device), dose)
            y = norm.to_clean_units(predict_full(model, x))[0, 0].cpu().numpy()
            total += float(psnr(clean, y))
    model.train()
    s, n = _all_reduce([total, float(len(data.val_counts))])
    return float(s / max(n, 1.0))  # a plain float: checkpoints load with weights_only=True


def step_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, equivariance_weight: float, rng: np.random.Generator
) -> torch.Tensor:
    """The training loss of one batch: MSE, and with ``equivariance_weight`` > 0 an orientation term.

    Why: trained on all 8 right-angle orientations, a network still scores a frame turned by 90 degrees
    0.5-1 dB differently from the frame (it is not equivariant by construction, and the live lane runs
    one orientation). Here the batch also goes through in one random other orientation, turned back; both
    outputs learn the target and the squared difference between them is penalised, which pulls the
    network towards its own 8-orientation average (the offline ensemble) at twice the step cost."""
    out = model(x)
    loss = F.mse_loss(out, y)
    if equivariance_weight <= 0:
        return loss
    k, mirror = orientations(8)[int(rng.integers(1, 8))]
    other = unturn(model(turn(x, k, mirror)), k, mirror)
    return 0.5 * (loss + F.mse_loss(other, y)) + equivariance_weight * F.mse_loss(out, other)


def _log(run_dir: Path, rank: int, record: dict[str, Any]) -> None:
    if rank != 0:
        return
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
        flush=True,
    )


def train(cfg: TrainConfig, resume: bool = True) -> dict[str, Any]:
    """Run (or resume) training; returns the summary also written to ``<run_dir>/summary.json``.

    One process per run folder (``lock.RunLock``, held by rank 0 until the run ends): a second one is
    refused at once when the folder exists, else when it makes it (after its inputs are checked, so a
    refused run still leaves no folder behind). SIGINT / SIGTERM end the step in progress, write
    ``last.pt`` and raise ``stop.Interrupted``."""
    rank = _dist()[0]
    held: list[RunLock] = []
    if rank == 0 and cfg.run_dir.is_dir():
        held.append(RunLock(cfg.run_dir))  # before anything is read or written
    try:
        return _train(cfg, resume, held)
    finally:
        for lock in held:
            lock.release()


def _train(cfg: TrainConfig, resume: bool, held: list[RunLock]) -> dict[str, Any]:
    """The run; ``held`` gets rank 0's lock when this call makes the run folder (released by ``train``)."""
    rank, world = _dist()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick the fastest kernels
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run_dir = cfg.run_dir
    last = run_dir / "last.pt"
    resuming = resume and last.is_file()
    before = stored_config(run_dir) if resuming else None
    if resuming:
        cfg = resumed_config(cfg, run_dir)  # the same run, or a one-line refusal
    torch.manual_seed(cfg.seed)
    data = TrainData(cfg, rank, world)
    norm = Normalisation(dose=data.dose)
    net = build_network(cfg).to(device)
    init = None if resuming or cfg.init_from is None else init_weights(cfg)
    # inputs read and checked: only now does the run get its folder (a refused run leaves none behind)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not held:
        held.append(RunLock(run_dir))
        if resuming != (resume and last.is_file()):
            raise RunBusy(
                f"{run_dir}: another training run wrote a checkpoint here while this one read its data; "
                "rerun the same command to resume it"
            )
    amp = cfg.amp == "bf16"
    if amp:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # documented; no stub
    model: nn.Module = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="max", factor=cfg.lr_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
    )
    state: dict[str, Any] = dict(step=0, best_psnr=-math.inf, best_step=0, bad=0, elapsed_s=0.0, samples=0)
    if resuming:
        ck = load_tensors(last, last, map_location=device)  # pickled objects: one line, exit 2
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state.update(ck["state"])
        _log(run_dir, rank, {"event": "resumed", "step": state["step"]})
        anchor = retime_anchor(before, cfg, state) if before is not None else None
        if anchor is not None:  # the cosine decays from its current rate to the new budget's end
            state["lr_anchor"] = anchor
            _log(run_dir, rank, {"event": "lr_retimed", **anchor})
    else:
        if rank == 0:
            (run_dir / "log.jsonl").unlink(missing_ok=True)
        if init is not None:
            net.load_state_dict(init["state_dict"])
            state["init_from"] = init["info"]
            _log(run_dir, rank, {"event": "init_from", **init["info"]})
            if rank == 0:
                warn_sampling(init["card"], data.pixel_size_A, data.dose_e_per_A2, cfg.data)
    if rank == 0:
        (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n")
        _log(
            run_dir,
            rank,
            {
                "event": "start",
                "params": count_parameters(net),
                "fov": field_of_view(net),
                "train_images": data.n_train,
                "preloaded": data.preloaded,
                "val_images": data.n_val_total,
                "world": world,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "command": invocation("sbd-train"),
                "structures": data.structures,
                "split_images": {k: len(v) for k, v in data.splits.items()},
            },
        )
    if data.train is not None:
        data.train = data.train.to(device)
    t0 = time.perf_counter() - state["elapsed_s"]
    # a run started from an engine's weights freezes batch norm at once (also when it resumes without
    # repeating --init-from: the run's own record in last.pt decides; see resume.effective_freeze)
    frozen_at = effective_freeze(cfg, state.get("init_from"))
    model.train()
    try:
        with StopRequest() as request:
            _loop(cfg, data, norm, device, model, net, opt, sched, state, t0, frozen_at, amp, request)
    finally:
        data.close()
    return _finish(cfg, data, net, state, t0, device, frozen_at)


def _checkpoint(net: nn.Module, opt: Any, sched: Any, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "state": dict(state),
    }


def _loop(
    cfg: TrainConfig,
    data: TrainData,
    norm: Normalisation,
    device: torch.device,
    model: nn.Module,
    net: nn.Module,
    opt: Any,
    sched: Any,
    state: dict[str, Any],
    t0: float,
    frozen_at: int | None,
    amp: bool,
    request: StopRequest,
) -> None:
    """Steps until the budget, early stopping or a stop request (then ``last.pt`` and Interrupted)."""
    rank, world = _dist()
    run_dir, last = cfg.run_dir, cfg.run_dir / "last.pt"
    ema: torch.Tensor | None = None
    minutes = state["elapsed_s"] / 60  # from last.pt: every rank decides alike
    if state["step"] >= cfg.max_steps or (cfg.max_minutes is not None and minutes > cfg.max_minutes):
        # a finished run resumed with its own budget: no step (one more step moved its weights)
        _log(run_dir, rank, {"event": "budget_spent", "step": state["step"]})
        return
    if state["bad"] >= cfg.early_stop_patience:
        _log(run_dir, rank, {"event": "early_stop", "step": state["step"]})
        return
    stop = False
    while not stop:
        step = state["step"]
        set_train_mode(model, frozen_at is not None and step >= frozen_at)
        rng = np.random.default_rng([cfg.seed, rank, step])
        which = data.draw(rng, cfg.batch)
        x, y = draw_batch(data.images(which, device), rng, cfg.augment, data.dose, norm)
        lr_now = scheduled_lr(cfg, step, time.perf_counter() - t0, state.get("lr_anchor"))
        if lr_now is not None:
            for group in opt.param_groups:
                group["lr"] = lr_now
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = step_loss(model, x, y, cfg.equivariance_weight, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] = step = step + 1
        state["samples"] += cfg.batch * world
        # kept on the device: a .item() per step would make the host wait for every GPU step
        ema = loss.detach() if ema is None else 0.9 * ema + 0.1 * loss.detach()
        elapsed = time.perf_counter() - t0
        out_of_time = cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes
        # one reduction for both: every rank stops at the same step, signalled or not
        flags = _all_reduce([float(out_of_time), float(request.signum is not None)])
        out_of_time, stopping = bool(flags[0]), bool(flags[1])
        done = step >= cfg.max_steps or out_of_time
        if step % cfg.log_every == 0:
            _log(
                run_dir,
                rank,
                {
                    "step": step,
                    "loss": float(ema),  # the one host sync of the loss, every log_every steps
                    "lr": opt.param_groups[0]["lr"],
                    "t_s": elapsed,
                    "samples_per_s": state["samples"] / max(elapsed, 1e-9),
                },
            )
        if step % cfg.val_every == 0 or done:
            v = validate(model, data, norm, device)
            at = {f"val_psnr_x{f:g}": validate(model, data, norm, device, f) for f in cfg.val_dose_factors}
            # selection score: mean PSNR over the nominal and the extra validation doses
            score = float(np.mean([v, *at.values()]))
            if frozen_at is not None and step > frozen_at and state["best_step"] <= frozen_at:
                # checkpoints from before the freeze ran another network (per-batch statistics):
                # forget them, and the plateau counters built on them
                state.update(best_psnr=-math.inf, bad=0)
                sched._reset()
                _log(run_dir, rank, {"event": "norm_frozen_reset_best", "step": step})
            if cfg.lr_schedule is LRSchedule.plateau:
                sched.step(score)
            improved = score > state["best_psnr"]
            if improved:
                state.update(best_psnr=score, best_step=step, bad=0)
                if rank == 0:
                    _save(net.state_dict(), run_dir / "best.pt")
            else:
                state["bad"] += 1
            state["elapsed_s"] = time.perf_counter() - t0
            state["last_val"] = {"step": step, "val_psnr": v, **at}
            _log(
                run_dir,
                rank,
                {
                    "step": step,
                    "val_psnr": v,
                    **at,
                    **({"score": score} if at else {}),
                    "best": state["best_psnr"],
                    "lr": opt.param_groups[0]["lr"],
                    "t_s": state["elapsed_s"],
                },
            )
            if rank == 0:
                _save(_checkpoint(net, opt, sched, state), last)
            if state["bad"] >= cfg.early_stop_patience:
                _log(run_dir, rank, {"event": "early_stop", "step": step})
                done = True
        if stopping and not done:
            signum = request.signum or signal.SIGTERM  # a rank the signal did not reach: as SIGTERM
            name = signal.Signals(signum).name
            if step % cfg.val_every:  # else last.pt was just written
                state["elapsed_s"] = time.perf_counter() - t0
                if rank == 0:
                    _save(_checkpoint(net, opt, sched, state), last)
            _log(run_dir, rank, {"event": "interrupted", "signal": name, "step": step})
            raise Interrupted(
                signum,
                f"training {run_dir} stopped by {name} at step {step}; {last} holds step {step}: "
                "rerun the same command to resume",
            )
        stop = done


def _finish(
    cfg: TrainConfig,
    data: TrainData,
    net: nn.Module,
    state: dict[str, Any],
    t0: float,
    device: torch.device,
    frozen_at: int | None,
) -> dict[str, Any]:
    rank, world = _dist()
    run_dir = cfg.run_dir
    summary = {
        "name": cfg.name,
        "steps": state["step"],
        "samples": state["samples"],
        "epochs": state["samples"] / max(data.n_train, 1),
        "best_val_psnr": state["best_psnr"] if math.isfinite(state["best_psnr"]) else None,
        "best_step": state["best_step"],
        "lr_schedule": cfg.lr_schedule.value,
        "val_selection": (
            f"mean val PSNR at x1 and x{', x'.join(f'{f:g}' for f in cfg.val_dose_factors)} the nominal dose"
            if cfg.val_dose_factors
            else "val PSNR at the nominal dose"
        ),
        "wall_s": time.perf_counter() - t0,
        "world_size": world,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "amp": cfg.amp,
        "parameters": count_parameters(net),
        "field_of_view": field_of_view(net),
        "seed": cfg.seed,
        "command": invocation("sbd-train"),
        "data": str(cfg.data),
        "dose": data.dose,
        "pixel_size_A": data.pixel_size_A,
        "dose_e_per_A2": data.dose_e_per_A2,
        "dose_factors": list(cfg.augment.dose_factors) if cfg.augment.dose_factors else None,
        "init_from": state.get("init_from"),
        "freeze_norm_after": frozen_at,
        "last_val": state.get("last_val"),
        "structures": data.structures,
        "split_images": {k: len(v) for k, v in data.splits.items()},
        "data_attrs": data.attrs,
    }
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        last_line = {"event": "done", "steps": state["step"], "best_val_psnr": summary["best_val_psnr"]}
        _log(run_dir, rank, last_line)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary
