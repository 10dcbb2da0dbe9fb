"""Runtime backends behind one interface, chosen by name with ``create_backend``.

``fast`` (the CUDA serving engine: retrieval search inside one CUDA graph per batch
bucket; the default on CUDA), ``torch`` (eager pipeline), ``torch-opt`` (fp16/bf16, channels-last, torch.compile, CUDA
graphs per batch bucket), ``onnxruntime`` (CPU or CUDA execution provider) and
``tensorrt`` (plans from ``ragturbo build trt``). A backend that cannot start raises
``BackendUnavailable``; nothing falls back to another backend.

Owns: the ``Backend`` / ``SearchingBackend`` interface (``base``), the one list of names
(``names``) and each backend's module; the graph wrappers they run are ``engines.graphs``.
Imports: the rest of ``engines`` (``fast`` for the serving engine); never ``retrieval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.backends.base import (
    Backend,
    BackendUnavailable,
    SearchingBackend,
    SearchOutput,
    require_device,
)
from engines.backends.names import BACKENDS

if TYPE_CHECKING:
    from engines.modeldir import ModelDir

__all__ = [
    "BACKENDS", "Backend", "BackendUnavailable", "SearchOutput", "SearchingBackend", "create_backend",
]


def create_backend(
    name: str,
    model_dir: str | Path | ModelDir,
    device: str = "cpu",
    dtype: Any = None,
    onnx_dir: str | Path | None = None,
    engine_dir: str | Path | None = None,
    inject_weight: float = 0.8,
    vae_decoder: str = "full",
    **options: Any,
) -> Backend:
    """Build the named backend for ``model_dir`` on ``device``.

    ``dtype``: torch dtype (or "float32"/"float16"/"bfloat16"); default float32 except
    torch-opt on CUDA (float16). ``onnx_dir`` is required for onnxruntime, ``engine_dir``
    for tensorrt. ``options`` go to the backend (e.g. torch-opt's ``compile``).
    ``vae_decoder``: "full" or "small" (the distilled decoder in ``model_dir/vae_small``,
    engines/vae_decoder.py); the torch backends and ``fast`` run it, onnxruntime and
    tensorrt (graphs exported with the full decoder) refuse it with ``BackendUnavailable``.
    Raises ValueError for an unknown name and ``BackendUnavailable`` when it cannot start.
    ``model_dir``: a path or an opened ``engines.modeldir.ModelDir`` (each backend opens a
    path once and reads everything from that one object).
    """
    import torch

    from engines.vae_decoder import check_choice

    check_choice(vae_decoder)
    if vae_decoder != "full" and name in ("onnxruntime", "tensorrt"):
        raise BackendUnavailable(
            f"{name} runs the VAE graph exported from the full decoder; vae_decoder={vae_decoder!r} "
            "is served by the torch, torch-opt and fast backends (or use vae_decoder='full')"
        )
    if isinstance(dtype, str):
        table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in table:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(table)}")
        dtype = table[dtype]
    if name == "torch":
        if options.pop("optimize", False):
            name = "torch-opt"
        else:
            if options:
                raise ValueError(f"torch backend takes no options, got {sorted(options)}")
            from engines.backends.torch_backend import TorchBackend

            return TorchBackend.from_pretrained(model_dir, require_device(device), dtype or torch.float32, inject_weight,
                                                vae_decoder)
    if name == "fast":
        from engines.backends.fast_backend import FastBackend

        return FastBackend.from_model_dir(
            model_dir, device, dtype, inject_weight, vae_decoder=vae_decoder, **options
        )
    if name == "torch-opt":
        from engines.backends.torch_backend import TorchOptBackend

        return TorchOptBackend(model_dir, device, dtype, inject_weight, vae_decoder=vae_decoder, **options)
    if name == "onnxruntime":
        if onnx_dir is None:
            raise BackendUnavailable("onnxruntime backend needs onnx_dir (from `ragturbo export onnx`)")
        from engines.backends.ort_backend import OrtBackend

        return OrtBackend(model_dir, onnx_dir, device, dtype or torch.float32, inject_weight, **options)
    if name == "tensorrt":
        if engine_dir is None:
            raise BackendUnavailable("tensorrt backend needs engine_dir (from `ragturbo build trt`)")
        from engines.backends.trt_backend import TrtBackend

        return TrtBackend(model_dir, engine_dir, device, inject_weight, **options)
    raise ValueError(f"unknown backend {name!r}; choose from {BACKENDS}")
