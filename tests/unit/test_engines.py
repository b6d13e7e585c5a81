"""Engines behind one interface: ONNX export fidelity, artefact checks, backend agreement, TensorRT."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from sbd_stream.compute.model import DnCNN, SmallUNet, UNet
from sbd_stream.engines import EngineKind, EngineUnavailable, auto_order, available_kinds, load_engine
from sbd_stream.engines.card import ArtefactError, load_card, load_torch_model
from sbd_stream.engines.denoiser import Denoiser
from sbd_stream.engines.onnx_export import export_onnx, verify_onnx
from sbd_stream.engines.onnxruntime_engine import available_providers
from sbd_stream.engines.tensorrt_engine import tensorrt_unavailable_reason

TRT_REASON = tensorrt_unavailable_reason()


@pytest.mark.parametrize(
    "model",
    [UNet(scales=3, channels=4), DnCNN(depth=4, channels=8), SmallUNet()],
    ids=lambda m: type(m).__name__,
)
def test_onnx_export_matches_pytorch_at_other_shapes(model: torch.nn.Module, tmp_path: Path) -> None:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = export_onnx(model.eval(), tmp_path / "m.onnx", sample_size=64)
    # dynamic batch and spatial sizes: check at a shape the export never saw
    err = verify_onnx(model, path, torch.rand(3, 1, 48, 80))
    assert err < 1e-4


def test_fp16_export_has_fp16_weights_and_fp32_io(tmp_path: Path) -> None:
    """What a strongly typed TensorRT FP16 build needs (TensorRT 11 has no FP16 builder flag)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = UNet(scales=2, channels=4).eval()
    path = export_onnx(model, tmp_path / "h.onnx", sample_size=64, precision="fp16")
    graph = onnx.load(path).graph
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert graph.input[0].type.tensor_type.elem_type == f32
    assert graph.output[0].type.tensor_type.elem_type == f32
    assert f16 in {t.data_type for t in graph.initializer}
    x = torch.rand(1, 1, 64, 64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=5e-3)


def test_backends_agree(tiny_engine_dir: Path) -> None:
    frames = torch.poisson(torch.full((2, 90, 70), 0.45))
    outs = {k: Denoiser.load(k, tiny_engine_dir).denoise(frames).cpu() for k in ("torch", "onnxruntime")}
    torch.testing.assert_close(outs["torch"], outs["onnxruntime"], rtol=1e-4, atol=1e-4)


def test_auto_picks_onnxruntime_on_cpu_and_reports_why_not_tensorrt(tiny_engine_dir: Path) -> None:
    kinds = available_kinds(tiny_engine_dir)
    engine = load_engine("auto", tiny_engine_dir)
    if not TRT_REASON:
        assert engine.kind == "tensorrt"
        return
    assert kinds["tensorrt"] == TRT_REASON
    ort_cuda = "CUDAExecutionProvider" in available_providers()
    if torch.cuda.is_available() and not ort_cuda:  # a GPU, no TensorRT, CPU-only ONNX Runtime
        assert (engine.kind, engine.device.type) == ("torch", "cuda")
    else:
        assert engine.kind == "onnxruntime"
    # asked for the CPU explicitly: never the GPU, whatever is installed
    assert load_engine("auto", tiny_engine_dir, device="cpu").device.type == "cpu"


def test_auto_order_puts_the_gpu_before_a_cpu_only_onnxruntime() -> None:
    trt, ort, pt = EngineKind.tensorrt, EngineKind.onnxruntime, EngineKind.torch
    assert auto_order(cuda=False, ort_cuda=False) == [trt, ort, pt]
    assert auto_order(cuda=True, ort_cuda=True) == [trt, ort, pt]
    assert auto_order(cuda=True, ort_cuda=False) == [trt, pt, ort]


def test_engine_id_names_model_checksum_and_backend(tiny_engine_dir: Path) -> None:
    """The hash is of the file the backend loaded (verified), not the card's claim about another one."""
    card = load_card(tiny_engine_dir)
    engine = load_engine("torch", tiny_engine_dir)
    assert engine.engine_id == f"{card.name}@{card.checksums['model.pt'][:12]}/torch-fp32"
    engine = load_engine("onnxruntime", tiny_engine_dir, device="cpu")
    assert engine.engine_id == f"{card.name}@{card.checksums['model.onnx'][:12]}/onnxruntime-fp32"


def test_card_records_architecture_fov_and_checksums(tiny_engine_dir: Path) -> None:
    card = json.loads((tiny_engine_dir / "card.json").read_text())
    assert card["architecture"] == "unet" and card["scales"] == 2
    assert card["field_of_view"] == 53
    assert set(card["checksums"]) == {"model.pt", "model.onnx"}
    # every file the engines read is covered by a checksum: no external ONNX weight files
    assert sorted(p.name for p in tiny_engine_dir.iterdir()) == ["card.json", "model.onnx", "model.pt"]
    assert card["normalisation"]["dose"] == pytest.approx(0.45)


def test_tampered_weights_are_refused(tiny_engine_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_engine_dir, bad)
    state = torch.load(bad / "model.pt", weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, bad / "model.pt")
    with pytest.raises(ArtefactError, match="checksum mismatch"):
        load_torch_model(bad)
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ArtefactError, match="checksum mismatch"):
        load_engine("onnxruntime", bad)


class _Payload:
    def __reduce__(self):  # pragma: no cover - never executed when loading is safe
        return (print, ("pwned",))


def test_pickled_objects_are_refused_even_with_a_matching_checksum(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    from sbd_stream.engines.card import sha256_file

    evil = tmp_path / "evil"
    shutil.copytree(tiny_engine_dir, evil)
    with open(evil / "model.pt", "wb") as f:
        pickle.dump({"weights": _Payload()}, f)
    card = json.loads((evil / "card.json").read_text())
    card["checksums"]["model.pt"] = sha256_file(evil / "model.pt")
    (evil / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtefactError, match="pickled objects, which are never loaded"):
        load_torch_model(evil)


def test_missing_engine_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtefactError, match="no engine"):
        load_engine("torch", tmp_path / "nowhere")


@pytest.mark.gpu
@pytest.mark.skipif(TRT_REASON is not None, reason=f"TensorRT needs a GPU: {TRT_REASON}")
def test_tensorrt_fp16_matches_torch(tiny_engine_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SBD_CACHE_DIR", str(tmp_path))
    frames = torch.poisson(torch.full((2, 200, 150), 0.45)).cuda()
    trt = Denoiser.load("tensorrt", tiny_engine_dir, batch=8).denoise(frames)
    ref = Denoiser.load("torch", tiny_engine_dir, device="cuda").denoise(frames)
    assert trt.device.type == "cuda"
    torch.testing.assert_close(trt, ref, rtol=2e-2, atol=2e-2)
    plans = list((tmp_path / "tensorrt").glob("*.plan"))
    assert len(plans) == 1
    # a second load reuses the cached plan rather than building again
    Denoiser.load("tensorrt", tiny_engine_dir, batch=8)
    assert list((tmp_path / "tensorrt").glob("*.plan")) == plans


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False"
)
def test_torch_engine_on_cuda_keeps_tensors_on_device(tiny_engine_dir: Path) -> None:
    out = Denoiser.load("torch", tiny_engine_dir, device="cuda").denoise(torch.zeros(1, 64, 64))
    assert out.device.type == "cuda"


def test_cuda_request_without_gpu_is_refused_with_reason(tiny_engine_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: nothing to refuse")
    with pytest.raises(EngineUnavailable, match="CUDA"):
        load_engine("torch", tiny_engine_dir, device="cuda")
    with pytest.raises(EngineUnavailable, match="GPU"):
        load_engine("tensorrt", tiny_engine_dir)


def test_offline_work_takes_the_quality_engine_only_where_it_keeps_up(tmp_path) -> None:
    """`auto` offline: the quality engine on a GPU when installed; the live engine otherwise."""
    import shutil

    from sbd_stream.engines.card import DEFAULT_ENGINE, QUALITY_ENGINE, default_engine_root, offline_engine

    root = tmp_path / "engines"
    shutil.copytree(default_engine_root() / DEFAULT_ENGINE, root / DEFAULT_ENGINE)
    assert offline_engine(gpu=True, root=root) == DEFAULT_ENGINE  # not installed
    shutil.copytree(root / DEFAULT_ENGINE, root / QUALITY_ENGINE)
    assert offline_engine(gpu=True, root=root) == QUALITY_ENGINE
    assert offline_engine(gpu=False, root=root) == DEFAULT_ENGINE  # a CPU keeps the live engine


def test_live_service_takes_the_fast_engine_on_a_cpu() -> None:
    """The live default keeps 40 Hz where it runs: the fast engine on a CPU, the default one on a GPU;
    the service's batch stage is loaded with it when no model is named."""
    from sbd_stream.config import ServiceSettings
    from sbd_stream.engines.card import DEFAULT_ENGINE, FAST_ENGINE, default_engine_root, live_engine
    from sbd_stream.service.build import load_stage

    assert live_engine(gpu=False) == FAST_ENGINE
    assert live_engine(gpu=True) == DEFAULT_ENGINE
    assert live_engine("cpu") == FAST_ENGINE  # a CPU device, whatever the machine has
    assert (default_engine_root() / FAST_ENGINE / "card.json").is_file()
    stage = load_stage(ServiceSettings(denoise={"engine": "onnxruntime", "device": "cpu"}))
    assert stage.denoiser.engine.card.name == FAST_ENGINE


def test_a_card_with_pixel_and_counts_but_no_dose_per_area_states_one() -> None:
    """The shipped ``sbd-unet4-default`` card states 0.45 counts per 0.155 A working pixel and no dose per
    area: it is 0.45 / 0.155^2 = 18.7 e/A^2 (``info`` showed null and no dose check ran)."""
    from sbd_stream.engines.card import default_engine_root, load_card

    card = load_card(default_engine_root() / "sbd-unet4-default")
    assert card.dose_e_per_A2 == pytest.approx(0.45 / card.pixel_size_A**2) and 18 < card.dose_e_per_A2 < 19.5


def test_the_live_service_takes_the_orientations_setting(tiny_engine_dir) -> None:
    """``[denoise] orientations`` (TOML, SBD_DENOISE__ORIENTATIONS) reached no live stage: documented as a
    setting, it was ignored by serve and replay (every frame denoised once whatever it said)."""
    from sbd_stream.config import ServiceSettings
    from sbd_stream.engines.symmetry import trained_orientations
    from sbd_stream.service.build import load_stage

    den = {"engine": "onnxruntime", "device": "cpu", "model": str(tiny_engine_dir)}
    assert load_stage(ServiceSettings(denoise=den)).orientations == 1  # the live default
    stage = load_stage(ServiceSettings(denoise={**den, "orientations": 4}))
    assert stage.orientations == min(4, trained_orientations(stage.denoiser.engine.card.training)) > 1


def test_tile_plans_are_cached_for_recent_shapes_only(tiny_engine_dir: Path) -> None:
    """A caller sweeping many frame sizes must not grow the plan cache without end."""
    from sbd_stream.engines.denoiser import PLAN_CACHE_SIZE

    den = Denoiser.load(EngineKind.torch, tiny_engine_dir)
    first = den.plan(40, 40)
    assert den.plan(40, 40) is first
    for size in range(41, 41 + 3 * PLAN_CACHE_SIZE):
        den.plan(size, size + 1)
    assert len(den._plans) == PLAN_CACHE_SIZE
    assert (40, 40) not in den._plans
    out = den.denoise(torch.ones(24, 40))
    assert out.shape == (24, 40)


def test_an_engine_name_given_as_the_backend_says_where_it_goes(tiny_engine_dir: Path) -> None:
    """``Denoiser.load("sbd-unet4-paper-twins")`` said only "'sbd-unet4-paper-twins' is not a valid
    EngineKind"; ``precision="fp64"`` was accepted without a word."""
    with pytest.raises(
        ValueError, match=r"not a backend \(auto, .*\); an engine's name or folder goes second"
    ):
        Denoiser.load("sbd-unet4-paper-twins")
    with pytest.raises(ValueError, match="precision must be 'fp16' or 'fp32'"):
        Denoiser.load("torch", tiny_engine_dir, precision="fp64")
    assert Denoiser.load("torch", tiny_engine_dir, precision="fp32").engine.kind == "torch"
