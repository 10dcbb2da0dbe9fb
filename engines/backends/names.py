"""The one list of backend names (no heavy imports: settings and the CLI read it)."""

from __future__ import annotations

BACKENDS: tuple[str, ...] = ("fast", "torch", "torch-opt", "onnxruntime", "tensorrt")
