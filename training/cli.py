"""`sbd-train`: simulate training data, train, evaluate and export engines.

Thin by design: each command parses options and calls into the module that does the work.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Simulate training data, train large-field-of-view UNets, evaluate them and build engines.",
    no_args_is_help=True,
    add_completion=False,
)


# --- simulation: simulate, contact-sheet -------------------------------------------------
from pathlib import Path  # noqa: E402


@app.command()
def simulate(
    preset: str = typer.Option("mini", help="tiny | mini | detector | paper (see docs/simulation.md)"),
    out: Path = typer.Option(Path("data/mini.h5"), help="HDF5 file; an existing one is resumed"),
    scheduler: str | None = typer.Option(
        None, help="dask.distributed scheduler address, e.g. tcp://host:8786"
    ),
    workers: int = typer.Option(2, min=1, help="local Dask workers when no scheduler is given"),
    max_tasks: int | None = typer.Option(None, help="stop after this many new tasks"),
    plan_only: bool = typer.Option(False, "--plan", help="print the grid size and exit"),
) -> None:
    """Simulate clean TEM images with abTEM multislice into an appendable, resumable HDF5 set."""
    from training.sim.simulate import simulate as run_simulation
    from training.sim.worlds import WORLDS, describe

    if preset not in WORLDS:
        raise typer.BadParameter(f"unknown preset {preset!r}; choose from {', '.join(WORLDS)}")
    world = WORLDS[preset]
    if plan_only:
        typer.echo(describe(world))
        return
    summary = run_simulation(world, out, scheduler=scheduler, workers=workers, max_tasks=max_tasks)
    if summary["failed"]:
        raise typer.Exit(1)


@app.command("contact-sheet")
def contact_sheet(
    data: Path = typer.Option(Path("data/mini.h5"), help="simulated HDF5 set"),
    out: Path = typer.Option(Path("docs/contact_sheet.png"), help="PNG to write"),
    seed: int = typer.Option(0, help="seed of the Poisson noise"),
) -> None:
    """Clean and noisy images across defocus, thickness and particle class, as one small PNG."""
    from training.sim.contact_sheet import make_contact_sheet

    make_contact_sheet(data, out, seed=seed)
    typer.echo(f"wrote {out}")


# --- end simulation ---------------------------------------------------------------------------------


# --- likelihood study: likelihood-study -----------------------------------------------
@app.command("likelihood-study")
def likelihood_study(
    data: Path = typer.Option(Path("data/mini.h5"), "--data", help="simulated HDF5 set with ground truth"),
    engine: str | None = typer.Option(None, "--engine", help="engine directory or name (trained network)"),
    backend: str = typer.Option("auto", help="engine backend: auto | torch | onnxruntime | tensorrt"),
    denoiser: str = typer.Option("engine", help="engine | gaussian | clean (perfect: upper bound)"),
    split: str = typer.Option("test", "--split", help="test | val | train | all (training's split)"),
    max_images: int | None = typer.Option(None, "--max-images", min=1, help="first N images of the split"),
    frames_per_image: int = typer.Option(1, min=1, help="noise realisations per image"),
    evidence_frames: int = typer.Option(
        0, min=0, help="0: score on the denoised frame's own counts; N: on N further independent frames"
    ),
    polarity: str = typer.Option("truth", help="bright | dark | truth (from each image's contrast class)"),
    match_distance: float = typer.Option(0.7, "--match-distance-A", help="TP matching radius, Angstrom"),
    column_radius: float | None = typer.Option(None, "--column-radius-A", help="region radius, Angstrom"),
    threshold: float | None = typer.Option(None, help="LoG detection threshold (vacuum units)"),
    device: str = typer.Option("cpu"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("benchmarks/results"), "--out", help="directory for <name>.json/.png"),
    name: str = typer.Option("likelihood_study", help="output file stem"),
) -> None:
    """LLR distributions of true/false positives and false negatives against ground truth (Fig. 3.4)."""
    from training.evaluate.likelihood_study import StudyConfig, run_study

    pairs = (("column_radius_A", column_radius), ("threshold", threshold))
    overrides = {k: v for k, v in pairs if v is not None}
    cfg = StudyConfig(
        data=data, engine=engine, backend=backend, denoiser=denoiser, split=split, max_images=max_images,
        frames_per_image=frames_per_image, evidence_frames=evidence_frames, polarity=polarity,
        match_distance_A=match_distance,
        likelihood=overrides, device=device, seed=seed, out=out, name=name,
    )  # fmt: skip
    res = run_study(cfg)
    for region in ("surface", "all"):
        g = res["groups"][region]
        auc = res["roc"][region]["auc_tp_vs_fp"]
        med = {k: g[k].get("median", float("nan")) for k in ("tp", "fp")}
        typer.echo(
            f"{region:>8}: TP {g['tp']['n']}  FP {g['fp']['n']}  FN {g['fn']['n']}  "
            f"median LLR TP {med['tp']:.2f} FP {med['fp']:.2f}  "
            f"AUC(TP vs FP) {auc if auc is None else round(auc, 3)}"
        )
    typer.echo(f"wrote {out / (name + '.json')} and {out / (name + '.png')}")


# --- end likelihood study -----------------------------------------------------------------------


# --- training and evaluation: train, evaluate, fov-study, export, build-engine --------------
BENCH_ENGINES = Path("benchmarks/engines")
TABLE_5_1_ENGINES = {
    "SBD + DnCNN": BENCH_ENGINES / "sbd-dncnn",
    "SBD + Small UNet (DURR)": BENCH_ENGINES / "sbd-smallunet",
    "SBD + UNet, 4 scales (default engine)": Path("engines/sbd-unet4-default"),
}
FOV_ENGINES = {
    "UNet 2 scales": BENCH_ENGINES / "fov53-unet2",
    "UNet 4 scales": BENCH_ENGINES / "fov245-unet4",
    "UNet 6 scales": BENCH_ENGINES / "fov1013-unet6",
}


def _engine_options(pairs: list[str] | None, default: dict[str, Path]) -> dict[str, Path]:
    if not pairs:
        found = {k: v for k, v in default.items() if (v / "card.json").is_file()}
        for k, v in default.items():
            if k not in found:
                typer.echo(f"warning: {k}: no engine at {v}; row left out (train it first)", err=True)
        return found
    out = {}
    for p in pairs:
        label, _, path = p.rpartition("=")
        out[label or Path(path).name] = Path(path)
    return out


@app.command()
def train(
    preset: str = typer.Option(
        "default", help="default|detector|fov53|fov245|fov1013|small_unet|dncnn|paper"
    ),
    data: Path | None = typer.Option(None, help="simulated HDF5 set (preset's if omitted)"),
    seed: int | None = typer.Option(None, help="seed of batches, augmentation and noise"),
    name: str | None = typer.Option(None, help="run name (runs/<name>)"),
    out_dir: Path | None = typer.Option(None, help="folder of run directories"),
    max_minutes: float | None = typer.Option(None, help="wall-time budget"),
    max_steps: int | None = typer.Option(None, help="step budget"),
    batch: int | None = typer.Option(None, help="batch per process"),
    patch: int | None = typer.Option(None, help="patch side in pixels"),
    threads: int | None = typer.Option(None, help="torch CPU threads per process"),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda if available)"),
    resume: bool = typer.Option(True, help="continue from <run>/last.pt when it exists"),
    init_from: str | None = typer.Option(
        None, "--init-from", help="start a fresh run from this engine's weights (engines/<name> or a path)"
    ),
    lr_schedule: str | None = typer.Option(
        None, help="plateau (halve on a validation plateau) | cosine (decay over the step/time budget)"
    ),
    engine_dir: Path | None = typer.Option(None, help="export the best checkpoint here afterwards"),
    evaluate_test: bool = typer.Option(True, help="with --engine-dir: put test metrics in the card"),
) -> None:
    """Train a denoiser on simulated data (works under `torchrun --nproc_per_node=N`)."""
    import os

    from training.train.loop import train as run_training
    from training.train.presets import preset_config

    cfg = preset_config(
        preset,
        data=data and str(data),
        seed=seed,
        name=name,
        out_dir=out_dir and str(out_dir),
        max_minutes=max_minutes,
        max_steps=max_steps,
        batch=batch,
        threads=threads,
        device=device,
        augment={"patch": patch} if patch else None,
        init_from=init_from,
        lr_schedule=lr_schedule,
    )
    summary = run_training(cfg, resume=resume)
    if engine_dir is not None and int(os.environ.get("RANK", 0)) == 0:
        _export(cfg.run_dir, engine_dir, evaluate_test, cfg.data)
    typer.echo(f"best val PSNR {summary['best_val_psnr']:.2f} dB after {summary['steps']} steps")


def _export(run_dir: Path, engine_dir: Path, evaluate_test: bool, data: Path) -> None:
    from training.evaluate.tables import EvalConfig, evaluate_fov
    from training.train.export import export_run, set_metrics

    card = export_run(run_dir, engine_dir)
    typer.echo(f"wrote {engine_dir} ({card.parameters} parameters, FoV {card.field_of_view} px)")
    if evaluate_test:
        res = evaluate_fov(EvalConfig(data=data), {card.name: engine_dir})
        row = res["rows"][0]
        set_metrics(
            engine_dir,
            {
                "split": "test",
                "data": str(data),
                "n_images": row["n_images"],
                "noise_seed": res["noise_seed"],
                "detection": res["detection"],
                **row["metrics"],
            },
        )
        typer.echo(f"test metrics written to {engine_dir}/card.json")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="runs/<name> of a training run"),
    engine_dir: Path = typer.Option(..., help="engine directory to write"),
    data: Path | None = typer.Option(None, help="data set whose test split goes into the card (run's)"),
    evaluate_test: bool = typer.Option(True, help="evaluate on the test split and record it in the card"),
) -> None:
    """Export a run's best checkpoint as an engine (model.pt, verified model.onnx, card.json).

    Works on a finished run and on one still going or stopped (counters from its last.pt).
    """
    if data is None:
        from training.train.config import TrainConfig

        data = TrainConfig.model_validate_json((run_dir / "config.json").read_text()).data
    _export(run_dir, engine_dir, evaluate_test, data)


@app.command()
def evaluate(
    data: Path = typer.Option(Path("data/mini.h5"), help="simulated HDF5 set"),
    engine: list[str] | None = typer.Option(None, help="LABEL=ENGINE_DIR (repeatable); default: Table 5.1's"),
    max_test_images: int | None = typer.Option(None, help="evenly spaced subset of the test split"),
    bm3d_test_images: int | None = typer.Option(40, help="test images for the slow BM3D baseline"),
    seed: int = typer.Option(2024, help="seed of the test noise"),
    out_dir: Path = typer.Option(Path("benchmarks/results"), help="where table_5_1.json/.md go"),
    reuse_classical: bool = typer.Option(
        False, help="reuse classical rows of an existing table_5_1.json made with the same settings"
    ),
    classical_only: bool = typer.Option(False, help="skip the SBD engines"),
    figure: bool = typer.Option(True, help="also write table_5_1.png (Fig. 5.2 analogue: 2 test frames)"),
) -> None:
    """Table 5.1: classical baselines (tuned on val) and SBD engines on the test split."""
    import json
    import sys

    from training.evaluate.markdown import table_5_1_markdown, write_markdown
    from training.evaluate.tables import EvalConfig, evaluate_table_5_1, write_json

    cfg = EvalConfig(
        data=data,
        seed=seed,
        max_test_images=max_test_images,
        bm3d_test_images=bm3d_test_images,
        out_dir=out_dir,
    )
    command = " ".join(["sbd-train", *sys.argv[1:]])
    cache_file = out_dir / "table_5_1.json"
    cached = json.loads(cache_file.read_text()) if reuse_classical and cache_file.is_file() else None
    engines = {} if classical_only else _engine_options(engine, TABLE_5_1_ENGINES)
    res = evaluate_table_5_1(cfg, engines, cached=cached)
    res["command"] = command
    write_json(res, out_dir / "table_5_1.json")
    write_markdown(table_5_1_markdown(res, command), out_dir / "table_5_1.md")
    typer.echo(f"wrote {out_dir}/table_5_1.json and .md")
    if figure:
        from training.evaluate.figure import write_comparison_figure

        png = write_comparison_figure(out_dir / "table_5_1.json", data, out_dir / "table_5_1.png")
        typer.echo(f"wrote {png}")


@app.command("evaluate-detector")
def evaluate_detector(
    test: Path = typer.Option(Path("data/paper-test60pm.h5"), help="test split at the detector sampling"),
    val: Path = typer.Option(Path("data/paper.h5"), help="training set (its validation split tunes)"),
    engine: list[str] | None = typer.Option(None, help="LABEL=ENGINE_DIR (repeatable); default: shipped"),
    max_test_images: int = typer.Option(24, help="evenly spaced test frames (1024^2 each)"),
    slow_test_images: int = typer.Option(6, help="test frames for the slow NLM / BM3D baselines"),
    out_dir: Path = typer.Option(Path("benchmarks/results"), help="where table_5_1_<world>.* go"),
    world: str = typer.Option(
        "paper", help="names the output: table_5_1_<world> (`detector`: the earlier mostly-vacuum world)"
    ),
) -> None:
    """Table 5.1 at the detector's sampling (0.060 A, 0.45 counts/px), both metrics, binning included."""
    import sys

    from sbd_stream.engines.card import DEFAULT_ENGINE, default_engine_root
    from training.evaluate.detector import DetectorEvalConfig, evaluate_table_5_1_detector
    from training.evaluate.markdown import table_5_1_detector_markdown, write_markdown
    from training.evaluate.tables import write_json

    cfg = DetectorEvalConfig(
        test=test,
        val=val,
        max_test_images=max_test_images,
        slow_test_images=slow_test_images,
        out_dir=out_dir,
    )
    default = {f"SBD, {DEFAULT_ENGINE} (shipped)": default_engine_root() / DEFAULT_ENGINE}
    res = evaluate_table_5_1_detector(cfg, _engine_options(engine, default))
    res["command"] = " ".join(["sbd-train", *sys.argv[1:]])
    write_json(res, out_dir / f"table_5_1_{world}.json")
    write_markdown(table_5_1_detector_markdown(res), out_dir / f"table_5_1_{world}.md")
    typer.echo(f"wrote {out_dir}/table_5_1_{world}.json and .md")


@app.command("evaluate-images")
def evaluate_images_cmd(
    folder: Path = typer.Argument(..., help="clean images: TIFF / MRC / NPY / HDF5 (2-D, or stacks)"),
    pixel_size: float = typer.Option(..., help="A per pixel of the images as stored"),
    resize: float = typer.Option(1.0, help="resample by this factor first (the paper's test code: 0.785)"),
    counts_per_px: float = typer.Option(0.45, help="vacuum counts per detector pixel per frame"),
    draws: int = typer.Option(2, help="Poisson frames per image"),
    engine: str = typer.Option(None, help="engine name or directory (default: the shipped default)"),
    backend: str = typer.Option("auto", help="auto | onnxruntime | torch | tensorrt"),
    out_dir: Path = typer.Option(Path("benchmarks/results/images"), help="JSON, markdown and figure"),
) -> None:
    """Someone else's clean simulations through the product's denoise path: per-region table + figure."""
    import sys

    from training.evaluate.images import ImageEvalConfig, evaluate_images, markdown, write_figure
    from training.evaluate.markdown import write_markdown
    from training.evaluate.tables import write_json

    cfg = ImageEvalConfig(
        folder=folder,
        pixel_size_A=pixel_size,
        resize=resize,
        counts_per_px=counts_per_px,
        draws=draws,
        engine=engine,
        backend=backend,
        out_dir=out_dir,
    )
    res = evaluate_images(cfg)
    examples = res.pop("_examples")
    res["command"] = " ".join(["sbd-train", *sys.argv[1:]])
    write_json(res, out_dir / "evaluate_images.json")
    write_markdown(markdown(res, res["command"]), out_dir / "evaluate_images.md")
    names = [r["image"] for r in res["rows"] if r["draw"] == 0]
    png = write_figure(examples, names, out_dir / "evaluate_images.png")
    typer.echo(f"wrote {out_dir}/evaluate_images.json, .md and {png.name}")


@app.command("dose-curve")
def dose_curve(
    test: Path = typer.Option(Path("data/paper-test60pm.h5"), help="test split at the detector sampling"),
    engine: Path = typer.Option(None, help="engine directory (default: the shipped one)"),
    max_test_images: int = typer.Option(12, help="evenly spaced test frames"),
    out_dir: Path = typer.Option(Path("benchmarks/results"), help="where dose_curve_<world>.json goes"),
    world: str = typer.Option("paper", help="names the output file (`detector`: the earlier world)"),
) -> None:
    """PSNR of an engine against dose, 0.25-4x the nominal 125 e/A^2, at the detector's sampling."""
    import sys

    from sbd_stream.engines.card import DEFAULT_ENGINE, default_engine_root
    from training.evaluate.detector import DetectorEvalConfig, psnr_vs_dose
    from training.evaluate.tables import write_json

    cfg = DetectorEvalConfig(test=test, max_test_images=max_test_images, out_dir=out_dir)
    res = psnr_vs_dose(cfg, engine or default_engine_root() / DEFAULT_ENGINE)
    res["command"] = " ".join(["sbd-train", *sys.argv[1:]])
    write_json(res, out_dir / f"dose_curve_{world}.json")
    typer.echo(f"wrote {out_dir}/dose_curve_{world}.json")


@app.command("fov-study")
def fov_study(
    data: Path = typer.Option(Path("data/mini.h5"), help="simulated HDF5 set"),
    engine: list[str] | None = typer.Option(None, help="LABEL=ENGINE_DIR (repeatable); default: fov*"),
    train_first: bool = typer.Option(False, "--train", help="train the fov53/fov245/fov1013 presets first"),
    max_minutes: float | None = typer.Option(None, help="with --train: wall budget per model"),
    max_test_images: int | None = typer.Option(None, help="evenly spaced subset of the test split"),
    seed: int = typer.Option(2024, help="seed of the test noise"),
    out_dir: Path = typer.Option(Path("benchmarks/results"), help="where table_3_1.json/.md go"),
) -> None:
    """Table 3.1(a): UNets of ~equal parameter count and FoV 53 / 245 / 1013 px on the test split."""
    import sys

    from training.evaluate.markdown import table_3_1_markdown, write_markdown
    from training.evaluate.tables import EvalConfig, evaluate_fov, write_json

    if train_first:
        from training.train.export import export_run
        from training.train.loop import train as run_training
        from training.train.presets import preset_config

        for preset in ("fov53", "fov245", "fov1013"):
            cfg = preset_config(preset, data=str(data), max_minutes=max_minutes)
            run_training(cfg)
            export_run(cfg.run_dir, BENCH_ENGINES / cfg.name)
    cfg = EvalConfig(data=data, seed=seed, max_test_images=max_test_images, out_dir=out_dir)
    command = " ".join(["sbd-train", *sys.argv[1:]])
    res = evaluate_fov(cfg, _engine_options(engine, FOV_ENGINES))
    res["command"] = command
    write_json(res, out_dir / "table_3_1.json")
    write_markdown(table_3_1_markdown(res, command), out_dir / "table_3_1.md")
    typer.echo(f"wrote {out_dir}/table_3_1.json and .md")


@app.command("fov-study-detector")
def fov_study_detector(
    test: Path = typer.Option(Path("data/detector-test60pm.h5"), help="test split at the detector sampling"),
    val: Path = typer.Option(Path("data/detector.h5"), help="training set (its validation split tunes)"),
    engine: list[str] | None = typer.Option(
        None, help="LABEL=ENGINE_DIR (repeatable); default: fov*-detector"
    ),
    train_first: bool = typer.Option(
        False, "--train", help="train the fov*-detector presets whose engine is missing first"
    ),
    max_test_images: int = typer.Option(24, help="evenly spaced test frames (1024^2 each)"),
    out_dir: Path = typer.Option(Path("benchmarks/results"), help="where table_3_1_detector.* go"),
) -> None:
    """Table 3.1 at the detector's sampling: networks with 3 / 5 / 13 / 59 A of reach at equal budgets."""
    import sys

    from training.evaluate.detector import DetectorEvalConfig
    from training.evaluate.fov_detector import (
        FOV_DETECTOR_PRESETS,
        evaluate_fov_detector,
        table_3_1_detector_markdown,
    )
    from training.evaluate.markdown import write_markdown
    from training.evaluate.tables import write_json
    from training.train.presets import preset_config

    default = {}
    for preset in FOV_DETECTOR_PRESETS:
        cfg = preset_config(preset, data=str(val))
        if train_first and not (BENCH_ENGINES / cfg.name / "card.json").is_file():
            from training.train.export import export_run
            from training.train.loop import train as run_training

            run_training(cfg)
            export_run(cfg.run_dir, BENCH_ENGINES / cfg.name)
        label = (
            f"UNet {cfg.scales} scale{'s' if cfg.scales > 1 else ''}"
            if cfg.architecture.value == "unet"
            else f"{cfg.architecture.value} {cfg.depth} layers"
        )
        default[label] = BENCH_ENGINES / cfg.name
    ecfg = DetectorEvalConfig(test=test, val=val, max_test_images=max_test_images, out_dir=out_dir)
    res = evaluate_fov_detector(ecfg, _engine_options(engine, default))
    command = " ".join(["sbd-train", *sys.argv[1:]])
    res["command"] = command
    write_json(res, out_dir / "table_3_1_detector.json")
    write_markdown(table_3_1_detector_markdown(res, command), out_dir / "table_3_1_detector.md")
    typer.echo(f"wrote {out_dir}/table_3_1_detector.json and .md")


@app.command("build-engine")
def build_engine(
    engine_dir: Path = typer.Argument(Path("engines/sbd-unet4-default"), help="engine directory"),
    precision: str = typer.Option("fp16", help="fp16 | fp32"),
    tile: int | None = typer.Option(None, help="tile side (default: the card's)"),
    max_batch: int = typer.Option(16, help="largest tile batch the plan accepts"),
) -> None:
    """Compile the engine's TensorRT plan for this machine's GPU (cached under ~/.cache/sbd-stream)."""
    from training.train.export import NoGPU
    from training.train.export import build_engine as build

    try:
        plan = build(engine_dir, precision, tile, max_batch)
    except NoGPU as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"TensorRT plan: {plan}")


@app.command("gpu-recipe")
def gpu_recipe(
    steps: str = typer.Option("simulate,train,export,tensorrt,evaluate", help="subset, comma-separated"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and devices; run nothing"),
    data: Path = typer.Option(Path("data/detector-gpu.h5"), help="training set (simulated if incomplete)"),
    test: Path | None = typer.Option(None, help="test split at 0.060 A (default: the simulation's)"),
    sim_preset: str = typer.Option("detector", help="simulation preset"),
    images: int | None = typer.Option(None, min=1, help="scale the simulated set to ~this many images"),
    workers: int | None = typer.Option(None, min=1, help="Dask workers (default: all cores)"),
    train_preset: str = typer.Option("detector", help="training preset"),
    model: str | None = typer.Option(None, help="detector | wide | paper (default: init's, else wide)"),
    scales: int | None = typer.Option(None, min=1),
    channels: int | None = typer.Option(None, min=1),
    name: str | None = typer.Option(None, help="run name (default sbd-unet<S>x<C>-gpu)"),
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
    engine_dir: Path | None = typer.Option(None, help="engine to write (default engines/<name>)"),
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

    opts = {k: v for k, v in locals().items() if k not in ("steps", "dry_run")}
    try:
        cfg = RecipeConfig(steps=[s.strip() for s in steps.split(",") if s.strip()], **opts)
        if dry_run:
            typer.echo(format_plan(describe_plan(cfg)))
            return
        summary = run_recipe(cfg, log=typer.echo)
    except RecipeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if not summary["ok"]:
        raise typer.Exit(1)


# --- end training and evaluation ---------------------------------------------------------------------


# ==== BEGIN demo samples ====
@app.command("demo-samples")
def demo_samples(
    data: Path = typer.Option(Path("data/mini.h5"), help="Simulated dataset to take test images from"),
    n: int = typer.Option(12, min=1, help="How many clean images"),
) -> None:
    """Bundle a few held-out clean images for `sbd-stream demo` (sbd_stream/samples/)."""
    from training.sim.samples import write_demo_samples

    typer.echo(f"wrote {write_demo_samples(data, n=n)}")


# ==== END demo samples ====


if __name__ == "__main__":
    app()
