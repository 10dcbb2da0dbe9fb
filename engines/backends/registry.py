"""The registry of runtime backends and what each can do (no heavy imports: settings read it).

``BACKENDS`` maps a name to the class that implements it ("module:Class", imported on first
use). What a backend can do is declared on its class as ``capabilities`` (a
``Capabilities``): the device types and dtypes it runs, the VAE decoders it serves, the
graph directory it needs, whether it searches the device copy of the database inside its
graph and whether it takes batch buckets. Settings validation (``service.settings``) and the
factory (``engines.backends.create_backend``) both ask ``refusal`` here, so a rule is written
once and a new backend is one file plus one line in ``BACKENDS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BACKENDS: dict[str, str] = {
    "fast": "engines.backends.fast_backend:FastBackend",
    "torch": "engines.backends.torch_backend:TorchBackend",
    "torch-opt": "engines.backends.torch_backend:TorchOptBackend",
    "onnxruntime": "engines.backends.ort_backend:OrtBackend",
    "tensorrt": "engines.backends.trt_backend:TrtBackend",
}
"""name -> "module:Class" of every runtime backend (the one list; ``register`` adds one)."""

AUTO: dict[str, str] = {"cuda": "fast", "cpu": "torch"}
"""The backend ``auto`` picks per device type."""

DTYPE_NAMES: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16",
                               "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class Capabilities:
    """What a backend class can do; read by settings validation and the factory.

    ``dtypes``: per device type, the dtype names it runs (the first is its default there).
    ``graph_dir``: ("onnx_dir" | "engine_dir", the command that writes it) when it runs
    graphs from a directory. ``searches``: it is a ``SearchingBackend`` (the device copy of
    the database is searched inside its graph). ``buckets``: it takes ``buckets=`` (batch
    sizes it captures one graph for).
    """

    dtypes: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"cpu": ("float32",), "cuda": ("float32", "float16", "bfloat16")})
    vae_decoders: tuple[str, ...] = ("full", "small")
    graph_dir: tuple[str, str] | None = None
    searches: bool = False
    buckets: bool = False

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.dtypes)

    def default_dtype(self, device_type: str, prefer: str | None = None) -> str:
        """``prefer`` when this backend runs it on ``device_type``, else its default there."""
        names = self.dtypes.get(device_type, ("float32",))
        return prefer if prefer in names else names[0]

    def refusal(self, name: str, device_type: str, dtype: str | None, vae_decoder: str,
                dirs: Mapping[str, Any]) -> str | None:
        """Why ``name`` cannot run this setup (one sentence naming the values), or None.

        ``dirs``: the graph directories given ({"onnx_dir": ..., "engine_dir": ...})."""
        if vae_decoder not in self.vae_decoders:
            return (f"backend {name!r} serves vae_decoder {' or '.join(map(repr, self.vae_decoders))}, got "
                    f"vae_decoder={vae_decoder!r} (its graphs hold the full decoder: use backend "
                    f"{' or '.join(n for n in BACKENDS if 'small' in capabilities(n).vae_decoders)}, "
                    "or vae_decoder='full')")
        if device_type not in self.dtypes:
            return f"backend {name!r} needs a {' or '.join(d.upper() for d in self.devices)} device, got device={device_type!r}"
        ok = self.dtypes[device_type]
        if dtype is not None and DTYPE_NAMES.get(dtype, dtype) not in ok:
            return (f"backend {name!r} runs dtype {' or '.join(ok)} on {device_type}, got dtype={dtype!r}"
                    + (" (float16 needs CUDA)" if dtype in ("float16", "fp16") and device_type == "cpu" else ""))
        if self.graph_dir is not None and dirs.get(self.graph_dir[0]) is None:
            key, made_by = self.graph_dir
            return f"backend {name!r} needs {key} (RAGTURBO_{key.upper()}), written by `{made_by}`"
        return None


def register(name: str, target: str | type) -> None:
    """Add (or replace) a backend: ``target`` is its class or "module:Class"."""
    _CLASSES.pop(name, None)
    if isinstance(target, type):
        _CLASSES[name] = target
        target = f"{target.__module__}:{target.__qualname__}"
    BACKENDS[name] = target


_CLASSES: dict[str, type] = {}


def backend_class(name: str) -> Any:
    """The class registered as ``name`` (imported now); ValueError naming the choices."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {tuple(BACKENDS)}")
    if name not in _CLASSES:
        module, cls = BACKENDS[name].split(":")
        _CLASSES[name] = getattr(importlib.import_module(module), cls)
    return _CLASSES[name]


def capabilities(name: str) -> Capabilities:
    """``backend_class(name).capabilities``."""
    caps = backend_class(name).capabilities
    assert isinstance(caps, Capabilities), f"{name}: capabilities must be a Capabilities"
    return caps
