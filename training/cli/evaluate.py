"""Evaluation commands: Table 5.1 / 3.1 at the working pixel and at the detector's sampling, the dose
curve, someone else's images, and the likelihood study."""

from __future__ import annotations

from pathlib import Path

import typer

from sbd_stream.cli.app import fail
from sbd_stream.invocation import invocation
from training.cli.checks import need_dataset, need_engine, need_engines, need_test_split
from training.cli.common import BENCH_ENGINES, FOV_ENGINES, TABLE_5_1_ENGINES, engine_options
from training.cli.errors import write_stderr_line


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

    need_dataset(data, "--data")
    if denoiser == "engine" and engine is None:
        fail("--engine: --denoiser engine (the default) needs an engine directory or name")
    if engine is not None and denoiser == "engine":
        need_engine(engine, "--engine")
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

    from training.evaluate.markdown import table_5_1_markdown, write_markdown
    from training.evaluate.tables import EvalConfig, evaluate_table_5_1, write_json

    cfg = EvalConfig(
        data=data,
        seed=seed,
        max_test_images=max_test_images,
        bm3d_test_images=bm3d_test_images,
        out_dir=out_dir,
    )
    command = invocation("sbd-train")
    cache_file = out_dir / "table_5_1.json"
    cached = json.loads(cache_file.read_text()) if reuse_classical and cache_file.is_file() else None
    need_dataset(data, "--data")
    engines = {} if classical_only else engine_options(engine, TABLE_5_1_ENGINES)
    need_engines(engines)
    res = evaluate_table_5_1(cfg, engines, log=typer.echo, cached=cached)
    res["command"] = command
    write_json(res, out_dir / "table_5_1.json")
    write_markdown(table_5_1_markdown(res, command), out_dir / "table_5_1.md")
    typer.echo(f"wrote {out_dir}/table_5_1.json and .md")
    if figure:
        from training.evaluate.figure import write_comparison_figure

        png = write_comparison_figure(out_dir / "table_5_1.json", data, out_dir / "table_5_1.png")
        typer.echo(f"wrote {png}")


def evaluate_detector(
    test: Path = typer.Option(Path("data/paper-test60pm.h5"), help="test split at the detector sampling"),
    val: Path = typer.Option(Path("data/paper.h5"), help="training set (its validation split tunes)"),
    engine: list[str] | None = typer.Option(None, help="LABEL=ENGINE_DIR (repeatable); default: shipped"),
    max_test_images: int = typer.Option(24, help="evenly spaced test frames (1024^2 each); 0: all"),
    slow_test_images: int = typer.Option(6, help="test frames for the slow NLM / BM3D baselines"),
    baseline: list[str] | None = typer.Option(
        None, help="classical rows to run (repeatable, e.g. 'Low-pass filter'); default: all five"
    ),
    out_dir: Path = typer.Option(Path("benchmarks/results"), help="where table_5_1_<world>.* go"),
    world: str = typer.Option(
        "paper", help="names the output: table_5_1_<world> (`detector`: the earlier mostly-vacuum world)"
    ),
) -> None:
    """Table 5.1 at the detector's sampling (0.060 A, 0.45 counts/px), both metrics, binning included."""

    from sbd_stream.engines.card import DEFAULT_ENGINE, default_engine_root
    from training.evaluate.detector import DetectorEvalConfig, evaluate_table_5_1_detector
    from training.evaluate.markdown import table_5_1_detector_markdown, write_markdown
    from training.evaluate.tables import write_json

    cfg = DetectorEvalConfig(
        test=test,
        val=val,
        max_test_images=max_test_images,
        slow_test_images=slow_test_images,
        baselines=baseline or None,
        out_dir=out_dir,
    )
    need_test_split(test)
    need_dataset(val, "--val")
    default = {f"SBD, {DEFAULT_ENGINE} (shipped)": default_engine_root() / DEFAULT_ENGINE}
    engines = engine_options(engine, default)
    need_engines(engines)
    res = evaluate_table_5_1_detector(cfg, engines, log=typer.echo)
    res["command"] = invocation("sbd-train")
    write_json(res, out_dir / f"table_5_1_{world}.json")
    write_markdown(table_5_1_detector_markdown(res), out_dir / f"table_5_1_{world}.md")
    typer.echo(f"wrote {out_dir}/table_5_1_{world}.json and .md")


IMAGE_OPTIONS = {
    "pixel_size_A": "--pixel-size",
    "resize": "--resize",
    "counts_per_px": "--counts-per-px",
    "draws": "--draws",
    "orientations": "--orientations",
    "dataset": "--dataset",
    "engine": "--engine",
    "backend": "--backend",
    "folder": "FOLDER",
}
"""Config field -> the option that sets it, to name the option in a one-line error."""


def evaluate_images_cmd(
    folder: Path = typer.Argument(
        ..., help="clean images: TIFF / MRC / NPY / HDF5 / EMD / DM3 / DM4, *.zarr folders (2-D, or stacks)"
    ),
    pixel_size: float = typer.Option(..., help="A per pixel of the images as stored"),
    resize: float = typer.Option(1.0, help="resample by this factor first (the paper's test code: 0.785)"),
    counts_per_px: float = typer.Option(
        0.45,
        help="vacuum counts per DETECTOR pixel (--pixel-size / --resize) per frame, not per area: 0.45 is "
        "the paper's 125 e/A^2 at 0.060 A; at 0.24 A the same dose is 7.2. A dose outside the engine's "
        "trained range is warned about and recorded (dose_in_range)",
    ),
    draws: int = typer.Option(2, help="Poisson frames per image (each seeded by the image's name)"),
    dataset: str | None = typer.Option(
        None,
        help="HDF5 files: the dataset holding the clean images (default: every float image dataset); "
        "also a zarr group's array or a Velox signal, as `sbd-stream denoise --dataset`",
    ),
    engine: str = typer.Option(None, help="engine name or directory (default: the shipped default)"),
    backend: str = typer.Option("auto", help="auto | onnxruntime | torch | tensorrt"),
    orientations: int = typer.Option(
        8, help="engine averaged over 1, 2, 4 or 8 orientations (8: offline; a flips-only engine: 4 flips)"
    ),
    out_dir: Path = typer.Option(Path("benchmarks/results/images"), help="JSON, markdown and figure"),
) -> None:
    """Someone else's clean simulations through the product's denoise path: per-region table + figure.

    Paper PSNR is scored at the paper's 0.45 counts per vacuum pixel whatever --counts-per-px is (clean
    and estimate rescaled). Unreadable files, and sbd-stream recordings or denoise outputs, are skipped
    with a warning and listed under `skipped` in the JSON. A dose outside the engine's trained range
    gets the warning `sbd-stream denoise` gives."""
    from pydantic import ValidationError

    from sbd_stream.cli.app import fail, settings_error
    from sbd_stream.compute.binning import SamplingError
    from sbd_stream.engines import EngineKind
    from sbd_stream.engines.base import EngineUnavailable
    from sbd_stream.engines.card import ArtefactError
    from training.evaluate.clean_images import NoCleanImages
    from training.evaluate.images import ImageEvalConfig, evaluate_images, write_strict_json, written_whole
    from training.evaluate.images_report import markdown, write_figure
    from training.evaluate.markdown import write_markdown

    try:
        cfg = ImageEvalConfig(
            folder=folder,
            pixel_size_A=pixel_size,
            resize=resize,
            counts_per_px=counts_per_px,
            draws=draws,
            dataset=dataset,
            engine=engine,
            backend=backend,
            orientations=orientations,
            out_dir=out_dir,
        )
    except ValidationError as e:
        fail(settings_error(e, IMAGE_OPTIONS))
    if backend not in {k.value for k in EngineKind}:
        fail(f"--backend: choose from {', '.join(k.value for k in EngineKind)} (got {backend!r})")
    if not folder.is_dir():
        fail(f"FOLDER {folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    if out_dir.exists() and not out_dir.is_dir():
        fail(f"--out-dir {out_dir}: a file, not a folder")
    try:
        # a warning stderr cannot take (2>/dev/full) is dropped: its OSError ended a run that succeeded in 2
        res = evaluate_images(cfg, log=typer.echo, warn=lambda m: write_stderr_line(f"warning: {m}"))
    except NoCleanImages as e:
        fail(str(e))
    except SamplingError as e:
        fail(f"--pixel-size / --resize: {e} (got {pixel_size} / {resize})")
    except ArtefactError as e:
        fail(f"--engine: {e}")
    except EngineUnavailable as e:
        fail(f"--backend {backend}: {e}")
    examples = res.pop("_examples")
    res["command"] = invocation("sbd-train")
    try:
        write_strict_json(res, out_dir / "evaluate_images.json")
        with written_whole(out_dir / "evaluate_images.md") as tmp:  # a failed write keeps the previous one
            write_markdown(markdown(res, res["command"]), tmp)
        names = [r["image"] for r in res["rows"] if r["draw"] == 0]
        png = write_figure(examples, names, out_dir / "evaluate_images.png")
    except OSError as e:
        fail(f"--out-dir {out_dir}: {e}")
    skipped = f"; {len(res['skipped'])} skipped" if res["skipped"] else ""
    typer.echo(f"wrote {out_dir}/evaluate_images.json, .md and {png.name}{skipped}")


def dose_curve(
    world: str = typer.Option(
        "paper", help="names the output dose_curve_<world>.json and the default data (`detector`: earlier)"
    ),
    test: Path | None = typer.Option(
        None, help="test split at the detector sampling; default data/<world>-test60pm.h5"
    ),
    val: Path | None = typer.Option(
        None, help="training set whose validation models tune the low-pass; default data/<world>.h5"
    ),
    engine: Path = typer.Option(None, help="engine directory (default: the shipped one)"),
    max_test_images: int = typer.Option(12, help="evenly spaced test frames"),
    out_dir: Path = typer.Option(Path("benchmarks/results"), help="where dose_curve_<world>.json goes"),
) -> None:
    """PSNR of an engine against dose, 0.25-4x the nominal 125 e/A^2, at the detector's sampling: whole
    frame, per region and surface F1, beside the low-pass tuned on the validation models at each dose."""

    from sbd_stream.engines.card import DEFAULT_ENGINE, default_engine_root
    from training.evaluate.detector import DetectorEvalConfig
    from training.evaluate.dose_curve import psnr_vs_dose
    from training.evaluate.tables import write_json

    cfg = DetectorEvalConfig(
        test=test or Path(f"data/{world}-test60pm.h5"),
        val=val or Path(f"data/{world}.h5"),
        max_test_images=max_test_images,
        out_dir=out_dir,
    )
    need_test_split(cfg.test)
    need_dataset(cfg.val, "--val")
    engine_dir = need_engine(engine or default_engine_root() / DEFAULT_ENGINE, "--engine")
    res = psnr_vs_dose(cfg, engine_dir, log=typer.echo)
    res["command"] = invocation("sbd-train")
    write_json(res, out_dir / f"dose_curve_{world}.json")
    typer.echo(f"wrote {out_dir}/dose_curve_{world}.json")


OVERWRITE_HELP = (
    "with --train: write an engine folder under benchmarks/engines even if it holds other files "
    "(as export's --overwrite); an earlier export of the same engine is replaced without it"
)


def _check_engine_dirs(folders: list[Path], overwrite: bool) -> None:
    """Export's rule (check_engine_dir) for each folder --train will write, before any training starts:
    fov-study wrote into them after hours of training, whatever they held (audit 34)."""
    from training.train.export import EngineDirTaken, check_engine_dir

    lines = []
    for folder in folders:
        try:
            lines.append(
                check_engine_dir(folder, folder.name, overwrite, "--train's folder", "move its files away")
            )
        except EngineDirTaken as e:
            fail(str(e))
    for line in lines:
        if line is not None:
            typer.echo(f"after training: {line}")


def fov_study(
    data: Path = typer.Option(Path("data/mini.h5"), help="simulated HDF5 set"),
    engine: list[str] | None = typer.Option(None, help="LABEL=ENGINE_DIR (repeatable); default: fov*"),
    train_first: bool = typer.Option(False, "--train", help="train the fov53/fov245/fov1013 presets first"),
    max_minutes: float | None = typer.Option(None, help="with --train: wall budget per model"),
    max_test_images: int | None = typer.Option(None, help="evenly spaced subset of the test split"),
    seed: int = typer.Option(2024, help="seed of the test noise"),
    out_dir: Path = typer.Option(Path("benchmarks/results"), help="where table_3_1.json/.md go"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Table 3.1(a): UNets of ~equal parameter count and FoV 53 / 245 / 1013 px on the test split."""

    from training.evaluate.markdown import table_3_1_markdown, write_markdown
    from training.evaluate.tables import EvalConfig, evaluate_fov, write_json

    need_dataset(data, "--data")
    if train_first:
        from training.train.export import export_run
        from training.train.loop import train as run_training
        from training.train.presets import preset_config

        runs = [
            preset_config(p, data=str(data), max_minutes=max_minutes) for p in ("fov53", "fov245", "fov1013")
        ]
        _check_engine_dirs([BENCH_ENGINES / tc.name for tc in runs], overwrite)  # before any training
        for tc in runs:
            run_training(tc)
            export_run(tc.run_dir, BENCH_ENGINES / tc.name)
    cfg = EvalConfig(data=data, seed=seed, max_test_images=max_test_images, out_dir=out_dir)
    command = invocation("sbd-train")
    engines = engine_options(engine, FOV_ENGINES)
    need_engines(engines)
    res = evaluate_fov(cfg, engines, log=typer.echo)
    res["command"] = command
    write_json(res, out_dir / "table_3_1.json")
    write_markdown(table_3_1_markdown(res, command), out_dir / "table_3_1.md")
    typer.echo(f"wrote {out_dir}/table_3_1.json and .md")


def fov_study_detector(
    world: str = typer.Option(
        "paper",
        help="paper | detector (the earlier mostly-vacuum world): presets fov*-<world>, output "
        "table_3_1_<world>.*",
    ),
    test: Path | None = typer.Option(
        None, help="test split at the detector sampling; default data/<world>-test60pm.h5"
    ),
    val: Path | None = typer.Option(
        None, help="training set (its validation split tunes); default data/<world>.h5"
    ),
    engine: list[str] | None = typer.Option(
        None, help="LABEL=ENGINE_DIR (repeatable); default: the fov*-<world> engines"
    ),
    train_first: bool = typer.Option(
        False, "--train", help="train the fov*-<world> presets whose engine is missing first"
    ),
    max_test_images: int = typer.Option(24, help="evenly spaced test frames at the detector's sampling"),
    out_dir: Path = typer.Option(Path("benchmarks/results"), help="where table_3_1_<world>.* go"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Table 3.1 at the detector's sampling: networks with 3 / 5 / 13 / 59 A of reach at equal budgets,
    beside the low-pass tuned on the validation models; per region on the paper's world."""

    from training.evaluate.detector import DetectorEvalConfig
    from training.evaluate.fov_detector import FOV_PRESETS, evaluate_fov_detector, table_3_1_detector_markdown
    from training.evaluate.markdown import write_markdown
    from training.evaluate.tables import write_json
    from training.train.presets import preset_config

    if world not in FOV_PRESETS:
        raise typer.BadParameter(f"choose from {', '.join(FOV_PRESETS)}", param_hint="--world")
    test = test or Path(f"data/{world}-test60pm.h5")
    val = val or Path(f"data/{world}.h5")
    need_test_split(test)
    need_dataset(val, "--val")
    cfgs = [preset_config(preset, data=str(val)) for preset in FOV_PRESETS[world]]
    missing = [BENCH_ENGINES / c.name for c in cfgs if not (BENCH_ENGINES / c.name / "card.json").is_file()]
    if train_first:
        _check_engine_dirs(missing, overwrite)  # before any training
    default = {}
    for cfg in cfgs:
        if train_first and BENCH_ENGINES / cfg.name in missing:
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
    engines = engine_options(engine, default)
    need_engines(engines)
    res = evaluate_fov_detector(ecfg, engines, log=typer.echo)
    command = invocation("sbd-train")
    res["command"] = command
    res["world"] = world
    write_json(res, out_dir / f"table_3_1_{world}.json")
    write_markdown(table_3_1_detector_markdown(res, command), out_dir / f"table_3_1_{world}.md")
    typer.echo(f"wrote {out_dir}/table_3_1_{world}.json and .md")
