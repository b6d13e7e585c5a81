"""Engine files an auditor broke on purpose: each is refused at load in one line, never run.

Real engines (``conftest.make_tiny_engine``: real model.pt, real ONNX, real ONNX Runtime sessions),
damaged the way the audit did (``tests/tampering.py``): ONNX external weights, a truncated, foreign or
unrunnable ONNX, NaN weights, a file failing its checksum, pickles. Cards, names and the CLI's side are
in ``test_engine_cards_audit.py``.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from tampering import Payload, clone, drop, edit_card, edit_onnx, rehash, sha
from typer.testing import CliRunner

from sbd_stream.cli import app
from sbd_stream.engines import EngineUnavailable, available_kinds, load_engine
from sbd_stream.engines.card import FAST_ENGINE, ArtefactError, IntegrityError, load_card

runner = CliRunner()


# --- D1: ONNX external data ----------------------------------------------------------------------------


def test_onnx_weights_in_external_data_are_refused_and_auto_does_not_fall_back(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """The card hashes model.onnx only: weights in a weights.bin beside it (here overwritten with NaN
    after the checksum was taken) were loaded unverified."""
    eng = clone(tiny_engine_dir, tmp_path)
    model = onnx.load(eng / "model.onnx")
    onnx.save_model(model, eng / "model.onnx", save_as_external_data=True, location="weights.bin",
                    size_threshold=64)  # fmt: skip
    weights = eng / "weights.bin"
    weights.write_bytes(np.full(weights.stat().st_size // 4, np.nan, np.float32).tobytes())
    rehash(eng)
    with pytest.raises(IntegrityError, match=r"external data .*weights\.bin.*no checksum covers"):
        load_engine("onnxruntime", eng, device="cpu")
    # the torch weights are fine, but a tampered file is reported, not quietly replaced
    with pytest.raises(IntegrityError, match="external data"):
        load_engine("auto", eng, device="cpu")


# --- D2: an ONNX that ORT cannot load or run -------------------------------------------------------------


def test_truncated_onnx_is_an_artefact_error_and_auto_takes_the_next_backend(
    tiny_engine_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    eng = clone(tiny_engine_dir, tmp_path)
    data = (eng / "model.onnx").read_bytes()
    (eng / "model.onnx").write_bytes(data[: len(data) // 3])
    rehash(eng)  # the checksum matches: the file is as the card says, and broken
    with pytest.raises(ArtefactError, match="not a readable ONNX model"):
        load_engine("onnxruntime", eng, device="cpu")
    with caplog.at_level(logging.WARNING, logger="sbd_stream.engines"):
        engine = load_engine("auto", eng, device="cpu")
    assert engine.kind == "torch"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "onnxruntime" in warnings[0].getMessage()


def test_onnx_runtime_refusing_the_graph_is_an_artefact_error(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """ONNX parses it, ORT does not (an operator it lacks): ORT's own exception types derive from
    Exception only, so they escaped both the CLI and auto's fallback as a traceback."""
    eng = clone(tiny_engine_dir, tmp_path)

    def unknown_op(m: onnx.ModelProto) -> None:
        out = m.graph.output[0].name
        for node in m.graph.node:
            node.output[:] = ["pre_" + o if o == out else o for o in node.output]
        m.graph.node.append(helper.make_node("NoSuchOperator", ["pre_" + out], [out], domain="ai.sbd.none"))
        m.opset_import.append(helper.make_opsetid("ai.sbd.none", 1))

    edit_onnx(eng, unknown_op)
    with pytest.raises(ArtefactError, match="ONNX Runtime cannot load it"):
        load_engine("onnxruntime", eng, device="cpu")


def test_onnx_taking_other_than_float32_tiles_is_refused_at_load(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """The card's network, behind a float64 input: it loaded, then every frame failed in ORT."""
    eng = clone(tiny_engine_dir, tmp_path)

    def double_input(m: onnx.ModelProto) -> None:
        name = m.graph.input[0].name
        for node in m.graph.node:
            node.input[:] = ["as_float" if i == name else i for i in node.input]
        m.graph.node.insert(0, helper.make_node("Cast", [name], ["as_float"], to=TensorProto.FLOAT))
        m.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE

    edit_onnx(eng, double_input)
    with pytest.raises(ArtefactError, match=r"input 'input' is tensor\(double\).*float32 \(N, 1, H, W\)"):
        load_engine("onnxruntime", eng, device="cpu")


def test_onnx_that_cannot_run_a_tile_is_refused_at_load(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """Right signature, right weights, but a reshape no tile fits: the warm-up tile finds it."""
    eng = clone(tiny_engine_dir, tmp_path)

    def bad_reshape(m: onnx.ModelProto) -> None:
        out = m.graph.output[0].name
        for node in m.graph.node:
            node.output[:] = ["pre_" + o if o == out else o for o in node.output]
        m.graph.initializer.append(numpy_helper.from_array(np.array([-1, 1, 3, 3], np.int64), "shape9"))
        m.graph.node.append(helper.make_node("Reshape", ["pre_" + out, "shape9"], [out]))

    edit_onnx(eng, bad_reshape)
    with pytest.raises(ArtefactError, match=r"broken \(onnxruntime\) cannot run one 64x64 tile"):
        load_engine("onnxruntime", eng, device="cpu")


def test_denoise_with_an_unrunnable_engine_is_one_line_exit_2(tiny_engine_dir: Path, tmp_path: Path) -> None:
    eng = clone(tiny_engine_dir, tmp_path)
    drop(eng, "model.pt")
    data = (eng / "model.onnx").read_bytes()
    (eng / "model.onnx").write_bytes(data[: len(data) // 3])
    rehash(eng)
    np.save(tmp_path / "in.npy", np.ones((1, 32, 32), np.uint16))
    args = ["--model", str(eng), "--pixel-size", "0.1553", "--counts-per-px", "0.45"]
    res = runner.invoke(app, ["denoise", str(tmp_path / "in.npy"), str(tmp_path / "o.h5"), *args])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not a readable ONNX model" in errors[0] and "Traceback" not in res.stderr


# --- D3: NaN / Inf weights -------------------------------------------------------------------------------


def _poison(eng: Path, value: float) -> None:
    """One weight of the first convolution made ``value`` (the very first tap, as the audit did)."""
    state = torch.load(eng / "model.pt", weights_only=True)
    first = next(k for k, v in state.items() if v.ndim == 4)
    state[first].view(-1)[0] = value
    torch.save(state, eng / "model.pt")
    model = onnx.load(eng / "model.onnx")
    init = next(t for t in model.graph.initializer if len(t.dims) == 4)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] = value
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, eng / "model.onnx")
    rehash(eng)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_every_backend(
    tiny_engine_dir: Path, tmp_path: Path, value: float
) -> None:
    eng = clone(tiny_engine_dir, tmp_path)
    _poison(eng, value)
    for kind in ("torch", "onnxruntime"):
        with pytest.raises(ArtefactError, match=rf"broken \({kind}\): non-finite output"):
            load_engine(kind, eng, device="cpu")
    with pytest.raises(EngineUnavailable, match="non-finite output"):
        load_engine("auto", eng, device="cpu")


def test_warm_up_of_the_fast_shipped_engine_is_cheap() -> None:
    """One 64 x 64 tile: ~1 ms through ONNX Runtime on a CPU (docs/design.md); bounded loosely here."""
    from sbd_stream.engines.base import warm_up

    engine = load_engine("onnxruntime", FAST_ENGINE, device="cpu")
    assert engine.warmup_side() == 64
    assert min(warm_up(engine) for _ in range(3)) < 0.5


# --- D6: checksums in `info`, under auto, and in engine_id -----------------------------------------------


def test_a_listed_file_failing_its_checksum_is_reported_and_refused_under_auto(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    eng = clone(tiny_engine_dir, tmp_path)
    edit_card(eng, checksums={**load_card(eng).checksums, "model.onnx": "0" * 64})
    kinds = available_kinds(eng, load_card(eng), verify=True)
    assert kinds["torch"] is None and "checksum mismatch" in (kinds["onnxruntime"] or "")
    with pytest.raises(IntegrityError, match=r"checksum mismatch for .*model\.onnx"):
        load_engine("auto", eng, device="cpu")
    # asked for explicitly, torch runs: its id names the file it loaded, not the card's claim
    assert (
        load_engine("torch", eng, device="cpu").engine_id == f"broken@{sha(eng / 'model.pt')[:12]}/torch-fp32"
    )


def test_info_reports_a_damaged_model_as_the_reason_its_backend_cannot_run(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    eng = clone(tiny_engine_dir, tmp_path)
    with open(eng / "model.onnx", "ab") as f:
        f.write(b"\0")
    res = runner.invoke(app, ["info", "--model", str(eng)])
    assert res.exit_code == 0, res.output
    backends = json.loads(res.stdout)["engines"][0]["backends"]
    assert backends["onnxruntime"].startswith("checksum mismatch for") and backends["torch"] is None


# --- D7: one line in the product's words --------------------------------------------------------------


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_a_pickle_is_refused_in_the_products_words(tiny_engine_dir: Path, tmp_path: Path, how: str) -> None:
    eng = clone(tiny_engine_dir, tmp_path)
    state = dict(torch.load(eng / "model.pt", weights_only=True), payload=Payload())
    if how == "torch.save":
        torch.save(state, eng / "model.pt")
    else:
        (eng / "model.pt").write_bytes(pickle.dumps(state))
    rehash(eng)
    with pytest.raises(ArtefactError) as e:
        load_engine("torch", eng, device="cpu")
    assert str(e.value) == (
        f"{eng / 'model.pt'}: not a plain tensor file (it holds pickled objects, which are never loaded)"
    )
