"""ONNX export of the denoising networks, checked numerically against PyTorch.

The dynamo exporter (the default since torch 2.9) with dynamic batch, height and width; eval mode so
BatchNorm folds into the convolutions. Height and width are declared as multiples of the network's
size granularity, which is what the tiler feeds it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "output"


class _HalfWrapper(torch.nn.Module):
    """FP16 inside, FP32 at the boundary: what a strongly typed TensorRT FP16 build wants."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.half()).float()


def export_onnx(
    model: torch.nn.Module,
    path: Path,
    sample_size: int = 128,
    precision: str = "fp32",
    opset: int = 18,
    check: bool = True,
) -> Path:
    import copy

    model = copy.deepcopy(model).eval().cpu()
    multiple = int(getattr(model, "multiple", 1))
    size = max(sample_size - sample_size % multiple, multiple)
    example = torch.rand(2, 1, size, size)
    net: torch.nn.Module = _HalfWrapper(model) if precision == "fp16" else model
    batch = torch.export.Dim("batch", min=1, max=1024)
    h = torch.export.Dim("h", min=1, max=16384 // multiple)
    w = torch.export.Dim("w", min=1, max=16384 // multiple)
    dyn = {0: batch, 2: multiple * h, 3: multiple * w} if multiple > 1 else {0: batch, 2: h * 1, 3: w * 1}
    # the exporter logs a warning per missing optional torchvision op; none of them are used here
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(dyn,),
            opset_version=opset,
            optimize=True,
            verbose=False,
            # weights inside model.onnx: one file, covered by the card's checksum (no .onnx.data)
            external_data=False,
        )
    if check and precision == "fp32":
        verify_onnx(model, path, example)
    return path


def verify_onnx(model: torch.nn.Module, path: Path, example: torch.Tensor, rtol: float = 1e-4) -> float:
    """Max abs difference between ONNX Runtime and PyTorch; raises if outside tolerance."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT_NAME: example.numpy()})[0]
    with torch.no_grad():
        ref = model(example).numpy()
    err = float(np.abs(got - ref).max())
    tol = rtol * max(1.0, float(np.abs(ref).max()))
    if err > tol:
        raise RuntimeError(f"ONNX export of {path.name} differs from PyTorch by {err:.3g} (> {tol:.3g})")
    log.info("ONNX export %s verified: max abs diff %.3g", path.name, err)
    return err
