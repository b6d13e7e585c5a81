"""Engine registry: choose a backend by name, or ``auto`` for the fastest one that runs here.

``auto`` prefers TensorRT (GPU + plan buildable), then ONNX Runtime, then eager PyTorch, and says why
it skipped each, so a user on a GPU box who gets the CPU path learns the reason from the log. On a GPU
box whose ONNX Runtime has no CUDA provider (the plain ``onnxruntime`` wheel), PyTorch on the GPU comes
before ONNX Runtime on the CPU: a GPU without TensorRT should still denoise on the GPU.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path

import torch

from sbd_stream.engines.base import Engine, EngineUnavailable
from sbd_stream.engines.card import ONNX_FILE, ArtefactError, load_card, resolve_engine_dir

log = logging.getLogger(__name__)

__all__ = ["Engine", "EngineKind", "EngineUnavailable", "auto_order", "available_kinds", "load_engine"]


class EngineKind(StrEnum):
    auto = "auto"
    tensorrt = "tensorrt"
    onnxruntime = "onnxruntime"
    torch = "torch"


def available_kinds(engine_dir: Path | None = None) -> dict[str, str | None]:
    """Each backend -> None when usable here, else the reason it isn't."""
    from sbd_stream.engines.onnxruntime_engine import available_providers
    from sbd_stream.engines.tensorrt_engine import tensorrt_unavailable_reason

    has_onnx = engine_dir is None or (engine_dir / ONNX_FILE).is_file()
    out: dict[str, str | None] = {"torch": None}
    out["onnxruntime"] = (
        None if available_providers() and has_onnx else "onnxruntime missing or no model.onnx in the engine"
    )
    trt = tensorrt_unavailable_reason()
    out["tensorrt"] = trt or (None if has_onnx else "no model.onnx in the engine")
    return out


def auto_order(cuda: bool, ort_cuda: bool) -> list[EngineKind]:
    """The backends ``auto`` tries, in order, given a CUDA GPU and a CUDA-capable ONNX Runtime."""
    if cuda and not ort_cuda:
        return [EngineKind.tensorrt, EngineKind.torch, EngineKind.onnxruntime]
    return [EngineKind.tensorrt, EngineKind.onnxruntime, EngineKind.torch]


def load_engine(
    kind: EngineKind | str = EngineKind.auto,
    engine: str | Path | None = None,
    device: str | None = None,
    batch: int = 16,
    precision: str = "fp16",
    tile: int | None = None,
    threads: int | None = None,
) -> Engine:
    """Open the engine directory ``engine`` (name or path) with backend ``kind``.

    ``threads``: intra-op CPU threads of this engine (ONNX Runtime sessions own theirs; torch's pool
    is per process, so for the torch backend it is a process-wide setting), for engine workers that
    split a CPU's cores between them.
    """
    engine_dir = resolve_engine_dir(engine)
    card = load_card(engine_dir)
    kind = EngineKind(kind)
    if kind is EngineKind.auto:
        reasons = available_kinds(engine_dir)
        cuda_here = torch.cuda.is_available() and not (device or "").startswith("cpu")
        why: list[str] = []
        for k in auto_order(cuda_here, cuda_here and _ort_has_cuda()):
            if reasons[k.value] is None:
                try:
                    return load_engine(k, engine_dir, device, batch, precision, tile, threads)
                except (EngineUnavailable, ArtefactError, RuntimeError) as e:
                    log.warning("engine %s unavailable, trying the next: %s", k.value, e)
                    why.append(f"{k.value}: {e}")
            else:
                log.info("engine %s skipped: %s", k.value, reasons[k.value])
                why.append(f"{k.value}: {reasons[k.value]}")
        raise EngineUnavailable(f"no engine backend can run {engine_dir} ({'; '.join(why)})")
    cuda = torch.cuda.is_available()
    if kind is EngineKind.tensorrt:
        from sbd_stream.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(engine_dir, card, device or "cuda", batch, precision, tile)
    if kind is EngineKind.onnxruntime:
        from sbd_stream.engines.onnxruntime_engine import OnnxRuntimeEngine

        dev = device or ("cuda" if cuda and _ort_has_cuda() else "cpu")
        return OnnxRuntimeEngine(engine_dir, card, dev, batch, threads=threads)
    from sbd_stream.engines.torch_engine import TorchEngine

    if threads and (device or ("cuda" if cuda else "cpu")).startswith("cpu"):
        torch.set_num_threads(threads)
    return TorchEngine(engine_dir, card, device or ("cuda" if cuda else "cpu"), batch)


def _ort_has_cuda() -> bool:
    from sbd_stream.engines.onnxruntime_engine import available_providers

    return "CUDAExecutionProvider" in available_providers()
