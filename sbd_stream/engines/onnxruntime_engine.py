"""ONNX Runtime: the fastest portable CPU path; uses CUDA / TensorRT execution providers when present.

On CUDA the tiles stay on the GPU through IO binding (device pointers in and out), so a GPU build of
onnxruntime does not bounce every batch through host memory.

The session is built from the verified bytes (read once, hashed, checked by ``onnx_checks``), never
from the file's name: ORT reading the file again could read other bytes, and would follow external
data to files no checksum covers. What ORT cannot load, or a signature other than one float32
(N, 1, H, W) input and output, is an ``ArtefactError`` at load, not a traceback on every frame.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbd_stream.engines.artefact_files import read_verified
from sbd_stream.engines.base import Engine, EngineUnavailable
from sbd_stream.engines.card import ONNX_FILE, EngineCard
from sbd_stream.engines.errors import ArtefactError
from sbd_stream.engines.onnx_checks import check_onnx


def available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OnnxRuntimeEngine(Engine):
    kind = "onnxruntime"

    def __init__(
        self,
        engine_dir: Path,
        card: EngineCard,
        device: str = "cpu",
        batch: int = 16,
        threads: int | None = None,
    ) -> None:
        super().__init__(engine_dir, card, torch.device(device), batch)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineUnavailable("onnxruntime is not installed") from e
        data, self.model_sha = read_verified(engine_dir, card.checksums, ONNX_FILE, card.name)
        path = engine_dir / ONNX_FILE
        check_onnx(data, card, path)
        want_cuda = torch.device(device).type == "cuda"
        have = ort.get_available_providers()
        if want_cuda and "CUDAExecutionProvider" not in have:
            raise EngineUnavailable(f"onnxruntime has no CUDAExecutionProvider here (has {have})")
        providers: list[str] = []
        if want_cuda:
            providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in have]
        providers.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or int(os.environ.get("SBD_ORT_THREADS", "0"))
        # ORT's workers spin after each run by default; in the live service the receiver, publisher and
        # the batch stage's own torch kernels need those cores, so spinning is off unless asked for
        if os.environ.get("SBD_ORT_SPIN", "0") != "1":
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=providers)
        except Exception as e:  # ORT's InvalidProtobuf, Fail, InvalidGraph... derive from Exception only
            raise ArtefactError(f"{path}: ONNX Runtime cannot load it ({_first_line(e)})") from e
        self._input, self._output = check_signature(self.session, path)
        self._cuda = want_cuda

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        if self._cuda:
            return self._run_bound(batch)
        x = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        y = self.session.run([self._output], {self._input: x})[0]
        return torch.from_numpy(y)

    def _run_bound(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self._device, torch.float32).contiguous()
        y = torch.empty_like(x)
        binding = self.session.io_binding()
        dev_id = self._device.index or 0
        binding.bind_input(self._input, "cuda", dev_id, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self._output, "cuda", dev_id, np.float32, tuple(y.shape), y.data_ptr())
        self.session.run_with_iobinding(binding)
        return y


def check_signature(session: Any, path: Path) -> tuple[str, str]:
    """Names of the session's one input and one output, once both are float32 (N, 1, H, W) tensors.

    Why: an ONNX taking int64, a rank-2 array or three channels loaded fine and then failed every frame
    with ORT's traceback (the live service counted them and went on, exit 0)."""
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1 or len(outs) != 1:
        raise ArtefactError(f"{path}: {len(ins)} inputs and {len(outs)} outputs; an engine has one of each")
    for what, arg in (("input", ins[0]), ("output", outs[0])):
        shape = arg.shape
        if arg.type != "tensor(float)" or len(shape) != 4 or shape[1] not in (1, "1"):
            raise ArtefactError(
                f"{path}: {what} {arg.name!r} is {arg.type} {list(shape)}; an engine takes and returns "
                "float32 (N, 1, H, W) tiles"
            )
    return ins[0].name, outs[0].name


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
