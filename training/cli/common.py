"""What several ``sbd-train`` commands share: the default engines of the tables and ``LABEL=DIR`` options,
and exporting a run with its test metrics (``train --engine-dir`` and ``export``)."""

from __future__ import annotations

from pathlib import Path

import typer

from training.cli.errors import write_stderr_line

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


def engine_options(pairs: list[str] | None, default: dict[str, Path]) -> dict[str, Path]:
    if not pairs:
        found = {k: v for k, v in default.items() if (v / "card.json").is_file()}
        for k, v in default.items():
            if k not in found:
                # dropped where stderr cannot take it: the table is still made (errors.write_stderr_line)
                write_stderr_line(f"warning: {k}: no engine at {v}; row left out (train it first)")
        return found
    out = {}
    for p in pairs:
        label, _, path = p.rpartition("=")
        out[label or Path(path).name] = Path(path)
    return out


def export_engine(run_dir: Path, engine_dir: Path, evaluate_test: bool, data: Path) -> None:
    from training.evaluate.tables import EvalConfig, evaluate_fov
    from training.train.export import export_run, set_metrics

    card = export_run(run_dir, engine_dir, data=data)
    typer.echo(f"wrote {engine_dir} ({card.parameters} parameters, FoV {card.field_of_view} px)")
    if evaluate_test:
        from training.sim.dataset import EmptySplit

        try:
            res = evaluate_fov(EvalConfig(data=data), {card.name: engine_dir})
        except EmptySplit as e:
            # a run on a file still being simulated: the engine is written and usable, only its test
            # metrics wait for the test models (it ended in an IndexError traceback, status 1)
            write_stderr_line(
                f"warning: {engine_dir}/card.json has no test metrics: {e}; once it has test images: "
                f"sbd-train export {run_dir} --engine-dir {engine_dir} --data {data}"
            )
            return
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
