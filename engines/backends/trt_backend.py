"""TensorRT backend: runs the plans of ``ragturbo build trt`` with ``execute_async_v3``.

At start it checks every plan's sidecar against the running TensorRT version, GPU
compute capability, model fingerprint and injection weight, and refuses a mismatch
(``BackendUnavailable`` naming the fields). Inputs and outputs are torch CUDA tensors
whose addresses are handed to the execution context; shapes are set per call within
the plan's optimisation profile (batches above its max are split). Written from the
TensorRT 10 Python API; not run here (TensorRT is not installed on these machines).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engines.backends.base import BackendUnavailable, GraphBackend
from engines.backends.registry import Capabilities
from engines.shapes import COMPONENTS, ShapeSpec

if TYPE_CHECKING:
    from engines.modeldir import ModelDir

log = logging.getLogger(__name__)


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.UINT8: torch.uint8,
    }
    if dt not in table:
        raise BackendUnavailable(f"TensorRT I/O dtype {dt} has no torch equivalent")
    return table[dt]


class TrtBackend(GraphBackend):
    """One deserialized engine and execution context per graph."""

    backend_name = "tensorrt"
    capabilities = Capabilities(dtypes={"cuda": ("float32",)}, vae_decoders=("full",),
                                graph_dir=("engine_dir", "ragturbo build trt"))

    @classmethod
    def open(
        cls, model_dir: str | Path | ModelDir, *, device: torch.device, dtype: torch.dtype,
        inject_weight: float, vae_decoder: str, graph_dir: str | Path | None = None, **options: Any,
    ) -> TrtBackend:
        assert graph_dir is not None, "create_backend checks the engine_dir"
        return cls(model_dir, graph_dir, device, inject_weight, **options)

    def __init__(
        self,
        model_dir: str | Path | ModelDir,
        engine_dir: str | Path,
        device: str | torch.device = "cuda",
        inject_weight: float = 0.8,
    ) -> None:
        from engines.modeldir import ModelDir
        from engines.trt_build import (
            EngineMismatch,
            TensorRTUnavailable,
            compute_capability,
            plan_path,
            require_tensorrt,
            verify_engine_dir,
        )

        try:
            trt = require_tensorrt()
        except TensorRTUnavailable as e:
            raise BackendUnavailable(str(e)) from e
        dev = torch.device(device)
        if dev.type != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailable(f"tensorrt backend needs a CUDA device; got {dev} "
                                     f"(torch.cuda.is_available()={torch.cuda.is_available()})")
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        dev = torch.device("cuda", idx)
        md = ModelDir.open(model_dir)
        try:
            sides = verify_engine_dir(
                engine_dir, trt.__version__, compute_capability(idx), md.fingerprint,
                float(inject_weight),
            )
        except (EngineMismatch, TensorRTUnavailable) as e:
            raise BackendUnavailable(str(e)) from e
        spec = ShapeSpec.from_dict(sides["unet"]["shapes"])
        super().__init__(md, dev, torch.float32, spec=spec, inject_weight=inject_weight)
        self.max_batch = spec.batch.max
        self.max_k = spec.k.max
        self.sidecars = sides
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engines: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}
        with torch.cuda.device(dev):
            for comp in COMPONENTS:
                p = plan_path(engine_dir, comp)
                engine = self._runtime.deserialize_cuda_engine(p.read_bytes())
                if engine is None:
                    raise BackendUnavailable(f"TensorRT could not deserialize {p} (see its log)")
                ctx = engine.create_execution_context()
                if ctx is None:
                    raise BackendUnavailable(f"TensorRT could not create an execution context for {p}")
                self.engines[comp] = engine
                self.contexts[comp] = ctx
        log.info("tensorrt backend on %s: plans %s (precision %s)", dev, engine_dir,
                 sides["unet"].get("precision"))

    def _run(self, component: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        trt = self._trt
        engine = self.engines[component]
        ctx = self.contexts[component]
        spec = self.spec.component(component)
        keep = []
        for name in spec.input_names:
            x = inputs[name].to(self.device, _torch_dtype(trt, engine.get_tensor_dtype(name)))
            x = x.contiguous()
            keep.append(x)
            if not ctx.set_input_shape(name, tuple(x.shape)):
                raise ValueError(f"{component}: shape {tuple(x.shape)} of {name} outside the plan's profile")
            ctx.set_tensor_address(name, x.data_ptr())
        outs = {}
        for name in spec.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            y = torch.empty(shape, device=self.device, dtype=_torch_dtype(trt, engine.get_tensor_dtype(name)))
            ctx.set_tensor_address(name, y.data_ptr())
            outs[name] = y
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {component} failed")
        # Inputs in ``keep`` are freed after this returns; the caching allocator only reuses
        # their memory for later work on this same stream, which runs after the engine.
        return outs

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(precision=self.sidecars["unet"].get("precision"),
                 tensorrt_version=self._trt.__version__)
        return d
