"""ONNX Runtime: the fastest portable CPU path; uses CUDA / TensorRT execution providers when present.

On CUDA the tiles stay on the GPU through IO binding (device pointers in and out), so a GPU build of
onnxruntime does not bounce every batch through host memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sbd_stream.engines.base import Engine, EngineUnavailable
from sbd_stream.engines.card import ONNX_FILE, EngineCard, verify_file
from sbd_stream.engines.onnx_export import INPUT_NAME, OUTPUT_NAME


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
        path = verify_file(engine_dir, card, ONNX_FILE)
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
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self._cuda = want_cuda

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        if self._cuda:
            return self._run_bound(batch)
        x = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        y = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        return torch.from_numpy(y)

    def _run_bound(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self._device, torch.float32).contiguous()
        y = torch.empty_like(x)
        binding = self.session.io_binding()
        dev_id = self._device.index or 0
        binding.bind_input(INPUT_NAME, "cuda", dev_id, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", dev_id, np.float32, tuple(y.shape), y.data_ptr())
        self.session.run_with_iobinding(binding)
        return y
