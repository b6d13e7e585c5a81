"""TensorRT: strongly typed FP16 (or FP32) plans built from the engine's ONNX on the target GPU.

TensorRT 10.12+ deprecated and 11 removed weak typing (``BuilderFlag.FP16``), so precision lives in the
ONNX itself: for FP16 we export an FP16 network with FP32 inputs and outputs and build it with
``STRONGLY_TYPED``. Plans and timing caches only hold for the GPU, CUDA, TensorRT version, precision,
shapes and ONNX that made them, so the cache key names all of these. Tensors never leave the device:
inputs and outputs are torch CUDA tensors whose pointers are bound with ``set_tensor_address``.

This module needs a CUDA GPU and the ``gpu`` extra at run time; everything imports lazily so the rest
of the package works without them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sbd_stream.engines.artefact_files import read_regular, read_verified
from sbd_stream.engines.base import Engine, EngineUnavailable
from sbd_stream.engines.card import ONNX_FILE, EngineCard, load_torch_model
from sbd_stream.engines.onnx_checks import check_onnx
from sbd_stream.engines.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx

log = logging.getLogger(__name__)


def tensorrt_unavailable_reason() -> str | None:
    """Why TensorRT can't run here, or None when it can."""
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (pip install 'sbd-stream[gpu]')"
    return None


def cache_root() -> Path:
    return Path(os.environ.get("SBD_CACHE_DIR", Path.home() / ".cache" / "sbd-stream")) / "tensorrt"


@dataclass(frozen=True)
class PlanKey:
    """Everything a serialized plan depends on; its hash names the cache entry."""

    gpu: str
    compute_capability: str
    cuda: str
    tensorrt: str
    precision: str
    tile: int
    max_batch: int
    onnx_sha256: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]


def plan_key(onnx_sha: str, precision: str, tile: int, max_batch: int, device: int = 0) -> PlanKey:
    import tensorrt as trt

    props = torch.cuda.get_device_properties(device)
    return PlanKey(
        gpu=props.name,
        compute_capability=f"{props.major}.{props.minor}",
        cuda=str(torch.version.cuda),
        tensorrt=trt.__version__,
        precision=precision,
        tile=tile,
        max_batch=max_batch,
        onnx_sha256=onnx_sha,
    )


def build_plan(
    onnx_path: Path, key: PlanKey, timing_cache: Path, workspace_gib: float = 4.0, data: bytes | None = None
) -> bytes:
    """Parse the ONNX into a strongly typed network and build a serialized plan, reusing the timing cache.

    ``data``: the ONNX's bytes, already verified (``onnx_path`` then only names it in messages)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes() if data is None else data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    t, b = key.tile, key.max_batch
    profile.set_shape(INPUT_NAME, (1, 1, t, t), (b, 1, t, t), (b, 1, t, t))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build a plan for {onnx_path}")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def cached_plan(engine_dir: Path, card: EngineCard, precision: str, tile: int, max_batch: int) -> Path:
    """Path of a plan for this GPU, building (and caching) it on first use.

    The engine's ONNX is read once, verified and checked (``onnx_checks``: self-contained, the card's
    network); the parser gets those bytes, not the file's name."""
    data, fp32_sha = read_verified(engine_dir, card.checksums, ONNX_FILE, card.name)
    check_onnx(data, card, engine_dir / ONNX_FILE)
    onnx_path = engine_dir / ONNX_FILE
    if precision == "fp16":
        # an FP16 ONNX made from the verified weights, kept beside the plan cache
        onnx_path = cache_root() / "onnx" / f"{card.name}-{fp32_sha[:16]}-fp16.onnx"
        if not onnx_path.is_file():
            onnx_path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(load_torch_model(engine_dir, card), onnx_path, precision="fp16")
        data = read_regular(onnx_path)
    key = plan_key(hashlib.sha256(data).hexdigest(), precision, tile, max_batch)
    plan_path = cache_root() / f"{card.name}-{key.digest()}.plan"
    if not plan_path.is_file():
        log.info("building TensorRT plan %s (%s); this takes minutes once per GPU", plan_path.name, key)
        timing = cache_root() / f"timing-{key.gpu.replace(' ', '_')}-{key.tensorrt}.cache"
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(plan_path, build_plan(onnx_path, key, timing, data=data))
        _atomic_write(plan_path.with_suffix(".json"), json.dumps(asdict(key), indent=2).encode())
    return plan_path


class TensorRTEngine(Engine):
    kind = "tensorrt"

    def __init__(
        self,
        engine_dir: Path,
        card: EngineCard,
        device: str = "cuda",
        batch: int = 16,
        precision: str = "fp16",
        tile: int | None = None,
    ) -> None:
        reason = tensorrt_unavailable_reason()
        if reason:
            raise EngineUnavailable(f"TensorRT engine unavailable: {reason}")
        import tensorrt as trt

        dev = torch.device(device if device.startswith("cuda") else "cuda")
        super().__init__(engine_dir, card, dev, batch)
        self._precision = precision
        self.tile = tile or card.tiling.tile
        plan = cached_plan(engine_dir, card, precision, self.tile, batch)
        self.model_sha = read_verified(engine_dir, card.checksums, ONNX_FILE, card.name)[1]
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise EngineUnavailable(f"could not deserialize {plan}; delete it to rebuild")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self._device)

    @property
    def precision(self) -> str:
        return self._precision

    def warmup_side(self) -> int:
        return self.tile  # the plan takes its own tile and no other

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self._device, torch.float32).contiguous()
        n = x.shape[0]
        if n > self._batch:
            return torch.cat([self.run(x[i : i + self._batch]) for i in range(0, n, self._batch)])
        if tuple(x.shape[1:]) != (1, self.tile, self.tile):
            raise ValueError(
                f"TensorRT plan built for (N, 1, {self.tile}, {self.tile}) tiles, got {tuple(x.shape)}"
            )
        y = torch.empty_like(x)
        self._context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self._context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self._context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
        current = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(current)
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        current.wait_stream(self._stream)
        return y
