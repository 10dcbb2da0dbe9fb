"""TensorRT plans from the ONNX export (``ragturbo build trt`` / ``make trt``).

For each graph of ``engines.shapes`` this parses ``<onnx>/<component>/model.onnx`` with
``trt.OnnxParser.parse_from_file`` (which resolves external data), adds one optimisation
profile whose min/opt/max shapes come from the shape spec, sets the precision flag
(fp16 default; bf16; fp8 — which only takes effect on Q/DQ-quantised graphs), loads and
saves a timing cache, and writes ``<out>/<component>.plan`` with a sidecar
``<component>.json`` holding the engine-cache key:

    (ONNX hash, TensorRT version, GPU compute capability, precision, profile, shape key)

A plan whose sidecar key equals the key computed now is reused (cache hit); anything
else rebuilds. The runtime compares the sidecar with the running TensorRT version, the
GPU and the model fingerprint, and refuses a mismatch with a message naming each field.

Written against the TensorRT 10 Python API (``Builder``, ``create_network``,
``OnnxParser``, ``create_optimization_profile``/``set_shape``,
``IBuilderConfig.set_flag``/``set_memory_pool_limit``/``create_timing_cache``/
``set_timing_cache``, ``build_serialized_network``). TensorRT is not installed on any
machine this was developed on, so the build itself has not been run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from engines.shapes import COMPONENTS, ShapeSpec

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "fp8")
SIDECAR_FORMAT = 1
# Fields that must equal the running environment for a plan to load.
RUNTIME_FIELDS: tuple[str, ...] = ("tensorrt_version", "compute_capability")


class TensorRTUnavailable(RuntimeError):
    """The ``tensorrt`` package (or a CUDA GPU) is missing; the message says what to install."""


class EngineMismatch(RuntimeError):
    """A plan was built for another GPU, TensorRT version, model or profile."""


def require_tensorrt() -> Any:
    """Import ``tensorrt`` or raise ``TensorRTUnavailable`` with what to do."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            "TensorRT is not installed: `pip install tensorrt` (10.x, matching your CUDA) on a "
            f"machine with an NVIDIA GPU, then re-run `ragturbo build trt` ({e})"
        ) from e
    return trt


def compute_capability(device_index: int = 0) -> str:
    """'major.minor' of a CUDA GPU via torch; TensorRTUnavailable without one."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU; torch sees none")
    major, minor = torch.cuda.get_device_capability(device_index)
    return f"{major}.{minor}"


def profile_for(spec: ShapeSpec, component: str) -> dict[str, list[list[int]]]:
    """The optimisation profile of one component as JSON-able lists: name -> [min, opt, max]."""
    return {n: [list(s) for s in mom] for n, mom in spec.profile(component).items()}


def engine_key(
    onnx_hash: str,
    tensorrt_version: str,
    compute_capability: str,
    precision: str,
    profile: dict[str, list[list[int]]],
    shape_key: str,
) -> dict[str, Any]:
    """The engine-cache key fields plus their hash (``key``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    fields: dict[str, Any] = {
        "onnx_sha256": onnx_hash,
        "tensorrt_version": tensorrt_version,
        "compute_capability": compute_capability,
        "precision": precision,
        "profile": profile,
        "shape_key": shape_key,
    }
    fields["key"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return fields


def sidecar_path(engine_dir: str | Path, component: str) -> Path:
    return Path(engine_dir) / f"{component}.json"


def plan_path(engine_dir: str | Path, component: str) -> Path:
    return Path(engine_dir) / f"{component}.plan"


def read_sidecar(engine_dir: str | Path, component: str) -> dict[str, Any]:
    p = sidecar_path(engine_dir, component)
    if not p.is_file() or not plan_path(engine_dir, component).is_file():
        raise EngineMismatch(
            f"no TensorRT plan for {component} in {engine_dir} (need {component}.plan and "
            f"{component}.json); run `ragturbo build trt --onnx DIR --out {engine_dir}`"
        )
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EngineMismatch(f"{p} is not valid JSON: {e}") from e


def check_sidecar(sidecar: dict[str, Any], expected: dict[str, Any], where: str = "plan") -> None:
    """Raise EngineMismatch naming every field of ``expected`` that differs in ``sidecar``."""
    diffs = [
        f"{k}: plan has {sidecar.get(k)!r}, here {v!r}"
        for k, v in expected.items()
        if sidecar.get(k) != v
    ]
    if diffs:
        raise EngineMismatch(
            f"{where} was built for another setup ({'; '.join(diffs)}); rebuild it here with "
            "`ragturbo build trt`"
        )


def verify_engine_dir(
    engine_dir: str | Path,
    tensorrt_version: str,
    capability: str,
    fingerprint: str,
    inject_weight: float,
) -> dict[str, dict[str, Any]]:
    """Sidecars of all components, checked against the running setup (raises EngineMismatch).

    Checks TensorRT version and GPU compute capability (a plan only runs where it was
    built), the model fingerprint (plans hold the weights) and the injection weight
    (baked into the UNet graph), and that all plans share one shape spec.
    """
    sides = {c: read_sidecar(engine_dir, c) for c in COMPONENTS}
    for comp, side in sides.items():
        if side.get("format") != SIDECAR_FORMAT:
            raise EngineMismatch(
                f"{sidecar_path(engine_dir, comp)} has format {side.get('format')}, "
                f"expected {SIDECAR_FORMAT}; rebuild with `ragturbo build trt`"
            )
        check_sidecar(
            side,
            {
                "tensorrt_version": tensorrt_version,
                "compute_capability": capability,
                "fingerprint": fingerprint,
                "inject_weight": inject_weight,
            },
            where=str(plan_path(engine_dir, comp)),
        )
    keys = {side["shape_key"] for side in sides.values()}
    if len(keys) != 1:
        raise EngineMismatch(f"plans in {engine_dir} come from different exports (shape keys {keys})")
    return sides


def _set_precision(trt: Any, config: Any, precision: str) -> None:
    flags = {"fp16": ["FP16"], "bf16": ["BF16"], "fp8": ["FP8", "FP16"], "fp32": []}[precision]
    for f in flags:
        flag = getattr(trt.BuilderFlag, f, None)
        if flag is None:
            raise TensorRTUnavailable(
                f"this TensorRT ({trt.__version__}) has no BuilderFlag.{f} (strongly typed builds "
                "take precision from the ONNX graph); use TensorRT 10.x or an ONNX in that dtype"
            )
        config.set_flag(flag)
    if precision == "fp8":
        log.warning("fp8: TensorRT uses FP8 only where the ONNX graph has Q/DQ nodes (explicit quantisation)")


def build_plan(
    onnx_path: Path,
    profile: dict[str, list[list[int]]],
    precision: str,
    timing_cache: Path | None,
    workspace_gb: float = 8.0,
) -> bytes:
    """Parse, configure and build one serialized plan (bytes). Needs TensorRT and a GPU."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + " | ".join(errs))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    _set_precision(trt, config, precision)
    prof = builder.create_optimization_profile()
    net_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if net_inputs != set(profile):
        raise RuntimeError(f"{onnx_path} inputs {sorted(net_inputs)} != shape spec {sorted(profile)}")
    for name, (mn, opt, mx) in profile.items():
        prof.set_shape(name, tuple(mn), tuple(opt), tuple(mx))
    config.add_optimization_profile(prof)
    blob = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path} (see the TensorRT log above)")
    log.info("built %s (%s) in %.0f s", onnx_path, precision, time.perf_counter() - t0)
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def expected_keys(
    onnx_dir: str | Path, precision: str, tensorrt_version: str, capability: str
) -> dict[str, dict[str, Any]]:
    """Engine keys of every component for this export, TensorRT and GPU (no TensorRT needed)."""
    from engines.export_onnx import load_manifest, onnx_component_hash

    man = load_manifest(onnx_dir, check_hashes=True)
    spec = ShapeSpec.from_dict(man["shapes"])
    return {
        comp: engine_key(
            onnx_component_hash(man, comp),
            tensorrt_version,
            capability,
            precision,
            profile_for(spec, comp),
            spec.key(),
        )
        | {
            "fingerprint": man["fingerprint"],
            "model_name": man["model_name"],
            "inject_weight": man["inject_weight"],
            "shapes": man["shapes"],
        }
        for comp in COMPONENTS
    }


def build_engines(
    onnx_dir: str | Path,
    out_dir: str | Path,
    precision: str = "fp16",
    timing_cache: str | Path | None = None,
    workspace_gb: float = 8.0,
    force: bool = False,
    device_index: int = 0,
) -> dict[str, dict[str, Any]]:
    """Build (or reuse) a plan per component; returns each component's sidecar."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    from engines.export_onnx import load_manifest

    load_manifest(onnx_dir, check_hashes=True)  # a bad --onnx dir fails before anything else
    trt = require_tensorrt()
    cap = compute_capability(device_index)
    keys = expected_keys(onnx_dir, precision, trt.__version__, cap)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tc = Path(timing_cache) if timing_cache else out / "timing.cache"
    result = {}
    for comp, key in keys.items():
        plan_p = plan_path(out, comp)
        if not force and plan_p.is_file() and sidecar_path(out, comp).is_file():
            old = json.loads(sidecar_path(out, comp).read_text())
            if old.get("key") == key["key"]:
                log.info("engine cache hit for %s (key %s)", comp, key["key"])
                result[comp] = old
                continue
        plan = build_plan(Path(onnx_dir) / comp / "model.onnx", key["profile"], precision, tc, workspace_gb)
        tmp = plan_p.with_suffix(".plan.tmp")
        tmp.write_bytes(plan)
        tmp.replace(plan_p)
        side = {"format": SIDECAR_FORMAT, **key, "plan_sha256": hashlib.sha256(plan).hexdigest()}
        sidecar_path(out, comp).write_text(json.dumps(side, indent=2))
        result[comp] = side
    return result
