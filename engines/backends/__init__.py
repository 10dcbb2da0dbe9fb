"""Runtime backends behind one interface, chosen by name with ``create_backend``.

``fast`` (the CUDA serving engine: retrieval search inside one CUDA graph per batch
bucket; the default on CUDA), ``torch`` (eager pipeline), ``torch-opt`` (fp16/bf16, channels-last, torch.compile, CUDA
graphs per batch bucket), ``onnxruntime`` (CPU or CUDA execution provider) and
``tensorrt`` (plans from ``ragturbo build trt``). A backend that cannot start raises
``BackendUnavailable``; nothing falls back to another backend.

Owns: the ``Backend`` / ``SearchingBackend`` interface (``base``), the registry of names and
the ``Capabilities`` each class declares (``registry``) and each backend's module; the graph wrappers they run are ``engines.graphs``.
Imports: the rest of ``engines`` (``fast`` for the serving engine); never ``retrieval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.backends.base import (
    Backend,
    BackendUnavailable,
    SearchingBackend,
)
from engines.backends.registry import (
    BACKENDS,
    DTYPE_NAMES,
    Capabilities,
    backend_class,
    capabilities,
    register,
)

if TYPE_CHECKING:
    from engines.modeldir import ModelDir

__all__ = [
    "BACKENDS", "Backend", "BackendUnavailable", "Capabilities", "SearchingBackend", "backend_class",
    "capabilities", "create_backend", "register",
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
    """Build the backend registered as ``name`` for ``model_dir`` on ``device``.

    ``dtype``: torch dtype or its name ("float32", "fp16", ...); default: the backend's
    default on that device (``Capabilities.dtypes``). ``onnx_dir`` / ``engine_dir``: the
    graph directory of a backend that declares one. ``options`` go to the backend (e.g.
    torch-opt's ``compile``). ``vae_decoder``: "full" or "small" (the distilled decoder in
    ``model_dir/vae_small``, engines/vae_decoder.py) where the backend serves it.
    What the backend's ``capabilities`` refuse raises ``BackendUnavailable`` before
    anything loads; ValueError for an unknown name. ``model_dir``: a path or an opened
    ``engines.modeldir.ModelDir`` (each backend opens a path once).
    """
    import torch

    from engines.vae_decoder import check_choice

    check_choice(vae_decoder)
    cls = backend_class(name)
    caps: Capabilities = cls.capabilities
    dev = torch.device(device)
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if isinstance(dtype, str) and dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPE_NAMES)}")
    dirs = {"onnx_dir": onnx_dir, "engine_dir": engine_dir}
    why = caps.refusal(name, dev.type, dtype, vae_decoder, dirs)
    if why is not None:
        raise BackendUnavailable(why)
    dt = DTYPE_NAMES[dtype] if dtype is not None else caps.default_dtype(dev.type)
    graph_dir = dirs[caps.graph_dir[0]] if caps.graph_dir is not None else None
    return cls.open(model_dir, device=dev, dtype=getattr(torch, dt), inject_weight=inject_weight,
                    vae_decoder=vae_decoder, graph_dir=graph_dir, **options)


