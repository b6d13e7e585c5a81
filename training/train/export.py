"""Turn a training run into an engine directory, and compile a TensorRT plan for the local GPU.

The card written here carries what a user needs to trust the engine: the data it saw (file, preset,
split structure ids), what training cost (wall time, steps, epochs, seed, command) and its test
metrics. ``write_engine`` adds weights, a verified ONNX and checksums.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from sbd_stream.compute.normalisation import Normalisation
from sbd_stream.engines.artefact_files import load_tensors
from sbd_stream.engines.card import (
    CARD_FILE,
    NAME_PATTERN,
    ONNX_FILE,
    WEIGHTS_FILE,
    EngineCard,
    load_card,
    write_engine,
)
from sbd_stream.engines.folder_swap import is_stage
from training.train.config import TrainConfig
from training.train.network import build_network
from training.train.resume import effective_freeze


def load_run(run_dir: Path, data: Path | None = None) -> tuple[TrainConfig, dict[str, Any], torch.nn.Module]:
    """Config, summary and best-validation network of a finished (or interrupted) run; ``data`` stands
    in for the run's data set where its path (relative to where it trained) is not found from here."""
    cfg = TrainConfig.model_validate_json((run_dir / "config.json").read_text())
    if data is not None and not cfg.data.is_file():
        cfg = cfg.model_copy(update={"data": data})
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    last = run_dir / "last.pt"
    if summary is None or (last.is_file() and last.stat().st_mtime > summary_path.stat().st_mtime):
        # no summary, or one left by an earlier segment of a run that was resumed and then stopped:
        # counters from last.pt over what the earlier summary knew (data splits, device, ...)
        partial = partial_summary(run_dir, cfg)
        summary = {**(summary or {}), **partial}
        if "epochs" not in partial:
            summary.pop("epochs", None)  # of the earlier segment only
    net = build_network(cfg)
    weights = run_dir / "best.pt"
    if not weights.is_file():
        # ValueError, not FileNotFoundError: the file is not the user's mistake, the budget is, and an
        # OSError without a file name was read as h5py's ("a damaged or truncated HDF5 file?")
        raise ValueError(
            f"{weights} missing: the run stopped before its first validation (every {cfg.val_every} "
            "steps and at the end of its budget), so it has no best checkpoint to export; rerun its "
            "train command with a larger --max-steps or --max-minutes to reach one"
        )
    # a checkpoint holding pickled objects: one line (ArtefactError), not UnpicklingError's traceback
    net.load_state_dict(load_tensors(weights, weights))
    return cfg, summary, net.eval()


def partial_summary(run_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    """What summary.json would say, for a run that is still going or was stopped: counters from its
    last.pt, dose and pixel from the data set's attributes (so the card's dose fields are right)."""
    from training.sim.dataset import SimulatedDataset

    out: dict[str, Any] = {"interrupted": True}
    start = _last_start(run_dir)
    last = run_dir / "last.pt"
    if last.is_file():
        st = load_tensors(last, last)["state"]
        out |= {
            "steps": st["step"],
            "samples": st["samples"],
            "best_val_psnr": st["best_psnr"],
            "best_step": st["best_step"],
            "wall_s": st["elapsed_s"],
            "init_from": st.get("init_from"),
            "freeze_norm_after": effective_freeze(cfg, st.get("init_from")),
            "last_val": st.get("last_val"),
        }
        if start.get("train_images"):
            out["epochs"] = st["samples"] / start["train_images"]
    # what the loop's summary.json says of the run, from its start line (the card had no command, split
    # sizes or structure ids for a stopped run; docs/training.md, "Engines")
    moved = {"command": "command", "structures": "structures", "split_images": "split_images"}
    moved |= {"world": "world_size", "device": "device", "threads": "threads"}
    out |= {to: start[key] for key, to in moved.items() if key in start}
    with SimulatedDataset(cfg.data) as ds:
        attrs = ds.attrs
        dose = float(attrs.get("dose", ds.meta(0)["dose"]))
        pixel = float(attrs.get("pixel_size_A", ds.meta(0)["pixel_size_A"]))
        out |= {
            "dose": dose,
            "pixel_size_A": pixel,
            "dose_e_per_A2": float(attrs.get("dose_e_per_A2", dose / pixel**2)),
            "data_attrs": {k: v for k, v in attrs.items() if isinstance(v, str | int | float)},
            "seed": cfg.seed,
        }
    return out


def _last_start(run_dir: Path) -> dict[str, Any]:
    """The latest ``event=start`` line of the run's log.jsonl (the segment last.pt belongs to); {} if none."""
    log = run_dir / "log.jsonl"
    start: dict[str, Any] = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
            if isinstance(entry, dict) and entry.get("event") == "start":
                start = entry
    return start


def card_for_run(cfg: TrainConfig, summary: dict[str, Any], name: str | None = None) -> EngineCard:
    keep = (
        "steps",
        "samples",
        "epochs",
        "best_val_psnr",
        "best_step",
        "val_selection",
        "wall_s",
        "world_size",
        "device",
        "threads",
        "seed",
        "command",
        "interrupted",
        "init_from",
        "last_val",
    )
    training = {k: summary[k] for k in keep if k in summary}
    init = summary.get("init_from") or {}
    training["steps_total"] = int(init.get("steps_before", 0)) + int(summary.get("steps", 0))
    training.update(
        {
            "loss": "MSE",
            "optimizer": (
                f"Adam lr={cfg.lr}, cosine to {cfg.min_lr} over the budget"
                if cfg.lr_schedule == "cosine"
                else f"Adam lr={cfg.lr}, x{cfg.lr_factor} on val-PSNR plateau ({cfg.plateau_patience})"
            ),
            "early_stop_patience": cfg.early_stop_patience,
            "batch": cfg.batch,
            "augment": cfg.augment.model_dump(mode="json"),
            "max_minutes": cfg.max_minutes,
            "max_steps": cfg.max_steps,
            # the step the run actually froze from (0 for a run started from an engine's weights)
            "freeze_norm_after": summary.get("freeze_norm_after", cfg.freeze_norm_after),
        }
    )
    factors = cfg.augment.dose_factors
    dose = float(summary.get("dose", 0.45))
    pixel = summary.get("pixel_size_A")
    per_area = summary.get("dose_e_per_A2") or (dose / pixel**2 if pixel else None)
    attrs = summary.get("data_attrs", {})
    training_data = {
        "file": str(cfg.data),
        "preset": attrs.get("preset"),
        "images": summary.get("split_images"),
        "split": cfg.split.model_dump(mode="json"),
        "structures": summary.get("structures"),
        "description": (
            "synthetic Gaussian-blob lattice (training.sim.synthetic_data), not physical"
            if attrs.get("preset") == "synthetic"
            else "abTEM multislice simulations of Pt nanoparticles on CeO2 (training.sim.simulate)"
        )
        + (
            f"; fresh Poisson noise per patch at the data set's dose x a log-uniform factor in "
            f"[{factors[0]:g}, {factors[1]:g}]"
            if factors
            else "; fresh Poisson noise per patch at the data set's dose"
        ),
        "pixel_size_A": pixel,
        "dose_e_per_A2": per_area,
        "dose_counts_per_px": dose,
    }
    if cfg.extra_data:  # the train splits of the same models imaged other ways (TrainConfig.extra_data)
        training_data["extra_files"] = [str(p) for p in cfg.extra_data]
        if cfg.extra_data_weights:
            training_data["extra_weights"] = list(cfg.extra_data_weights)
    return EngineCard(
        name=name or cfg.name,
        architecture=cfg.architecture,
        scales=cfg.scales,
        channels=cfg.channels,
        space_to_depth=cfg.space_to_depth,
        tiling=cfg.tiling,
        normalisation=Normalisation(dose=dose),
        pixel_size_A=pixel,
        dose_e_per_A2=per_area,
        dose_range=tuple(factors) if factors else (1.0, 1.0),
        training_data=training_data,
        training=training,
        notes=cfg.notes,
    )


class EngineDirTaken(ValueError):
    """The engine folder holds something other than an earlier export of the same engine (one line).

    A ValueError: ``sbd-train`` prints it as one ``error:`` line, status 2 (training/cli/errors.py)."""


ENGINE_FILES = (WEIGHTS_FILE, ONNX_FILE, CARD_FILE)
"""What an export writes; any other file in the folder is left as it is."""


def engine_dir_owner(engine_dir: Path) -> str | None:
    """The name on ``engine_dir/card.json`` (an engine folder), None where there is no such card.

    Read as plain JSON, not validated: a card of a newer format or with a bad checksum still names the
    engine a user would lose."""
    try:
        name = json.loads((engine_dir / CARD_FILE).read_text()).get("name")
    except (OSError, ValueError, AttributeError):  # missing, unreadable, not JSON, not an object
        return None
    return name if isinstance(name, str) else None


def engine_name(engine_dir: Path) -> str:
    """The name an export gives the engine it writes into ``engine_dir``: the folder's own name, also
    for ``.``, ``..`` or ``DIR/..`` (``Path('.').name`` is '': the card took the run's name, and a
    second export into ``.`` was refused as "holds the engine 'RUN', not ''"). Symbolic links are not
    followed: a link's name is the engine's, as before."""
    return Path(os.path.abspath(engine_dir)).name


def check_engine_dir(
    engine_dir: Path,
    name: str,
    overwrite: bool = False,
    option: str = "--engine-dir",
    remedy: str = "choose another folder",
) -> str | None:
    """Whether an export of the engine ``name`` may write into ``engine_dir``; raises EngineDirTaken if not.

    Returns None for a new or empty folder, else the line that tells the user what the export replaces
    there (or writes beside, with ``overwrite``). Why: ``export --engine-dir``
    wrote into any folder without a word, so one typo mixed an engine into an unrelated folder or replaced
    another engine's weights under its card. Replacing an earlier export of the same engine (its card
    names ``name``: retraining into its own folder, as docs/training.md shows) is the ordinary case;
    anything else needs ``overwrite`` (``--overwrite``). ``option`` / ``remedy``: how the refusal names
    the folder and what it proposes besides ``--overwrite`` (``fov-study --train`` has no folder option).

    Commands that write an engine after long work (``train --engine-dir``, ``fov-study --train``,
    ``gpu-recipe``'s export step) call it before that work starts: an hour of training no longer ends
    in a folder mixed into or another engine replaced; nor in a card its folder's name cannot name."""
    if engine_dir.exists() and not engine_dir.is_dir():
        raise EngineDirTaken(f"{option} {engine_dir}: a file, not a folder")
    if not re.fullmatch(NAME_PATTERN, name):  # the card was refused only when written (after training)
        raise EngineDirTaken(
            f"{option} {engine_dir}: {name!r} cannot name an engine (no leading '.', no control character); "
            f"{remedy}"
        )
    if not engine_dir.is_dir():
        return None
    try:
        # a staging folder a killed write left is the next write's to remove, not the user's file
        held = sorted(p.name for p in engine_dir.iterdir() if not is_stage(p.name))
    except OSError as e:
        raise EngineDirTaken(f"{option} {engine_dir}: cannot be listed ({e.strerror or e})") from None
    if not held:
        return None
    owner = engine_dir_owner(engine_dir)
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    if owner == name:
        files = ", ".join(ENGINE_FILES)
        return f"replacing the engine {owner!r} in {engine_dir} (an earlier export: its {files})"
    if overwrite and owner:
        return f"replacing the engine {owner!r} in {engine_dir} by {name!r} (--overwrite)"
    if overwrite:
        return f"writing the engine {name!r} into {engine_dir} (--overwrite), which held {shown}"
    what = f"the engine {owner!r}, not {name!r}" if owner else f"{len(held)} other entries ({shown})"
    raise EngineDirTaken(
        f"{option} {engine_dir}: holds {what}; {remedy}, or pass --overwrite to write "
        f"the engine there anyway ({', '.join(ENGINE_FILES)} replaced, other files kept)"
    )


def export_run(
    run_dir: Path,
    engine_dir: Path,
    name: str | None = None,
    metrics: dict[str, Any] | None = None,
    data: Path | None = None,
) -> EngineCard:
    """Write ``engine_dir`` (model.pt, model.onnx, card.json) from the best checkpoint of ``run_dir``.
    ``data``: the run's data set where its own path (relative to where it trained) is not found from
    here (``export --data``); the card's dose and pixel size come from it.

    Writes wherever it is told: every command that writes an engine checks the folder first
    (check_engine_dir: ``export``, ``train --engine-dir``, ``fov-study --train``, ``gpu-recipe``)."""
    cfg, summary, net = load_run(run_dir, data)
    card = card_for_run(cfg, summary, name or engine_name(engine_dir))
    if metrics:
        card = card.model_copy(update={"metrics": metrics})
    return write_engine(engine_dir, net, card)


def set_metrics(engine_dir: Path, metrics: dict[str, Any]) -> None:
    """Record test metrics in an existing card (checksums cover the model files, not the card)."""
    card = load_card(engine_dir).model_copy(update={"metrics": metrics})
    tmp = engine_dir / f".card.json.{os.getpid()}.tmp"  # replaced whole: a crash never leaves half a card
    tmp.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, engine_dir / "card.json")


class NoGPU(RuntimeError):
    """TensorRT plans can only be built on the GPU that will run them."""


def build_engine(
    engine_dir: Path, precision: str = "fp16", tile: int | None = None, max_batch: int = 16
) -> Path:
    """Compile (or find cached) the TensorRT plan of ``engine_dir`` for this machine's GPU."""
    from sbd_stream.engines.tensorrt_engine import cached_plan, tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason:
        raise NoGPU(
            f"cannot build a TensorRT plan here: {reason}. Plans are specific to the GPU, CUDA and TensorRT "
            "version that build them; run `sbd-train build-engine` on the machine that will serve the engine."
        )
    card = load_card(engine_dir)
    return cached_plan(engine_dir, card, precision, tile or card.tiling.tile, max_batch)
