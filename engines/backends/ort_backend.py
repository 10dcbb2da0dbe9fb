"""onnxruntime backend: the three exported graphs in ``InferenceSession``s.

Device ``cpu`` uses the CPU execution provider; ``cuda[:i]`` requires the CUDA execution
provider (the ``onnxruntime-gpu`` wheel) and fails with ``BackendUnavailable`` when it is
absent — it never quietly runs on CPU. On CUDA, inputs and outputs stay on the GPU
through IO binding over torch tensors. The export's manifest must come from the same
model files (fingerprint) and the same injection weight.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engines.backends.base import BackendUnavailable, GraphBackend
from engines.backends.registry import Capabilities
from engines.shapes import COMPONENTS, ShapeSpec

if TYPE_CHECKING:
    from engines.modeldir import ModelDir

log = logging.getLogger(__name__)

_NP = {"float32": np.float32, "int64": np.int64}


class OrtBackend(GraphBackend):
    """onnxruntime sessions over an export directory (fp32 graphs)."""

    backend_name = "onnxruntime"
    capabilities = Capabilities(dtypes={"cpu": ("float32",), "cuda": ("float32",)}, vae_decoders=("full",),
                                graph_dir=("onnx_dir", "ragturbo export onnx"))

    @classmethod
    def open(
        cls, model_dir: str | Path | ModelDir, *, device: torch.device, dtype: torch.dtype,
        inject_weight: float, vae_decoder: str, graph_dir: str | Path | None = None, **options: Any,
    ) -> OrtBackend:
        assert graph_dir is not None, "create_backend checks the onnx_dir"
        return cls(model_dir, graph_dir, device, dtype, inject_weight, **options)

    def __init__(
        self,
        model_dir: str | Path | ModelDir,
        onnx_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        inject_weight: float = 0.8,
        intra_op_threads: int | None = None,
    ) -> None:
        from engines.export_onnx import ManifestError, load_manifest

        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise BackendUnavailable(f"onnxruntime is not installed: {e}") from e
        if dtype != torch.float32:
            raise BackendUnavailable(
                f"onnxruntime backend runs the fp32 export; dtype {dtype} is not supported"
            )
        dev = torch.device(device)
        available = ort.get_available_providers()
        if dev.type == "cuda" and "CUDAExecutionProvider" not in available:
            raise BackendUnavailable(
                "onnxruntime on CUDA needs the CUDA execution provider (install onnxruntime-gpu); "
                f"this onnxruntime {ort.__version__} has only {available}"
            )
        try:
            man = load_manifest(onnx_dir)
        except ManifestError as e:
            raise BackendUnavailable(str(e)) from e
        spec = ShapeSpec.from_dict(man["shapes"])
        super().__init__(model_dir, dev, torch.float32, spec=spec, inject_weight=inject_weight)
        if man["fingerprint"] != self.fingerprint:
            raise BackendUnavailable(
                f"ONNX export in {onnx_dir} is of model fingerprint {man['fingerprint']}, but "
                f"{self.model_dir} has {self.fingerprint}; re-run `ragturbo export onnx`"
            )
        if abs(float(man.get("inject_weight", 0.8)) - self.inject_weight) > 1e-9:
            raise BackendUnavailable(
                f"ONNX UNet was exported with inject_weight {man['inject_weight']}, "
                f"backend asked for {self.inject_weight}"
            )
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable(f"device {dev} requested but torch sees no CUDA device")
            idx = dev.index if dev.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", idx)
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": idx}), "CPUExecutionProvider"]
        elif dev.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise BackendUnavailable(f"onnxruntime backend supports cpu and cuda, not {dev}")
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        root = Path(onnx_dir)
        self.sessions: dict[str, Any] = {}
        for comp in COMPONENTS:
            path = root / comp / "model.onnx"
            try:
                sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
                raise BackendUnavailable(f"onnxruntime could not load {path}: {e}") from e
            if dev.type == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
                raise BackendUnavailable(
                    f"onnxruntime did not enable CUDA for {path} (providers {sess.get_providers()})"
                )
            self.sessions[comp] = sess
        self.manifest = man
        log.info("onnxruntime backend on %s with %s", self.device, providers)

    def _run(self, component: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.spec.component(component)
        sess = self.sessions[component]
        if self.device.type == "cpu":
            feeds = {n: inputs[n].detach().cpu().numpy() for n in spec.input_names}
            outs = sess.run(spec.output_names, feeds)
            return {n: torch.from_numpy(o) for n, o in zip(spec.output_names, outs)}
        return self._run_cuda(sess, spec, inputs)

    def _run_cuda(self, sess: Any, spec: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """IO binding over torch CUDA tensors (no host round trip)."""
        idx = self.device.index or 0
        binding = sess.io_binding()
        keep = []
        for t in spec.inputs:
            x = inputs[t.name].to(self.device).contiguous()
            keep.append(x)
            binding.bind_input(t.name, "cuda", idx, _NP[t.dtype], list(x.shape), x.data_ptr())
        b = int(inputs[spec.inputs[0].name].shape[0])
        k = int(inputs["h_retr"].shape[1]) if "h_retr" in inputs else 1
        outs = {}
        for t in spec.outputs:
            y = torch.empty(t.concrete(b, k), device=self.device, dtype=torch.float32)
            binding.bind_output(t.name, "cuda", idx, _NP[t.dtype], list(y.shape), y.data_ptr())
            outs[t.name] = y
        torch.cuda.current_stream(self.device).synchronize()
        sess.run_with_iobinding(binding)
        return outs
