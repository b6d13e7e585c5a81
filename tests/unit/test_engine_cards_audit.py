"""Engine cards, names and roots an auditor broke on purpose: one line and exit 2, never a traceback.

Bounded card fields that must fit the network, ``card.json`` as a folder or a FIFO, names resolved
under the engine root, ``$SBD_ENGINE_DIR``, ``info --model``, the documented field of view,
``build-engine``'s default, and ``sbd-train`` on checkpoints carrying pickles. Real engines, real files
(``tests/tampering.py``); the files' side is in ``test_engine_artefacts_audit.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_engine
from tampering import Payload, clone, edit_card, rehash
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.engines import load_engine
from sbd_stream.engines.card import (
    DEFAULT_ENGINE,
    ArtefactError,
    default_engine_root,
    load_card,
    resolve_engine_dir,
)

runner = CliRunner()


# --- D4: what `info` lists ---------------------------------------------------------------------------------


def test_info_lists_only_regular_cards_and_never_opens_a_fifo(
    tiny_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_engine_dir, root / "good")
    (root / "folder" / "card.json").mkdir(parents=True)
    (root / "fifo").mkdir()
    fifo = root / "fifo" / "card.json"
    os.mkfifo(fifo)
    monkeypatch.setenv("SBD_ENGINE_DIR", str(root))
    result: dict[str, Any] = {}

    def info() -> None:
        result["out"] = runner.invoke(app, ["info"])

    worker = threading.Thread(target=info, daemon=True)
    worker.start()
    worker.join(30)
    hung = worker.is_alive()
    if hung:  # release the reader the old code left blocked in open(), then fail
        with open(fifo, "wb"):
            pass
        worker.join(10)
    assert not hung, "info blocked on a FIFO named card.json"
    res = result["out"]
    assert res.exit_code == 0, res.output
    assert [e["path"] for e in json.loads(res.stdout)["engines"]] == [str(root / "good")]
    for bad, what in ((root / "folder", "not a regular file"), (root / "fifo", "not a regular file")):
        with pytest.raises(ArtefactError, match=what):
            load_card(bad)


# --- D5: card fields bounded and checked against the network ------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"scales": -1}, "scales: Input should be greater than or equal to 1"),
        ({"scales": 9}, "scales: Input should be less than or equal to 8"),
        ({"channels": 10**9}, "channels: Input should be less than or equal to 1024"),
        ({"space_to_depth": 3}, "space_to_depth: must be 1, 2 or 4"),
        ({"name": "../../tmp/x"}, "name: String should match pattern"),
        ({"name": ".hidden"}, "name: String should match pattern"),
        ({"name": "a\\b"}, "name: String should match pattern"),
        ({"name": "a\nb"}, "name: String should match pattern"),
        ({"checksums": {"../../etc/passwd": "0" * 64}}, "'../../etc/passwd' is not a plain file name"),
        ({"checksums": {"/etc/passwd": "0" * 64}}, "'/etc/passwd' is not a plain file name"),
        ({"checksums": {".model.onnx": "0" * 64}}, "'.model.onnx' is not a plain file name"),
        ({"checksums": {"model.onnx": "abc"}}, "checksum of model.onnx is not 64 lowercase hex digits"),
        ({"checksums": {"model.onnx": "A" * 64}}, "checksum of model.onnx is not 64 lowercase hex digits"),
        ({"parameters": 12345}, "card says 12345 parameters but its network .* has 1705"),
        ({"scales": 4}, r"card says 1705 parameters but its network \(unet, 4 scales, 4 channels\) has 3209"),
        ({"field_of_view": 9999}, "card says a field of view of 9999 px but its network .* has 53"),
    ],
)
def test_card_fields_are_bounded_and_fit_the_network(
    tiny_engine_dir: Path, tmp_path: Path, fields: dict[str, Any], expected: str
) -> None:
    eng = clone(tiny_engine_dir, tmp_path)
    edit_card(eng, **fields)
    with pytest.raises(ArtefactError, match=expected) as e:
        load_card(eng)
    assert "\n" not in str(e.value) and "pydantic.dev" not in str(e.value)


def test_every_shipped_card_still_validates() -> None:
    root = default_engine_root()
    cards = sorted(root.glob("*/card.json"))
    assert len(cards) >= 10
    for c in cards:
        load_card(c.parent)


def test_torch_weights_of_another_network_are_one_line(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """A card stating no parameter count, lying about its scales: torch's load_state_dict traceback."""
    eng = clone(tiny_engine_dir, tmp_path)
    edit_card(eng, scales=3, parameters=0, field_of_view=0)
    with pytest.raises(ArtefactError, match=r"does not hold the card's network \(unet, 3 scales") as e:
        load_engine("torch", eng, device="cpu")
    assert "\n" not in str(e.value) and "tensors missing" in str(e.value)


def test_onnx_of_another_network_is_refused(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """The card's 2-scale network beside a 3-scale model.onnx ran silently."""
    other = make_tiny_engine(tmp_path / "other", scales=3)
    eng = clone(tiny_engine_dir, tmp_path)
    shutil.copy(other / "model.onnx", eng / "model.onnx")
    rehash(eng)
    with pytest.raises(
        ArtefactError, match=r"does not hold the card's network \(unet, 2 scales, 4 channels\)"
    ):
        load_engine("onnxruntime", eng, device="cpu")


@pytest.mark.parametrize("arch", ["dncnn", "small_unet"])
def test_engines_of_the_baseline_networks_still_load(arch: str, tmp_path: Path) -> None:
    """Batch norm folded into the ONNX convolutions, a DnCNN depth the card does not state: both pass."""
    from sbd_stream.compute.model import DnCNN, SmallUNet
    from sbd_stream.engines.card import EngineCard, write_engine

    model = DnCNN(depth=6, channels=8) if arch == "dncnn" else SmallUNet()
    card = EngineCard(name=f"tiny-{arch}", architecture=arch, channels=8)
    write_engine(tmp_path / arch, model.eval(), card)
    assert load_engine("onnxruntime", tmp_path / arch, device="cpu").kind == "onnxruntime"
    if arch == "small_unet":  # a DnCNN card builds depth 20: its torch weights never loaded (unchanged)
        assert load_engine("torch", tmp_path / arch, device="cpu").kind == "torch"


def test_a_bad_card_is_one_line_at_the_cli(tiny_engine_dir: Path, tmp_path: Path) -> None:
    eng = clone(tiny_engine_dir, tmp_path)
    edit_card(eng, tiling={"tile": 0})
    np.save(tmp_path / "in.npy", np.ones((1, 32, 32), np.uint16))
    res = runner.invoke(
        app, ["denoise", str(tmp_path / "in.npy"), str(tmp_path / "o.h5"), "--model", str(eng)]
    )
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"error: engine: {eng / 'card.json'} is not a valid engine card: "
        "tiling.tile: Input should be greater than 0 (got 0)"
    )


# --- D9, D10, D11: which engine a name means; the engine root; `info --model` ----------------------------


def test_a_name_means_the_engine_roots_engine_not_a_folder_here(
    tiny_engine_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copytree(tiny_engine_dir, tmp_path / DEFAULT_ENGINE)
    shutil.copytree(tiny_engine_dir, tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    root = default_engine_root()
    with caplog.at_level(logging.WARNING):
        assert resolve_engine_dir(None) == root / DEFAULT_ENGINE
        assert resolve_engine_dir(DEFAULT_ENGINE) == root / DEFAULT_ENGINE
    assert "./" + DEFAULT_ENGINE in caplog.text  # both exist: says how to name the one here
    assert resolve_engine_dir("./" + DEFAULT_ENGINE) == Path("./" + DEFAULT_ENGINE)
    # a name found only here is still taken (as before), with a warning to write it as a path
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_engine_dir("mine") == Path("mine")
    assert "write ./mine" in caplog.text
    # a shipped default's name is never a folder here, even where the root lacks that engine
    (tmp_path / "empty-root").mkdir()
    monkeypatch.setenv("SBD_ENGINE_DIR", str(tmp_path / "empty-root"))
    with pytest.raises(ArtefactError, match="no engine"):
        resolve_engine_dir(None)


@pytest.mark.parametrize("where", ["missing", "file"])
def test_sbd_engine_dir_that_is_no_folder_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    target = tmp_path / "engines"
    if where == "file":
        target.write_text("x")
    monkeypatch.setenv("SBD_ENGINE_DIR", str(target))
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.startswith(f"error: SBD_ENGINE_DIR={target} ") and len(res.stderr.splitlines()) == 1


def test_info_on_one_engine_with_an_invalid_card_exits_2(tiny_engine_dir: Path, tmp_path: Path) -> None:
    eng = clone(tiny_engine_dir, tmp_path)
    edit_card(eng, scales="two")
    res = runner.invoke(app, ["info", "--model", str(eng)])
    assert res.exit_code == 2
    assert (
        res.stderr.startswith("error: --model: ") and "scales: Input should be a valid integer" in res.stderr
    )


# --- D12: the documented field of view and build-engine's default -----------------------------------------


def test_documented_fov_formula_matches_the_code() -> None:
    from sbd_stream.compute.model import UNet, field_of_view

    for n in range(1, 7):
        assert field_of_view(UNet(scales=n, channels=1)) == 16 * 2**n - 11
        for s in (2, 4):
            assert field_of_view(UNet(scales=n, channels=1, space_to_depth=s)) == s * (16 * 2**n - 10) - 1
    text = (Path(__file__).resolve().parents[2] / "docs" / "foundation.md").read_text()
    assert "16 * 2^n - 11" in text and "15 * 2^n - 10" not in text


def test_build_engine_defaults_to_the_engine_a_gpu_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.train.export as export
    from training.cli import app as train_app

    seen: list[Path] = []

    def record(engine_dir: Path, *_: Any) -> Path:
        seen.append(engine_dir)
        return engine_dir / "plan"

    monkeypatch.setattr(export, "build_engine", record)
    res = runner.invoke(train_app, ["build-engine"])
    assert res.exit_code == 0, res.output
    assert seen == [default_engine_root() / DEFAULT_ENGINE]


# --- D8: sbd-train on checkpoints carrying pickles --------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real two-step run of the tiny preset on a synthetic set: (data set, runs folder)."""
    from training.sim.synthetic_data import write_synthetic
    from training.train.loop import train
    from training.train.presets import preset_config

    d = tmp_path_factory.mktemp("run")
    data = write_synthetic(d / "syn.h5", n_structures=6, per_structure=3, size=64)
    train(preset_config("tiny", data=str(data), out_dir=str(d / "runs"), threads=1, max_steps=2), resume=True)
    return data, d / "runs"


def _pickled(path: Path) -> None:
    """``path`` rewritten with an object that would run code if unpickled (torch.save, as a run does)."""
    ck = torch.load(path, weights_only=True)
    torch.save({**ck, "payload": Payload()}, path)


@pytest.mark.parametrize("checkpoint", ["best.pt", "last.pt"])
def test_export_and_resume_refuse_a_pickled_checkpoint_in_one_line(
    short_run: tuple[Path, Path], tmp_path: Path, checkpoint: str
) -> None:
    from training.cli import app as train_app

    data, runs = short_run
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(runs / "tiny", run)
    _pickled(run / checkpoint)
    (run / checkpoint).touch()  # newer than summary.json: export reads last.pt's counters too
    env = {"SBD_TRACEBACK": ""}
    export = ["export", str(run), "--engine-dir", str(tmp_path / "eng"), "--no-evaluate-test"]
    resume = ["train", "--preset", "tiny", "--data", str(data), "--out-dir", str(run.parent),
              "--max-steps", "4", "--threads", "1"]  # fmt: skip
    for args in (export, resume) if checkpoint == "last.pt" else (export,):
        res = runner.invoke(train_app, args, env=env)
        assert res.exit_code == 2, (args, res.output)
        assert res.stderr.strip() == (
            f"error: {run / checkpoint}: not a plain tensor file (it holds pickled objects, which are never "
            "loaded)"
        )
    assert not (tmp_path / "eng").exists()


# --- compat audit (session 23): card versions and unknown keys ---------------------------------------------


def test_a_card_of_a_newer_format_is_refused_in_one_line(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """Cards had no version: an older sbd-stream silently ran a card whose fields it did not know."""
    eng = clone(tiny_engine_dir, tmp_path)
    edit_card(eng, format_version=2)
    with pytest.raises(ArtefactError, match=r"format_version 2 is newer than this sbd-stream reads \(1\)"):
        load_card(eng)
    res = runner.invoke(app, ["info", "--model", str(eng)])
    assert res.exit_code == 2 and "upgrade sbd-stream" in res.output
    edit_card(eng, format_version=0)
    with pytest.raises(ArtefactError, match="not a valid engine card: format_version"):
        load_card(eng)


def test_unknown_card_keys_are_named_in_a_warning(
    tiny_engine_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eng = clone(tiny_engine_dir, tmp_path)
    edit_card(eng, pixel_size_a=0.24)
    with caplog.at_level(logging.WARNING, logger="sbd_stream.engines.card"):
        card = load_card(eng)
    assert card.format_version == 1
    assert any("unknown card keys pixel_size_a" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sbd_stream.engines.card"):
        load_card(tiny_engine_dir)
    assert not [r for r in caplog.records if "unknown card keys" in r.getMessage()]
