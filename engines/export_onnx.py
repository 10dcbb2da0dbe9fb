"""ONNX export of the three graphs (text encoder, UNet with H-adapter, VAE decoder).

``export_onnx(model_dir, out_dir)`` writes::

    out_dir/text_encoder/model.onnx
    out_dir/unet/model.onnx + model.onnx.data      (external data, always)
    out_dir/vae_decoder/model.onnx (+ .data when > 2 GB)
    out_dir/manifest.json                         (fingerprint, opset, shapes, hashes, versions)

Shapes and names come from ``engines.shapes``; only the batch ``B`` and neighbour
count ``K`` axes are dynamic. The exporter is TorchScript-based ``torch.onnx.export(...,
dynamo=False)``: on torch 2.13 CPU it exports the tiny UNet in ~2 s and matches torch to
1e-6 on every batch/K, whereas ``dynamo=True`` took ~18 s and the resulting UNet failed
in onnxruntime at other batch sizes ("invalid expand shape"). Every graph is checked with
the path-based ``onnx.checker`` (works beyond 2 GB) and, with ``verify``, against torch
in onnxruntime on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.modeldir import file_sha256
from engines.shapes import COMPONENTS, DimRange, ShapeSpec, spec_from_pipeline

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DEFAULT_OPSET = 17
TWO_GB = 2**31
ALWAYS_EXTERNAL = ("unet",)


class ExportError(RuntimeError):
    """Export produced an invalid or inaccurate graph; the message says which and why."""


def component_files(onnx_dir: Path, comp: str) -> list[Path]:
    """The graph file first, then its external data file if any."""
    d = Path(onnx_dir) / comp
    files = [d / "model.onnx"]
    if (d / "model.onnx.data").is_file():
        files.append(d / "model.onnx.data")
    return files


def example_inputs(
    spec: ShapeSpec, comp: str, b: int, k: int, seed: int = 0, timestep: float = 999.0
) -> dict[str, torch.Tensor]:
    """Deterministic inputs of the spec's shapes (used for tracing and verification)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for t in spec.component(comp).inputs:
        shape = t.concrete(b, k)
        if t.name == "input_ids":
            out[t.name] = torch.randint(0, spec.vocab_size, shape, generator=g, dtype=torch.int64)
        elif t.name == "timestep":
            out[t.name] = torch.full(shape, float(timestep))
        elif t.name == "lam":
            out[t.name] = torch.rand(shape, generator=g)
        elif t.name == "controls":  # sample i: column i % (n+1) on (the last pattern: all off)
            n = shape[1]
            out[t.name] = (torch.arange(b)[:, None] % (n + 1) == torch.arange(n)[None, :]).float()
        else:
            out[t.name] = torch.randn(shape, generator=g)
    return out


def _graph_modules(pipe: Any) -> dict[str, torch.nn.Module]:
    from engines.graphs import TextEncoderGraph, UNetGraph, VaeDecoderGraph

    return {
        "text_encoder": TextEncoderGraph(pipe.text_encoder).eval(),
        "unet": UNetGraph(pipe.unet, pipe.hadapter, pipe.inject_weight).eval(),
        "vae_decoder": VaeDecoderGraph(pipe.vae).eval(),
    }


def _export_one(
    module: torch.nn.Module, spec: ShapeSpec, comp: str, out_dir: Path, opset: int
) -> Path:
    import onnx

    cs = spec.component(comp)
    b_trace = min(max(2, spec.batch.min), spec.batch.max)
    k_trace = min(max(2, spec.k.min), spec.k.max)
    inputs = example_inputs(spec, comp, b_trace, k_trace)
    dest = out_dir / comp
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"ragturbo-onnx-{comp}-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape-only branches
            torch.onnx.export(
                module,
                tuple(inputs[n] for n in cs.input_names),
                str(raw),
                input_names=cs.input_names,
                output_names=cs.output_names,
                dynamic_axes=cs.dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(raw), load_external_data=True)
        size = sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer)
        target = dest / "model.onnx"
        for stale in (target, dest / "model.onnx.data"):
            stale.unlink(missing_ok=True)
        if comp in ALWAYS_EXTERNAL or size >= TWO_GB:
            onnx.save_model(
                model,
                str(target),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location="model.onnx.data",
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(target))
    try:
        onnx.checker.check_model(str(target))  # path-based: handles >2 GB and external data
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected {target}: {e}") from e
    return target


def _verify(
    module: torch.nn.Module, path: Path, spec: ShapeSpec, comp: str, cases: list[tuple[int, int]]
) -> float:
    """Max abs diff of onnxruntime (CPU) vs torch over (batch, k) cases."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, (b, k) in enumerate(cases):
        inputs = example_inputs(spec, comp, b, k, seed=100 + i)
        with torch.no_grad():
            ref = module(*inputs.values())
        refs = ref if isinstance(ref, tuple) else (ref,)
        outs = sess.run(None, {n: v.numpy() for n, v in inputs.items()})
        for o, r in zip(outs, refs):
            worst = max(worst, float(np.abs(o - r.float().numpy()).max()))
    return worst


def export_onnx(
    model_dir: str | Path,
    out_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    batch: DimRange | None = None,
    k: DimRange | None = None,
    verify: bool = True,
    verify_tol: float = 1e-3,
) -> dict[str, Any]:
    """Export the three graphs of ``model_dir`` to ``out_dir`` (fp32); returns the manifest.

    ``verify`` runs each graph in onnxruntime (CPU) against torch at two (batch, K) points
    inside the range and raises ``ExportError`` when the max abs diff exceeds ``verify_tol``.
    """
    import onnx

    from engines.pipeline import OneStepPipeline

    if opset < 14:
        raise ValueError(f"opset {opset} too old; need >= 14 (scaled_dot_product_attention)")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = OneStepPipeline.from_pretrained(model_dir, device="cpu", dtype=torch.float32)
    spec = spec_from_pipeline(pipe, batch, k)
    mods = _graph_modules(pipe)
    files: dict[str, Any] = {}
    checks: dict[str, float] = {}
    for comp in COMPONENTS:
        tc = time.perf_counter()
        path = _export_one(mods[comp], spec, comp, out, opset)
        if verify:
            cases = [(spec.batch.min, spec.k.min), (min(3, spec.batch.max), spec.k.max)]
            err = _verify(mods[comp], path, spec, comp, cases)
            checks[comp] = err
            if not err <= verify_tol:
                raise ExportError(
                    f"{comp}: onnxruntime differs from torch by {err:.3g} > tolerance {verify_tol}"
                )
        files[comp] = {
            str(p.relative_to(out)): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in component_files(out, comp)
        }
        log.info("exported %s to %s in %.1f s", comp, path, time.perf_counter() - tc)
    import diffusers
    import onnxruntime
    import transformers

    manifest = {
        "format": FORMAT_VERSION,
        "model_name": pipe.name,
        "model_dir": str(Path(model_dir).resolve()),
        "fingerprint": pipe.fingerprint,
        "opset": opset,
        "dtype": "float32",
        "exporter": "torch.onnx.export(dynamo=False)",
        "inject_weight": pipe.inject_weight,
        "student_timestep": pipe.student_timestep,
        "prediction_type": pipe.prediction_type,
        "unet_output": "model_output",
        "shape_key": spec.key(),
        "shapes": spec.to_dict(),
        "files": files,
        "verify_max_abs_diff": checks,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "export_seconds": round(time.perf_counter() - t0, 2),
    }
    text = json.dumps(manifest, indent=2)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(text)
    tmp.replace(out / MANIFEST)
    return json.loads(text)  # exactly what load_manifest returns (lists, not tuples)


class ManifestError(RuntimeError):
    """An ONNX directory is missing, incomplete, or does not match what it should hold."""


def load_manifest(onnx_dir: str | Path, check_hashes: bool = False) -> dict[str, Any]:
    """Read ``manifest.json``; with ``check_hashes`` recompute every file's sha256."""
    d = Path(onnx_dir)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ManifestError(f"no {MANIFEST} in {d}; run `ragturbo export onnx --out {d}` first")
    try:
        man = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{mpath} is not valid JSON: {e}") from e
    if man.get("format") != FORMAT_VERSION:
        raise ManifestError(f"{mpath} has format {man.get('format')}, expected {FORMAT_VERSION}")
    for comp in COMPONENTS:
        for rel, meta in man["files"].get(comp, {}).items():
            p = d / rel
            if not p.is_file():
                raise ManifestError(f"{p} listed in {mpath} is missing")
            if check_hashes and file_sha256(p) != meta["sha256"]:
                raise ManifestError(f"{p} does not match the sha256 in {mpath} (modified after export?)")
        if not man["files"].get(comp):
            raise ManifestError(f"{mpath} lists no files for component {comp!r}")
    return man


def onnx_component_hash(manifest: dict[str, Any], comp: str) -> str:
    """One hash of a component's graph + external data (the engine-cache key's ONNX part)."""
    h = hashlib.sha256()
    for rel, meta in sorted(manifest["files"][comp].items()):
        h.update(f"{rel}:{meta['sha256']}\n".encode())
    return h.hexdigest()

