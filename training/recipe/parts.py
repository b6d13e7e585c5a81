"""What each step of the GPU recipe is made of: the world to simulate, the training config, the
torchrun command and the engine's place; read-only, so the plan and the steps share them."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from sbd_stream.engines.card import QUALITY_ENGINE, ArtefactError, default_engine_root
from training.recipe.config import GPU_DEFAULTS, MODELS, RecipeConfig, RecipeError

QUALITY_CANDIDATE = f"{QUALITY_ENGINE}-gpu"
"""The recipe's run and engine name for the paper-quality 4 x 64 network (as benchmarks/gpu_paper_session.sh
names it): a candidate that nothing picks until ``sbd-train install-quality`` installs it."""


def sim_preset(cfg: RecipeConfig, name: str | None = None) -> Any:
    """The world (simulation preset; ``name``, else the recipe's), its structure count scaled so the grid
    holds about ``images`` images."""
    from training.sim.worlds import WORLDS

    name = name or cfg.sim_preset
    if name not in WORLDS:
        raise RecipeError(f"unknown simulation preset {name!r}; choose from {', '.join(WORLDS)}")
    p = WORLDS[name]
    if cfg.images is None:
        return p
    per_structure = _grid_images(p) / p.n_structures
    n = max(1, math.ceil(cfg.images / per_structure))
    return p.model_copy(update={"n_structures": n})


def _grid_images(preset: Any) -> int:
    from training.sim.worlds import plan

    return sum(len(t.thicknesses_nm) * len(t.defocus_nm) for t in plan(preset))


def detector_test_path(cfg: RecipeConfig) -> Path:
    if cfg.test is not None:
        return cfg.test
    from training.sim.worlds import sampled_test_path

    p = sim_preset(cfg)
    if p.test_view is None:
        raise RecipeError(
            f"simulation preset {p.name!r} renders no detector-sampling test split; pass --test"
        )
    return sampled_test_path(p, cfg.data)


def extra_data_path(cfg: RecipeConfig, world: str) -> Path:
    """Where an extra world's set lives: beside ``cfg.data`` as ``<stem>.<world>.h5``."""
    return cfg.data.with_name(f"{cfg.data.stem}.{world}.h5")


def world_sets(cfg: RecipeConfig) -> list[tuple[Any, Path]]:
    """(world, file) of every set the recipe simulates and trains on: its world, then the extra worlds."""
    return [(sim_preset(cfg), cfg.data)] + [
        (sim_preset(cfg, w), extra_data_path(cfg, w)) for w in cfg.extra_worlds
    ]


def simulation_status(cfg: RecipeConfig) -> dict[str, Any]:
    """Is every set (``cfg.data``, the extra worlds', and their detector-sampling test splits) complete
    for its world? Read-only."""
    import h5py

    from training.sim.worlds import file_attrs, plan, sampled_test_path

    files = []
    n_tasks = 0
    for preset, path in world_sets(cfg):
        tasks = plan(preset)
        n_tasks += len(tasks)
        files.append((path, file_attrs(preset), {t.key for t in tasks}))
        if preset.test_view is not None:
            test_keys = {t.key for t in tasks if t.test_view}
            files.append((sampled_test_path(preset, path), file_attrs(preset, "test_view"), test_keys))
    out: dict[str, Any] = {"tasks": n_tasks, "files": {}}
    complete = True
    for path, attrs, keys in files:
        if not path.is_file():
            out["files"][str(path)] = "missing"
            complete = False
            continue
        try:
            with h5py.File(path, "r") as f:
                old = json.loads(f.attrs.get("config_json", "{}"))
                n_img, _, n_task = (int(v) for v in f["committed"][()])
                raw = f["tasks/key"][:n_task]
        except (OSError, KeyError, ValueError) as e:
            out["files"][str(path)] = f"unreadable ({e})"
            complete = False
            continue
        if old != json.loads(json.dumps(attrs, sort_keys=True, default=str)):
            out["files"][str(path)] = (
                "made with other settings (another preset or --images): use a new --data"
            )
            complete = False
            continue
        done = {k.decode() if isinstance(k, bytes) else str(k) for k in raw}
        missing = len(keys - done)
        out["files"][str(path)] = f"{n_img} images, {len(keys) - missing}/{len(keys)} tasks"
        complete = complete and missing == 0
    out["complete"] = complete
    return out


def train_config(cfg: RecipeConfig, device: str) -> Any:
    """The run's TrainConfig: the training preset, the model, GPU defaults and the options given."""
    from training.train.presets import TRAINING_PRESETS, preset_config

    if cfg.train_preset not in TRAINING_PRESETS:
        raise RecipeError(
            f"unknown training preset {cfg.train_preset!r}; choose from {', '.join(TRAINING_PRESETS)}"
        )
    scales, channels = _model(cfg)
    gpu = GPU_DEFAULTS if device.startswith("cuda") else {}
    overrides: dict[str, Any] = {
        "data": str(cfg.data),
        "extra_data": [str(extra_data_path(cfg, w)) for w in cfg.extra_worlds],
        "out_dir": str(cfg.runs),
        "scales": scales,
        "channels": channels,
        "device": device,
        "seed": cfg.seed,
        "max_minutes": cfg.max_minutes,
        "max_steps": cfg.max_steps if cfg.max_steps is not None else gpu.get("max_steps"),
        "batch": cfg.batch if cfg.batch is not None else gpu.get("batch"),
        "threads": cfg.threads if cfg.threads is not None else gpu.get("threads"),
        "preload_max_gb": cfg.preload_max_gb if cfg.preload_max_gb is not None else gpu.get("preload_max_gb"),
        "augment": {"patch": patch} if (patch := _patch(cfg, scales)) else None,
        "init_from": cfg.init_from,
        "lr": cfg.lr,
        "lr_schedule": cfg.lr_schedule or gpu.get("lr_schedule"),
        "early_stop_patience": gpu.get("early_stop_patience"),
        "amp": cfg.amp,
        "val_every": cfg.val_every,
        "equivariance_weight": cfg.equivariance_weight,
    }
    tc = preset_config(cfg.train_preset, **overrides)
    weights = cfg.extra_weights
    if weights is None and len(tc.extra_data_weights) != len(tc.extra_data):
        weights = []  # the preset's weights are for other worlds: every train image equally likely
    if weights is not None:
        if weights and len(weights) != len(tc.extra_data):
            raise RecipeError(f"--extra-weights: {len(tc.extra_data)} weights needed (one per extra world)")
        tc = tc.model_copy(update={"extra_data_weights": list(weights)})
    freeze = cfg.freeze_norm_after
    if freeze is None:  # an engine's weights keep their statistics frozen (from step 0)
        freeze = 0 if cfg.init_from is not None else gpu.get("freeze_norm_after")
    if freeze is not None:
        tc = tc.model_copy(update={"freeze_norm_after": None if freeze < 0 else freeze})
    if cfg.name is None and cfg.train_preset == "paper-quality" and (tc.scales, tc.channels) == (4, 64):
        # a candidate for the quality engine, not the name offline work picks on a GPU (engines.card):
        # that one is installed only by `sbd-train install-quality`, after the quality checks pass
        name: str | None = QUALITY_CANDIDATE
    else:
        name = cfg.name or (
            f"sbd-unet{tc.scales}x{tc.channels}-gpu" if tc.architecture.value == "unet" else None
        )
    return tc.model_copy(update={"name": name}) if name else tc


def _patch(cfg: RecipeConfig, scales: int | None) -> int | None:
    """--patch, else the preset's rounded up to what a deeper --model halves ``scales`` times (the paper-
    quality preset's 208 px windows do not fit the 6-scale paper UNet's 64 px granularity)."""
    from training.train.presets import TRAINING_PRESETS

    preset = TRAINING_PRESETS[cfg.train_preset]
    if cfg.patch is not None or scales is None or preset.get("architecture", "unet") != "unet":
        return cfg.patch
    patch = preset.get("augment", {}).get("patch")
    multiple = 2**scales * preset.get("space_to_depth", 1)
    return -(-patch // multiple) * multiple if patch and patch % multiple else None


def _model(cfg: RecipeConfig) -> tuple[int | None, int | None]:
    """(scales, channels): explicit values, else ``model``, else the init engine's, else ``wide`` for the
    detector preset (other presets keep their own network)."""
    base: tuple[int | None, int | None] = (None, None)
    if cfg.model is not None:
        if cfg.model not in MODELS:
            raise RecipeError(f"unknown model {cfg.model!r}; choose from {', '.join(MODELS)}")
        base = MODELS[cfg.model]
    elif cfg.init_from is not None:
        from sbd_stream.engines.card import load_card, resolve_engine_dir

        card = load_card(resolve_engine_dir(cfg.init_from))
        base = (card.scales, card.channels)
    elif cfg.train_preset == "detector":
        base = MODELS["wide"]
    return (cfg.scales or base[0], cfg.channels or base[1])


def n_train_gpus(cfg: RecipeConfig, dev: dict[str, Any], device: str) -> int:
    if device != "cuda":  # cpu, or one named GPU (cuda:1)
        return 1
    have = len(dev["gpus"])
    if cfg.gpus is not None and cfg.gpus > have:
        raise RecipeError(f"--gpus {cfg.gpus}: only {have} visible")
    return cfg.gpus or have


def torchrun_command(config_json: Path, nproc: int, resume: bool) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "training.recipe", "train-worker", str(config_json), *([] if resume else ["--no-resume"]),
    ]  # fmt: skip


def engine_dir(cfg: RecipeConfig, run_name: str) -> Path:
    """Where the export step writes the engine; never the quality engine's own folder.

    Why: exported there, a run became what ``offline_engine()`` picks on every CUDA machine without any
    check (audit 24); ``sbd-train install-quality`` installs it there once the quality checks pass."""
    out = cfg.engine_dir or Path("engines") / run_name
    taken = [Path("engines") / QUALITY_ENGINE]
    with contextlib.suppress(ArtefactError):  # SBD_ENGINE_DIR names no folder: nothing is picked there
        taken.append(default_engine_root() / QUALITY_ENGINE)
    if any(out.resolve() == t.resolve() for t in taken):
        raise RecipeError(
            f"{out} is the quality engine's own folder ({QUALITY_ENGINE}), which offline work picks on a "
            f"GPU: export under another --name or --engine-dir (default {QUALITY_CANDIDATE}), then install "
            f"it with `sbd-train install-quality ENGINE`, which runs the quality checks first"
        )
    return out


def check_export_dir(cfg: RecipeConfig, out: Path) -> str | None:
    """``sbd-train export``'s rule for the export step's folder (training.train.export.check_engine_dir),
    its refusal a RecipeError (one line, status 2): the recipe exported into any folder, after hours of
    simulation and training (audit 34). None for a new or empty folder, else what the export replaces."""
    from training.train.export import EngineDirTaken, check_engine_dir, engine_name

    try:
        return check_engine_dir(out, engine_name(out), cfg.overwrite)
    except EngineDirTaken as e:
        raise RecipeError(str(e)) from None
