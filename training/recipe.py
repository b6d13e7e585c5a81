"""`sbd-train gpu-recipe`: simulate, train, export, build the TensorRT plan and evaluate, in one call.

Every step calls the project's own functions (``training.sim.simulate``, ``training.train``,
``training.train.export``, ``training.evaluate.detector``); nothing here re-implements them. What a step
needs that the machine lacks (a GPU for training, TensorRT for the plan) is checked first: training
refuses to fall back to the CPU unless asked (``allow_cpu``, for smoke runs), and the TensorRT step is
recorded as *skipped* with the reason when TensorRT or CUDA is missing, never faked. Each step's
status, time and outputs go into ``<results>/gpu_recipe.json`` as soon as it ends.

Several GPUs: training runs under ``torchrun --standalone --nproc_per_node=<gpus> -m training.recipe
train-worker <config.json>`` (one process per GPU, DistributedDataParallel, as ``sbd-train train``
under torchrun); one GPU trains in this process.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

STEPS = ("simulate", "train", "export", "tensorrt", "evaluate")
"""In the order they run; ``steps`` picks a subset, the order stays this one."""

NEEDS = {"train": "simulate", "export": "train", "tensorrt": "export", "evaluate": "export"}
"""A step is not run when the step it depends on failed in this call (not when it was left out)."""

MODELS: dict[str, tuple[int, int]] = {
    # the shipped detector engine's network (49 k parameters): --init-from engines/sbd-unet4-detector
    "detector": (4, 16),
    # same field of view (245 px = 59 A at the 0.24 A working pixel; the paper's network sees 54 A),
    # 16x the channel products: what a GPU affords at this sampling
    "wide": (4, 64),
    # the `paper` training preset's network (6 scales x 128 channels, FoV 1013 px: more than a 256 px frame)
    "paper": (6, 128),
}
"""UNet (scales, channels) by name; ``scales`` / ``channels`` override single values."""

GPU_DEFAULTS = {
    "batch": 16,
    "threads": 4,
    "preload_max_gb": 32.0,
    "max_steps": 10_000_000,
    "lr_schedule": "cosine",
    "early_stop_patience": 1_000_000,
    "freeze_norm_after": -1,
}
"""On CUDA: 16 whole 256 px frames per GPU and step, the set held in GPU memory up to 32 GB, no step
cap, and the rate decayed by a cosine over the time budget (a lease is a fixed budget: the plateau
schedule would end it still at a high rate), so the budget, not early stopping, ends the run; the best
validation checkpoint is still the one exported.

Batch-norm statistics are never frozen on a GPU. The detector preset freezes them at step 2,000 because
its CPU batch of 2 frames at different doses gives noisy batch statistics; with 16 frames per batch they
are stable, and freezing mid-run under Adam broke the wide network (H200, session 5: the loss jumped
from 0.00095 to 0.21 at the freeze and was back to only 0.0010 after 8,000 more steps, val score 26.2 dB
after 6 min; never frozen: 28.1 dB after 2.5 min; docs/training.md "GPU runs"). A run started from an
engine's weights (``--init-from``) keeps them frozen from step 0, as on the CPU: that engine's running
statistics are already fitted.
"""

SUMMARY_FILE = "gpu_recipe.json"


class RecipeError(RuntimeError):
    """The recipe cannot start as asked (e.g. no GPU and no ``allow_cpu``)."""


class RecipeConfig(BaseModel):
    steps: list[str] = Field(default_factory=lambda: list(STEPS))
    # simulate
    sim_preset: str = Field("paper", description="simulation world (training.sim.worlds.WORLDS)")
    data: Path = Path("data/paper-gpu.h5")
    test: Path | None = Field(None, description="test split at the detector's sampling (the preset's)")
    images: int | None = Field(None, gt=0, description="scale the preset's structure count to ~this many")
    workers: int | None = Field(None, ge=1, description="local Dask workers (default: all cores)")
    scheduler: str | None = None
    # train
    train_preset: str = Field(
        "paper-quality", description="training preset (training.train.presets): the quality engine"
    )
    model: str | None = Field(None, description="detector | wide | paper (see MODELS)")
    scales: int | None = Field(None, ge=1)
    channels: int | None = Field(None, ge=1)
    name: str | None = None
    runs: Path = Path("runs")
    device: str | None = None
    allow_cpu: bool = False
    gpus: int | None = Field(None, ge=1, description="GPUs to train on (default: all visible)")
    max_minutes: float | None = 30.0
    max_steps: int | None = None
    batch: int | None = None
    patch: int | None = None
    threads: int | None = None
    preload_max_gb: float | None = None
    seed: int | None = None
    init_from: str | None = None
    lr: float | None = None
    lr_schedule: str | None = Field(None, description="plateau | cosine (default on GPU: cosine)")
    freeze_norm_after: int | None = Field(
        None, ge=-1, description="step at which batch-norm statistics freeze; -1: never; None: the preset's"
    )
    resume: bool = True
    # export
    engine_dir: Path | None = None
    card_test_images: int | None = Field(48, description="test frames for the card's metrics; None: all")
    card_metrics: bool = True
    # tensorrt
    precision: str = "fp16"
    max_batch: int = 16
    # evaluate
    results: Path = Path("benchmarks/results/gpu-recipe")
    max_test_images: int = 24
    slow_test_images: int = 6
    dose_curve_images: int = 12
    compare_shipped: bool = True
    engine_kind: str = "onnxruntime"


# --- what the machine has ----------------------------------------------------------------------------


def devices() -> dict[str, Any]:
    """CPU cores, CUDA devices and whether TensorRT can build here (no side effects)."""
    import torch

    from sbd_stream.engines.tensorrt_engine import tensorrt_unavailable_reason

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "cpu_count": os.cpu_count() or 1,
        "cuda_available": cuda,
        "gpus": gpus,
        "torch": torch.__version__,
        "cuda_version": torch.version.cuda,
        "tensorrt_unavailable": tensorrt_unavailable_reason(),
    }


def resolve_device(cfg: RecipeConfig, dev: dict[str, Any]) -> str:
    """The training device; refuses the CPU unless ``allow_cpu`` (the recipe is sized for GPUs)."""
    device = cfg.device or ("cuda" if dev["cuda_available"] else "cpu")
    if device.startswith("cuda") and not dev["cuda_available"]:
        raise RecipeError(f"--device {device}: no CUDA GPU visible to torch")
    if device == "cpu" and not cfg.allow_cpu:
        raise RecipeError(
            "no CUDA GPU visible to torch (or --device cpu): this recipe is sized for GPUs; "
            "pass --allow-cpu for a smoke run on the CPU"
        )
    return device


# --- the pieces each step is made of -------------------------------------------------------------------


def sim_preset(cfg: RecipeConfig) -> Any:
    """The simulation preset, its structure count scaled so the grid holds about ``images`` images."""
    from training.sim.worlds import WORLDS

    if cfg.sim_preset not in WORLDS:
        raise RecipeError(f"unknown simulation preset {cfg.sim_preset!r}; choose from {', '.join(WORLDS)}")
    p = WORLDS[cfg.sim_preset]
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


def simulation_status(cfg: RecipeConfig) -> dict[str, Any]:
    """Is ``cfg.data`` (and its detector-sampling test split) complete for the preset? Read-only."""
    import h5py

    from training.sim.worlds import file_attrs, plan, sampled_test_path

    preset = sim_preset(cfg)
    tasks = plan(preset)
    files = [(cfg.data, file_attrs(preset), {t.key for t in tasks})]
    if preset.test_view is not None:
        test_keys = {t.key for t in tasks if t.test_view}
        files.append((sampled_test_path(preset, cfg.data), file_attrs(preset, "test_view"), test_keys))
    out: dict[str, Any] = {"tasks": len(tasks), "files": {}}
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
        "augment": {"patch": cfg.patch} if cfg.patch else None,
        "init_from": cfg.init_from,
        "lr": cfg.lr,
        "lr_schedule": cfg.lr_schedule or gpu.get("lr_schedule"),
        "early_stop_patience": gpu.get("early_stop_patience"),
    }
    tc = preset_config(cfg.train_preset, **overrides)
    freeze = cfg.freeze_norm_after
    if freeze is None:  # an engine's weights keep their statistics frozen (from step 0)
        freeze = 0 if cfg.init_from is not None else gpu.get("freeze_norm_after")
    if freeze is not None:
        tc = tc.model_copy(update={"freeze_norm_after": None if freeze < 0 else freeze})
    name = cfg.name or (f"sbd-unet{tc.scales}x{tc.channels}-gpu" if tc.architecture.value == "unet" else None)
    return tc.model_copy(update={"name": name}) if name else tc


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
    return cfg.engine_dir or Path("engines") / run_name


# --- the steps ---------------------------------------------------------------------------------------


class _Context:
    def __init__(self, cfg: RecipeConfig, dev: dict[str, Any], device: str | None):
        self.cfg, self.dev, self.device = cfg, dev, device
        self._tc: Any = None

    @property
    def tc(self) -> Any:
        if self._tc is None:
            self._tc = train_config(self.cfg, self.device or "cpu")
        return self._tc

    @property
    def engine_dir(self) -> Path:
        return engine_dir(self.cfg, self.tc.name)


class Skipped(Exception):
    """Raised by a step that cannot run here; the message is the reason recorded."""


def step_simulate(ctx: _Context) -> dict[str, Any]:
    from training.sim.simulate import simulate

    cfg = ctx.cfg
    status = simulation_status(cfg)
    if status["complete"]:
        raise Skipped(f"{cfg.data} is already complete ({'; '.join(status['files'].values())})")
    workers = cfg.workers or ctx.dev["cpu_count"]
    summary = simulate(sim_preset(cfg), cfg.data, scheduler=cfg.scheduler, workers=workers)
    if summary["failed"]:
        raise RuntimeError(f"{len(summary['failed'])} simulation tasks failed: {summary['failed'][:5]}")
    return {"workers": workers, **summary, "status_before": status["files"]}


def step_train(ctx: _Context) -> dict[str, Any]:
    from training.train.loop import train

    cfg, tc = ctx.cfg, ctx.tc
    if not Path(tc.data).is_file():
        raise FileNotFoundError(f"{tc.data}: no training set (run the simulate step)")
    nproc = n_train_gpus(cfg, ctx.dev, ctx.device or "cpu")
    if nproc > 1:
        tc.run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = tc.run_dir / "recipe_train_config.json"
        cfg_path.write_text(tc.model_dump_json(indent=2) + "\n")
        cmd = torchrun_command(cfg_path, nproc, cfg.resume)
        print(f"launching: {shlex.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        summary = json.loads((tc.run_dir / "summary.json").read_text())
    else:
        summary = train(tc, resume=cfg.resume)
    keep = ("steps", "best_val_psnr", "best_step", "wall_s", "world_size", "device", "parameters")
    return {
        "run_dir": str(tc.run_dir),
        "gpus_used": nproc if (ctx.device or "").startswith("cuda") else 0,
        "scales": tc.scales,
        "channels": tc.channels,
        "batch_per_process": tc.batch,
        "init_from": cfg.init_from,
        **{k: summary.get(k) for k in keep},
    }


def step_export(ctx: _Context) -> dict[str, Any]:
    from training.evaluate.tables import EvalConfig, evaluate_fov
    from training.train.export import export_run, set_metrics

    run_dir, out = ctx.tc.run_dir, ctx.engine_dir
    card = export_run(run_dir, out)
    res: dict[str, Any] = {
        "engine_dir": str(out),
        "parameters": card.parameters,
        "fov_px": card.field_of_view,
    }
    if ctx.cfg.card_metrics:
        ecfg = EvalConfig(
            data=ctx.tc.data, max_test_images=ctx.cfg.card_test_images, engine_kind="onnxruntime"
        )
        ev = evaluate_fov(ecfg, {card.name: out})
        row = ev["rows"][0]
        set_metrics(
            out,
            {
                "split": "test",
                "data": str(ctx.tc.data),
                "n_images": row["n_images"],
                "noise_seed": ev["noise_seed"],
                "detection": ev["detection"],
                **row["metrics"],
            },
        )
        res["card_test_psnr"] = row["metrics"]["psnr"]["mean"]
    res["files"] = sorted(p.name for p in out.iterdir())
    return res


def step_tensorrt(ctx: _Context) -> dict[str, Any]:
    from training.train.export import NoGPU, build_engine

    reason = ctx.dev["tensorrt_unavailable"]
    if reason:
        raise Skipped(f"TensorRT plan not built: {reason}")
    try:
        plan = build_engine(ctx.engine_dir, ctx.cfg.precision, None, ctx.cfg.max_batch)
    except NoGPU as e:
        raise Skipped(str(e)) from e
    return {
        "plan": str(plan),
        "plan_bytes": plan.stat().st_size,
        "precision": ctx.cfg.precision,
        "gpu": ctx.dev["gpus"][0] if ctx.dev["gpus"] else None,
    }


def step_evaluate(ctx: _Context) -> dict[str, Any]:
    from sbd_stream.engines.card import DEFAULT_ENGINE, default_engine_root
    from training.evaluate.detector import DetectorEvalConfig, evaluate_table_5_1_detector, psnr_vs_dose
    from training.evaluate.markdown import table_5_1_detector_markdown, write_markdown
    from training.evaluate.tables import write_json

    cfg, out = ctx.cfg, ctx.engine_dir
    test = detector_test_path(cfg)
    if not test.is_file():
        raise FileNotFoundError(f"{test}: no test split at the detector's sampling (run the simulate step)")
    if not (out / "card.json").is_file():
        raise FileNotFoundError(f"{out}: no engine (run the export step)")
    cfg.results.mkdir(parents=True, exist_ok=True)
    dcfg = DetectorEvalConfig(
        test=test, val=cfg.data, max_test_images=cfg.max_test_images, slow_test_images=cfg.slow_test_images,
        out_dir=cfg.results, engine_kind=cfg.engine_kind,
    )  # fmt: skip
    engines = {f"SBD, {out.name} (this recipe)": out}
    shipped = default_engine_root() / DEFAULT_ENGINE
    if cfg.compare_shipped and (shipped / "card.json").is_file() and shipped.resolve() != out.resolve():
        engines[f"SBD, {DEFAULT_ENGINE} (shipped)"] = shipped
    table = evaluate_table_5_1_detector(dcfg, engines)
    table["command"] = "sbd-train gpu-recipe"
    write_json(table, cfg.results / "table_5_1_detector.json")
    write_markdown(table_5_1_detector_markdown(table), cfg.results / "table_5_1_detector.md")
    curve = psnr_vs_dose(dcfg.model_copy(update={"max_test_images": cfg.dose_curve_images}), out)
    curve["command"] = "sbd-train gpu-recipe"
    write_json(curve, cfg.results / "dose_curve.json")
    mine = next(r for r in table["rows"] if r.get("engine") == str(out))
    return {
        "table": str(cfg.results / "table_5_1_detector.json"),
        "dose_curve": str(cfg.results / "dose_curve.json"),
        "test": str(test),
        "test_images": table["test_images"],
        "engine_paper_psnr": mine["metrics"]["paper_psnr"]["mean"],
        "engine_psnr": mine["metrics"]["psnr"]["mean"],
        "paper_margins": table.get("paper_margins"),
        "dose_curve_psnr": {f"x{r['dose_factor']:g}": r["psnr"] for r in curve["rows"]},
        "engine_kind": cfg.engine_kind,
    }


STEP_FUNCTIONS: dict[str, Callable[[_Context], dict[str, Any]]] = {
    "simulate": step_simulate,
    "train": step_train,
    "export": step_export,
    "tensorrt": step_tensorrt,
    "evaluate": step_evaluate,
}


# --- plan, run, summary --------------------------------------------------------------------------------


def selected_steps(steps: list[str]) -> list[str]:
    unknown = [s for s in steps if s not in STEPS]
    if unknown or not steps:
        raise RecipeError(f"unknown steps {unknown}; choose from {','.join(STEPS)}")
    return [s for s in STEPS if s in steps]


def describe_plan(cfg: RecipeConfig, dev: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run would do, step by step, with the devices found. Writes nothing."""
    from sbd_stream.compute.model import count_parameters, field_of_view
    from training.train.network import build_network

    dev = dev or devices()
    steps = selected_steps(cfg.steps)
    out: dict[str, Any] = {"devices": dev, "steps": []}
    try:
        device: str | None = resolve_device(cfg, dev)
    except RecipeError as e:
        device = None
        out["refusal"] = str(e) if "train" in steps else None
    # refused here: show the plan as a GPU machine would run it (its defaults)
    ctx = _Context(cfg, dev, device or "cuda")
    tc = ctx.tc
    workers = cfg.workers or dev["cpu_count"]
    for s in steps:
        item: dict[str, Any] = {"step": s}
        if s == "simulate":
            p = sim_preset(cfg)
            item["command"] = f"sbd-train simulate --preset {p.name} --out {cfg.data} --workers {workers}" + (
                f" (n_structures scaled to {p.n_structures} for --images {cfg.images})" if cfg.images else ""
            )
            item["grid"] = f"~{_grid_images(p)} images (before thin supports are dropped)"
            item["data_status"] = simulation_status(cfg)
        elif s == "train":
            nproc = n_train_gpus(cfg, dev, device) if device else 1
            net = build_network(tc)
            item["device"] = device or "refused here (shown with the GPU defaults)"
            item["processes"] = nproc
            if nproc > 1:
                item["command"] = shlex.join(
                    torchrun_command(tc.run_dir / "recipe_train_config.json", nproc, cfg.resume)
                )
            else:
                item["command"] = "in-process training.train.loop.train(config)"
            item["run_dir"] = str(tc.run_dir)
            item["network"] = f"{tc.architecture.value} {tc.scales} scales x {tc.channels} channels, "
            item["network"] += f"{count_parameters(net)} parameters, FoV {field_of_view(net)} px"
            item["budget"] = f"max_minutes={tc.max_minutes} max_steps={tc.max_steps}"
            item["lr"] = f"{tc.lr:g}, schedule {tc.lr_schedule.value}"
            item["norm_freeze"] = (
                "never"
                if tc.freeze_norm_after is None
                else "from step 0 (the engine's statistics)"
                if tc.init_from is not None
                else f"from step {tc.freeze_norm_after}"
            )
            item["batch"] = (
                f"{tc.batch} per process x {nproc}, patch {tc.augment.patch}, threads {tc.threads}"
            )
            item["init_from"] = cfg.init_from
        elif s == "export":
            item["command"] = f"sbd-train export {tc.run_dir} --engine-dir {ctx.engine_dir}"
        elif s == "tensorrt":
            reason = dev["tensorrt_unavailable"]
            item["command"] = f"sbd-train build-engine {ctx.engine_dir} --precision {cfg.precision}"
            item["will"] = f"skip: {reason}" if reason else "build"
        elif s == "evaluate":
            try:
                item["test"] = str(detector_test_path(cfg))
            except RecipeError as e:
                item["test"] = f"error: {e}"
            item["command"] = (
                f"sbd-train evaluate-detector --test {item['test']} --val {cfg.data} "
                f"--engine {ctx.engine_dir} --max-test-images {cfg.max_test_images} --out-dir {cfg.results}; "
                "sbd-train dose-curve"
            )
        out["steps"].append(item)
    out["summary_file"] = str(cfg.results / SUMMARY_FILE)
    return out


def format_plan(plan: dict[str, Any]) -> str:
    d = plan["devices"]
    gpus = ", ".join(d["gpus"]) or "none"
    lines = [
        f"devices: {d['cpu_count']} CPU cores; CUDA GPUs: {gpus}; "
        f"TensorRT: {'available' if not d['tensorrt_unavailable'] else d['tensorrt_unavailable']}",
    ]
    if plan.get("refusal"):
        lines.append(f"WOULD REFUSE: {plan['refusal']}")
    for i, item in enumerate(plan["steps"], 1):
        lines.append(f"{i}. {item['step']}: {item.get('command', '')}")
        for k, v in item.items():
            if k not in ("step", "command") and v is not None:
                lines.append(f"     {k}: {v}")
    lines.append(f"summary: {plan['summary_file']}")
    return "\n".join(lines)


def run_recipe(cfg: RecipeConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the selected steps in order; returns (and writes) the summary."""
    steps = selected_steps(cfg.steps)
    dev = devices()
    device = (
        resolve_device(cfg, dev)
        if "train" in steps
        else (cfg.device or ("cuda" if dev["cuda_available"] else "cpu"))
    )
    ctx = _Context(cfg, dev, device)
    summary: dict[str, Any] = {
        "recipe": "sbd-train gpu-recipe",
        "command": " ".join(["sbd-train", *sys.argv[1:]]) if sys.argv else "",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "devices": dev,
        "train_device": device,
        "config": cfg.model_dump(mode="json"),
        "steps": [],
    }
    path = cfg.results / SUMMARY_FILE
    failed: set[str] = set()
    for name in steps:
        rec: dict[str, Any] = {"step": name}
        t0 = time.perf_counter()
        dep = NEEDS.get(name)
        if dep in failed:
            rec.update(status="skipped", reason=f"not run: the {dep} step failed")
            failed.add(name)  # what depends on this one is not run either
        else:
            log(f"== {name} ==")
            try:
                rec.update(status="ok", outputs=STEP_FUNCTIONS[name](ctx))
            except Skipped as e:
                rec.update(status="skipped", reason=str(e))
                log(f"{name}: SKIPPED: {e}")
            except (Exception, SystemExit) as e:
                rec.update(
                    status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()
                )
                failed.add(name)
                log(f"{name}: FAILED: {type(e).__name__}: {e}")
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        summary["steps"].append(rec)
        _write(summary, path)
    summary["ok"] = not failed
    summary["wall_s"] = round(sum(r["seconds"] for r in summary["steps"]), 3)
    _write(summary, path)
    log(format_summary(summary))
    log(f"wrote {path}")
    return summary


def _write(summary: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'step':<10} {'status':<8} {'seconds':>9}  detail", "-" * 72]
    for r in summary["steps"]:
        if r["status"] == "ok":
            o = r.get("outputs", {})
            keys = ("engine_dir", "run_dir", "plan", "table", "out", "best_val_psnr", "engine_paper_psnr")
            detail = ", ".join(f"{k}={_short(o[k])}" for k in keys if o.get(k) is not None)
        else:
            detail = r.get("reason") or r.get("error", "")
        lines.append(f"{r['step']:<10} {r['status']:<8} {r['seconds']:>9.1f}  {detail}")
    return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


# --- torchrun worker -------------------------------------------------------------------------------------


def _worker(argv: list[str]) -> None:
    """``python -m training.recipe train-worker CONFIG.json [--no-resume]``: one rank under torchrun."""
    from training.train.config import TrainConfig
    from training.train.loop import train

    if not argv or argv[0] != "train-worker" or len(argv) < 2:
        raise SystemExit("usage: python -m training.recipe train-worker CONFIG.json [--no-resume]")
    cfg = TrainConfig.model_validate_json(Path(argv[1]).read_text())
    train(cfg, resume="--no-resume" not in argv[2:])


if __name__ == "__main__":
    _worker(sys.argv[1:])
