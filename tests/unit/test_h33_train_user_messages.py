"""What a user of docs/training.md and docs/simulation.md is told when something is wrong (session 33).

Exporting a run that never validated says why and what to do, and blames no HDF5 file.

Found (session 33, a user of docs/training.md): Ctrl-C in ``sbd-train train`` before the first validation
(the CPU presets validate every 250 steps), then ``sbd-train export runs/<name> --engine-dir E`` (docs:
export works "for a run that is still going or was stopped") ended in ``error: runs/<name>/best.pt
missing: the run never validated (a damaged or truncated HDF5 file?)``: the missing checkpoint was a
``FileNotFoundError`` without a file name, which ``training.cli.errors.one_line`` took for h5py's. The
same hint was glued to ``gpu-recipe``'s own "no training set (run the simulate step)" lines.
"""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from training.cli import app
from training.cli.errors import one_line
from training.train.presets import preset_config


def test_export_of_a_run_that_never_validated_is_one_actionable_line(tmp_path: Path) -> None:
    cfg = preset_config("tiny", data=str(tmp_path / "tiny.h5"), out_dir=str(tmp_path / "runs"), name="r")
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text(cfg.model_dump_json())
    (run / "summary.json").write_text("{}")
    res = CliRunner().invoke(
        app,
        ["export", str(run), "--engine-dir", str(tmp_path / "e"), "--no-evaluate-test"],
        env={"SBD_TRACEBACK": ""},
    )
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert "HDF5" not in errors[0], errors[0]
    assert f"{run / 'best.pt'} missing: the run stopped before its first validation" in errors[0]
    assert "--max-steps or --max-minutes" in errors[0]
    assert not (tmp_path / "e").exists()


def test_a_missing_file_named_by_our_own_message_is_not_called_a_damaged_hdf5_file() -> None:
    e = FileNotFoundError("data/paper.h5: no training set (run the simulate step)")
    assert one_line(e) == "data/paper.h5: no training set (run the simulate step)"
    # h5py's own messages keep their reading
    assert one_line(FileNotFoundError("Unable to open file (unable to open file: name = 'x.h5')")) == (
        "x.h5: no such file"
    )
    assert one_line(OSError("Unable to synchronously open file (file signature not found)")).endswith(
        "(a damaged or truncated HDF5 file?)"
    )


def test_contact_sheet_refuses_an_out_without_an_image_format_naming_the_option(tmp_path: Path) -> None:
    """``contact-sheet --out sheet`` (or a folder) ended in ``error: unknown file extension:`` (matplotlib's
    words, naming neither the option nor the path) after reading the data set."""
    from training.sim.synthetic_data import write_synthetic

    data = write_synthetic(tmp_path / "a.h5", n_structures=3, per_structure=1, size=32)
    for out, why in ((tmp_path / "sheet", "no file extension"), (tmp_path, "a folder")):
        res = CliRunner().invoke(
            app, ["contact-sheet", "--data", str(data), "--out", str(out)], env={"SBD_TRACEBACK": ""}
        )
        assert res.exit_code == 2, res.output
        assert res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
        assert res.stderr.startswith(f"error: --out {out}: {why}"), res.stderr


def test_init_from_another_network_names_both_in_words() -> None:
    """``--init-from`` an engine of another shape said ``its network [<Architecture.unet: 'unet'>, 3, 16, 2]
    differs from this run's [<Architecture.unet: 'unet'>, 4, 16, 1]``: Python reprs, numbers unnamed."""
    import pytest

    from training.train.network import init_weights

    cfg = preset_config("default", init_from="sbd-unet3s2-paper-twins")
    with pytest.raises(ValueError) as e:
        init_weights(cfg)
    assert str(e.value).endswith(
        "its network (unet, 3 scales, 16 channels, space_to_depth 2) differs from this run's "
        "(unet, 4 scales, 16 channels, space_to_depth 1)"
    ), e.value


def test_evaluate_images_markdown_states_the_geometry_in_words() -> None:
    """The ``evaluate_images.md`` header printed the geometry as a Python dict's repr
    (``{'pixel_size_A': 0.1553, 'dose_e_per_A2': 18.65819391170694, ...}``) and "over 1 orientations"."""
    from training.evaluate.images_report import markdown

    geometry = {
        "pixel_size_A": 0.06,
        "dose_e_per_A2": 125.0,
        "counts_per_px": 0.45,
        "bin": 4,
        "working_pixel_A": 0.24,
        "working_vacuum_counts": 7.2,
        "dose_factor": 1.0,
    }
    res = {
        "folder": "f",
        "detector_pixel_A": 0.06,
        "config": {"counts_per_px": 0.45, "draws": 1},
        "engine": "e",
        "backend": "e@abc/onnxruntime-fp32",
        "orientations": 1,
        "geometry": geometry,
        "score_scale": 1.0,
        "rows": [],
        "summary": {},
    }
    header = markdown(res, "cmd").splitlines()[2]
    assert "{'" not in header, header
    assert (
        "(e@abc/onnxruntime-fp32, averaged over 1 orientation(s), bin 4 to the 0.2400 A working pixel, "
        "7.2 counts per working pixel in vacuum)."
    ) in header, header
