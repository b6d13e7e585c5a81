"""Training commands: ``train``, ``export``, ``build-engine`` and the one-call ``gpu-recipe``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from sbd_stream.cli.app import fail
from training.cli.checks import need_dataset, need_device, need_engine
from training.cli.common import export_engine

PRESETS = (
    "default, detector, paper-live, paper-fast, paper-fast-equivariant, paper-fast-mixed, paper-live-mixed, "
    "paper-fast-optics, paper-live-optics, paper-fast-twins, paper-live-twins, paper-quality, fov53, fov245, "
    "fov1013, small_unet, dncnn, paper, tiny, fov13-detector, fov21-detector, fov53-detector, "
    "fov245-detector, fov13-paper, fov21-paper, fov53-paper, fov245-paper"
)
"""Every training preset (training.train.presets.TRAINING_PRESETS; a test keeps the two in step), written
out so that ``--help`` does not import torch."""
PRESET_HELP = f"training preset (docs/training.md): {PRESETS}"


def train(
    preset: str = typer.Option("default", help=PRESET_HELP),
    data: Path | None = typer.Option(None, help="simulated HDF5 set (preset's if omitted)"),
    extra_data: list[Path] = typer.Option(
        [], "--extra-data", help="another simulated set whose train split joins training (repeatable)"
    ),
    extra_data_weight: list[float] = typer.Option(
        [], "--extra-data-weight", help="per --extra-data set: how often its images are drawn (default 1)"
    ),
    seed: int | None = typer.Option(None, help="seed of batches, augmentation and noise"),
    name: str | None = typer.Option(
        None, help="run name (runs/<name>; default: the preset's); an existing run resumes with its options"
    ),
    out_dir: Path | None = typer.Option(None, help="folder of run directories"),
    max_minutes: float | None = typer.Option(None, help="wall-time budget"),
    max_steps: int | None = typer.Option(None, help="step budget"),
    batch: int | None = typer.Option(None, help="batch per process"),
    patch: int | None = typer.Option(None, help="patch side in pixels"),
    threads: int | None = typer.Option(None, help="torch CPU threads per process"),
    device: str | None = typer.Option(None, help="cpu | cuda | cuda:N | mps (default: cuda if available)"),
    resume: bool = typer.Option(True, help="continue from <run>/last.pt when it exists"),
    init_from: str | None = typer.Option(
        None, "--init-from", help="start a fresh run from this engine's weights (engines/<name> or a path)"
    ),
    lr_schedule: str | None = typer.Option(
        None, help="plateau (halve on a validation plateau) | cosine (decay over the step/time budget)"
    ),
    amp: str | None = typer.Option(None, help="off | bf16 (autocast, channels-last; for tensor cores)"),
    lr: float | None = typer.Option(None, help="initial learning rate (default: the preset's)"),
    val_every: int | None = typer.Option(None, min=1, help="steps between validations (default: preset's)"),
    equivariance_weight: float | None = typer.Option(
        None, min=0.0, help="orientation term: each batch also in one other right-angle orientation"
    ),
    freeze_norm_after: int | None = typer.Option(
        None, min=0, help="step from which batch-norm statistics stay frozen (default: the preset's)"
    ),
    engine_dir: Path | None = typer.Option(None, help="export the best checkpoint here afterwards"),
    evaluate_test: bool = typer.Option(True, help="with --engine-dir: put test metrics in the card"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="with --engine-dir: write it even if it holds other files (as export's)"
    ),
) -> None:
    """Train a denoiser on simulated data (works under `torchrun --nproc_per_node=N`).

    --engine-dir is checked before training starts, by export's rule (new, empty or an earlier export
    of the same engine, else one error line unless --overwrite), and again before the export."""
    import math
    import os
    import signal

    from training.train.loop import train as run_training
    from training.train.presets import preset_config
    from training.train.stop import Interrupted, stops_raise

    need_device(device)
    # TrainConfig allows 0 (weights kept, for tests); a user means to learn, and inf trained NaN weights
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        fail(f"--lr: must be greater than 0 and finite (got {lr})")
    cfg = preset_config(
        preset,
        data=data and str(data),
        extra_data=[str(p) for p in extra_data] or None,
        extra_data_weights=list(extra_data_weight) or None,
        seed=seed,
        name=name,
        out_dir=out_dir and str(out_dir),
        max_minutes=max_minutes,
        max_steps=max_steps,
        batch=batch,
        threads=threads,
        amp=amp,
        lr=lr,
        val_every=val_every,
        equivariance_weight=equivariance_weight,
        freeze_norm_after=freeze_norm_after,
        device=device,
        augment={"patch": patch} if patch is not None else None,
        init_from=init_from,
        lr_schedule=lr_schedule,
    )
    need_dataset(cfg.data, "--data")
    for extra in cfg.extra_data:
        need_dataset(extra, "--extra-data")
    if init_from is not None:
        need_engine(init_from, "--init-from", ("model.pt",))
    rank0 = int(os.environ.get("RANK", 0)) == 0
    if engine_dir is not None:  # before the run, not after its hour of training (audit 34)
        replaced = _engine_dir_line(engine_dir, overwrite)
        if replaced is not None and rank0:
            typer.echo(f"after training: {replaced}")
    try:
        with stops_raise():  # in the loop: a checkpoint first (training.train.stop)
            summary = run_training(cfg, resume=resume)
    except Interrupted as e:
        if e.line:
            raise
        raise Interrupted(e.signum, f"training {cfg.run_dir} stopped by {e.signal_name} {_BEFORE}") from None
    except KeyboardInterrupt:
        raise Interrupted(signal.SIGINT, f"training {cfg.run_dir} stopped by SIGINT {_BEFORE}") from None
    if engine_dir is not None and rank0:
        _engine_dir_line(engine_dir, overwrite, f" (the run is kept: sbd-train export {cfg.run_dir})")
        export_engine(cfg.run_dir, engine_dir, evaluate_test, cfg.data)
    if summary["best_val_psnr"] is None:  # a budget spent before the first validation
        typer.echo(f"no validation yet after {summary['steps']} steps (every {cfg.val_every} steps)")
    else:
        typer.echo(f"best val PSNR {summary['best_val_psnr']:.2f} dB after {summary['steps']} steps")


def _engine_dir_line(engine_dir: Path, overwrite: bool, after: str = "") -> str | None:
    """check_engine_dir's line for ``engine_dir`` (named after itself, as the export names it), or its
    refusal as one error line, status 2, ``after`` added (the second check, once the run is done)."""
    from training.train.export import EngineDirTaken, check_engine_dir, engine_name

    try:
        return check_engine_dir(engine_dir, engine_name(engine_dir), overwrite)
    except EngineDirTaken as e:
        fail(f"{e}{after}")


_BEFORE = "before its steps began (while its data were read): rerun the same command to start or resume it"


def export(
    run_dir: Path = typer.Argument(..., help="runs/<name> of a training run"),
    engine_dir: Path = typer.Option(..., help="engine directory to write"),
    data: Path | None = typer.Option(None, help="data set whose test split goes into the card (run's)"),
    evaluate_test: bool = typer.Option(True, help="evaluate on the test split and record it in the card"),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="write into --engine-dir even if it holds other files or another engine (its model.pt, "
        "model.onnx and card.json replaced, other files kept); an earlier export of the same engine "
        "is replaced without it",
    ),
) -> None:
    """Export a run's best checkpoint as an engine (model.pt, verified model.onnx, card.json).

    Works on a finished run and on one still going or stopped (counters from its last.pt). The engine
    folder must be new, empty or an earlier export of the same engine (its card names the folder), else
    one error line unless --overwrite: a folder of other files or another engine is never mixed into.
    """
    from training.train.export import EngineDirTaken, check_engine_dir, engine_name

    if not (run_dir / "config.json").is_file():
        why = "no config.json (not a training run)" if run_dir.is_dir() else "no such run"
        fail(f"RUN_DIR {run_dir}: {why}")
    try:
        replaced = check_engine_dir(engine_dir, engine_name(engine_dir), overwrite)
    except EngineDirTaken as e:
        fail(str(e))
    if data is None:
        from training.train.config import TrainConfig

        data = TrainConfig.model_validate_json((run_dir / "config.json").read_text()).data
        if not data.is_absolute() and not data.exists():  # the card's units come from it, test or not
            fail(
                f"the run's data set {data} is not found from here (a path relative to the folder the "
                f"run was trained in): run export there, or pass --data with that data set's path"
            )
    if evaluate_test:
        need_dataset(data, "--data")
    if replaced is not None:
        typer.echo(replaced)
    from training.train.stop import Interrupted, stops_raise

    try:  # SIGTERM as Ctrl-C: the engine's staging folder is removed and the old engine stays (write_engine)
        with stops_raise():
            export_engine(run_dir, engine_dir, evaluate_test, data)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", 2)  # 2: SIGINT (Ctrl-C)
        raise Interrupted(signum, f"export into {engine_dir} stopped; what it held is unchanged") from None


def build_engine(
    engine: str | None = typer.Argument(
        None,
        help="engine name under engines/ or a path (default: sbd-unet4-paper-twins, the engine a GPU serves)",
    ),
    precision: str = typer.Option("fp16", help="fp16 | fp32"),
    tile: int | None = typer.Option(None, help="tile side (default: the card's)"),
    max_batch: int = typer.Option(16, help="largest tile batch the plan accepts"),
) -> None:
    """Compile the engine's TensorRT plan for this machine's GPU (cached under ~/.cache/sbd-stream)."""
    from sbd_stream.engines.card import resolve_engine_dir
    from training.train.export import NoGPU
    from training.train.export import build_engine as build

    # the default was the legacy engines/sbd-unet4-default, relative to the current folder, while a GPU
    # serves sbd-unet4-paper-twins (live_engine on a GPU; README, docs/deployment.md)
    engine_dir = resolve_engine_dir(engine)
    try:
        plan = build(engine_dir, precision, tile, max_batch)
    except NoGPU as e:
        fail(str(e))  # not typer.echo + Exit(2): a line stderr cannot take left status 1 (2>/dev/full)
    typer.echo(f"TensorRT plan: {plan}")


def install_quality(
    engine: str = typer.Argument(
        ..., help="engine to check and install: a path, or a name under the engine root"
    ),
    device: str = typer.Option("cpu", help="where the checks run (cpu: as tests/e2e/test_engine_quality.py)"),
) -> None:
    """Install an engine as the quality engine (sbd-unet4x64-paper: what offline work picks on a GPU),
    only if it passes the checks of tests/e2e/test_engine_quality.py; else refused, naming each failure.
    """
    import os
    import shutil

    from sbd_stream.engines.card import QUALITY_ENGINE, default_engine_root, resolve_engine_dir
    from training.evaluate.quality_gate import MARGIN_DB_BY_ENGINE, quality_failures

    need_device(device)
    src = resolve_engine_dir(engine)
    dest = default_engine_root() / QUALITY_ENGINE
    if dest.exists():
        fail(f"{dest} exists: move it away first to install another engine as {QUALITY_ENGINE}")
    failures, worst = quality_failures(src, MARGIN_DB_BY_ENGINE[QUALITY_ENGINE], device)
    margins = ", ".join(f"{k} {v:+.2f} dB" for k, v in worst.items())
    if failures:
        fail(
            f"{src} not installed as {QUALITY_ENGINE}: {'; '.join(failures)} "
            f"(tests/e2e/test_engine_quality.py's checks; worst margins over the oracle low-pass: {margins})"
        )
    tmp = dest.with_name(f".{dest.name}.installing")
    shutil.rmtree(tmp, ignore_errors=True)
    from sbd_stream.engines.folder_swap import STAGE_PREFIX  # a killed export's staging is not the engine

    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(f"{STAGE_PREFIX}*"))
    os.replace(tmp, dest)  # whole or not at all: offline_engine() picks the folder once card.json is there
    typer.echo(f"installed {src} as {dest} (worst margins over the oracle low-pass: {margins})")


def gpu_recipe(
    steps: str = typer.Option("simulate,train,export,tensorrt,evaluate", help="subset, comma-separated"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and devices; run nothing"),
    data: Path = typer.Option(Path("data/paper-gpu.h5"), help="training set (simulated if incomplete)"),
    test: Path | None = typer.Option(None, help="test split at 0.060 A (default: the simulation's)"),
    sim_preset: str = typer.Option("paper", help="simulation world (the paper's)"),
    images: int | None = typer.Option(None, min=1, help="scale the simulated set to ~this many images"),
    extra_worlds: str = typer.Option(
        "paper-envelope,paper-optics,paper-twins",
        help="more worlds (the same models imaged other ways; twinned particles), simulated beside --data "
        "(<stem>.<world>.h5) and trained on with it; comma-separated, '' for none",
    ),
    extra_weights: str | None = typer.Option(
        None, help="draw weight of each extra world relative to --data, comma-separated (default: preset's)"
    ),
    workers: int | None = typer.Option(None, min=1, help="Dask workers (default: all cores)"),
    train_preset: str = typer.Option("paper-quality", help="training preset (the quality engine)"),
    model: str | None = typer.Option(None, help="detector | wide | paper (default: init's, else wide)"),
    scales: int | None = typer.Option(None, min=1),
    channels: int | None = typer.Option(None, min=1),
    name: str | None = typer.Option(
        None,
        help="run name (default: sbd-unet4x64-paper-gpu for the paper-quality preset's 4 x 64 UNet, a "
        "candidate: `sbd-train install-quality` checks it and installs it as sbd-unet4x64-paper, the engine "
        "offline work picks on a GPU; else sbd-unet<S>x<C>-gpu)",
    ),
    device: str | None = typer.Option(None, help="cuda | cuda:N | cpu (default: cuda if available)"),
    allow_cpu: bool = typer.Option(False, "--allow-cpu", help="train on the CPU (smoke runs)"),
    gpus: int | None = typer.Option(None, min=1, help="GPUs to train on (default: all; >1 uses torchrun)"),
    max_minutes: float = typer.Option(30.0, help="training wall-time budget"),
    max_steps: int | None = typer.Option(None, help="step cap (default on GPU: none)"),
    batch: int | None = typer.Option(None, help="batch per GPU (default on GPU: 16)"),
    patch: int | None = typer.Option(None, help="patch side (default: the preset's)"),
    threads: int | None = typer.Option(None, help="torch CPU threads"),
    init_from: str | None = typer.Option(None, "--init-from", help="start from this engine's weights"),
    lr: float | None = typer.Option(None, help="initial learning rate (default: the preset's)"),
    lr_schedule: str | None = typer.Option(None, help="plateau | cosine (default on GPU: cosine)"),
    freeze_norm_after: int | None = typer.Option(
        None, min=-1, help="step at which batch-norm statistics freeze (-1: never; default: the preset's)"
    ),
    resume: bool = typer.Option(True, help="continue runs/<name>/last.pt when it exists"),
    amp: str | None = typer.Option(None, help="off | bf16 autocast with channels-last (default: off)"),
    val_every: int | None = typer.Option(None, min=1, help="steps between validations (default: preset's)"),
    equivariance_weight: float | None = typer.Option(
        None, min=0.0, help="orientation term: each batch also in one other orientation (default: preset's)"
    ),
    engine_dir: Path | None = typer.Option(None, help="engine to write (default engines/<name>)"),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="export into the engine folder even if it holds other files or another engine (as export's); "
        "checked before any step runs",
    ),
    results: Path = typer.Option(Path("benchmarks/results/gpu-recipe"), help="tables and gpu_recipe.json"),
    max_test_images: int = typer.Option(24, help="detector-sampling test frames for Table 5.1"),
    slow_test_images: int = typer.Option(6, help="test frames for NLM / BM3D"),
    dose_curve_images: int = typer.Option(12, help="test frames for the dose curve"),
    compare_shipped: bool = typer.Option(True, help="also score the shipped engine"),
    card_metrics: bool = typer.Option(True, help="export: test metrics (working pixel) into the card"),
) -> None:
    """Simulate, train, export, build the TensorRT plan and evaluate in one call (for a GPU machine)."""
    from training.recipe.config import RecipeConfig, RecipeError
    from training.recipe.plan import describe_plan, format_plan
    from training.recipe.run import run_recipe
    from training.train.stop import check_stop, stops_raise

    opts = {k: v for k, v in locals().items() if k not in ("steps", "dry_run")}
    opts["extra_worlds"] = [w.strip() for w in extra_worlds.split(",") if w.strip()]
    if extra_weights is not None:
        opts["extra_weights"] = [float(w) for w in extra_weights.split(",") if w.strip()]
    try:
        cfg = RecipeConfig(steps=[s.strip() for s in steps.split(",") if s.strip()], **opts)
        if dry_run:
            typer.echo(format_plan(describe_plan(cfg)))
            return
        with stops_raise():  # SIGTERM as Ctrl-C; in training: last.pt first (training.train.stop)
            summary = run_recipe(cfg, log=_checked(typer.echo, check_stop))
    except RecipeError as e:
        fail(str(e))  # its status, 2, also where stderr cannot take the line (fail's docstring)
    if not summary["ok"]:
        raise typer.Exit(1)


def _checked(log: Callable[[str], None], check: Callable[[], None]) -> Callable[[str], None]:
    """``log`` that first calls ``check``: the recipe logs ``== step ==`` before each step, so a stop whose
    raise Python swallowed during one step (``training.train.stop``) ends the recipe before the next one
    (simulating, training for hours) instead of being lost."""

    def checked(line: str) -> None:
        check()
        log(line)

    return checked
