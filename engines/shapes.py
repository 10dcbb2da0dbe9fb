"""One shape spec per exported component; ONNX export, ``make trt`` and the runtimes read it.

Three graphs (see ``engines.graphs``):

- ``text_encoder``: input_ids (B,T) int64 -> context (B,T,D), pooled (B,D)
- ``unet``: sample (B,4,L,L), timestep (B,), context (B,T,D), h_retr (B,K,C,h,w),
  lam (B,K), controls (B,N) -> model_output (B,4,L,L) (N: ``engines.request.CONTROLS``)
- ``vae_decoder``: latent (B,4,L,L) -> image (B,3,R,R)

``B`` (batch) and ``K`` (neighbours) are the only dynamic axes; everything else is fixed
by the model's configs (native resolution R, latent size L, H-space (C,h,w), text
length T, width D). ``ShapeSpec.key()`` hashes exactly the fields that change a
compiled graph (vLLM's compile-cache key habit), so an engine built for another
spec is never reused. Pure data: no torch import, no work at import time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.modes import MAX_K
from engines.request import CONTROLS

if TYPE_CHECKING:
    from engines.modeldir import ModelDir

COMPONENTS: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder")
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)
"""Batch sizes the CUDA-graph backends (fast, torch-opt) capture unless told otherwise."""
DYNAMIC_AXES: tuple[str, ...] = ("B", "K")
UNET_INPUTS: tuple[str, ...] = ("sample", "timestep", "context", "h_retr", "lam", "controls")
"""The UNet graph's inputs, in order; ``controls`` is (B, len(engines.request.CONTROLS))."""
MAX_TEXT_LEN = 77


@dataclass(frozen=True)
class DimRange:
    """min <= opt <= max for one dynamic axis (a TensorRT optimisation profile's range)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``shape`` holds ints and the axis names 'B'/'K'."""

    name: str
    dtype: str  # "float32" | "int64"
    shape: tuple[int | str, ...]

    def concrete(self, b: int, k: int = 1) -> tuple[int, ...]:
        """The shape with B=b and K=k."""
        return tuple(b if d == "B" else k if d == "K" else int(d) for d in self.shape)

    def dynamic_axes(self) -> dict[int, str]:
        return {i: str(d) for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class ComponentSpec:
    """Input/output names, dtypes and dynamic axes of one exported graph."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensor(self, name: str) -> TensorSpec:
        for t in (*self.inputs, *self.outputs):
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}; has {self.input_names + self.output_names}")

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes`` argument."""
        return {t.name: t.dynamic_axes() for t in (*self.inputs, *self.outputs) if t.dynamic_axes()}


@dataclass(frozen=True)
class ShapeSpec:
    """Every exported graph's shapes for one model, plus the batch and neighbour ranges."""

    model_name: str
    resolution: int
    latent_channels: int
    latent_size: int
    text_len: int
    embed_dim: int
    h_shape: tuple[int, int, int]
    vocab_size: int
    batch: DimRange = DimRange(1, 4, BATCH_BUCKETS[-1])
    k: DimRange = DimRange(1, 1, MAX_K)
    components: dict[str, ComponentSpec] = field(default_factory=dict)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the VAE latent."""
        return (self.latent_channels, self.latent_size, self.latent_size)

    def component(self, name: str) -> ComponentSpec:
        if name not in self.components:
            raise KeyError(f"unknown component {name!r}; choose from {list(self.components)}")
        return self.components[name]

    def profile(self, name: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile of one component: input -> (min, opt, max) shapes."""
        comp = self.component(name)
        b, k = self.batch, self.k
        return {
            t.name: (t.concrete(b.min, k.min), t.concrete(b.opt, k.opt), t.concrete(b.max, k.max))
            for t in comp.inputs
        }

    def stale_unet(self) -> str | None:
        """Why graphs exported with this spec cannot take today's inputs (None: they can)."""
        unet = self.component("unet")
        if tuple(unet.input_names) == UNET_INPUTS and unet.tensor("controls").shape[1] == len(CONTROLS):
            return None
        return (f"the exported UNet takes {unet.input_names}; this version feeds {list(UNET_INPUTS)} "
                f"with {len(CONTROLS)} controls: re-run `ragturbo export onnx` (and `ragturbo build trt`)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["h_shape"] = list(self.h_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapeSpec:
        comps = {
            n: ComponentSpec(
                name=c["name"],
                inputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in c["inputs"]),
                outputs=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in c["outputs"]),
            )
            for n, c in d["components"].items()
        }
        return cls(
            model_name=d["model_name"],
            resolution=int(d["resolution"]),
            latent_channels=int(d["latent_channels"]),
            latent_size=int(d["latent_size"]),
            text_len=int(d["text_len"]),
            embed_dim=int(d["embed_dim"]),
            h_shape=tuple(int(x) for x in d["h_shape"]),  # type: ignore[arg-type]
            vocab_size=int(d["vocab_size"]),
            batch=DimRange(**d["batch"]),
            k=DimRange(**d["k"]),
            components=comps,
        )

    def key(self) -> str:
        """16-hex hash of the fields that change a compiled graph (names, shapes, ranges)."""
        d = self.to_dict()
        d.pop("model_name")  # a label; the weights are keyed by the ONNX file hash
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _components(
    t: int, d: int, c: int, hh: int, ww: int, lc: int, ls: int, res: int
) -> dict[str, ComponentSpec]:
    f32 = "float32"
    text = ComponentSpec(
        "text_encoder",
        inputs=(TensorSpec("input_ids", "int64", ("B", t)),),
        outputs=(TensorSpec("context", f32, ("B", t, d)), TensorSpec("pooled", f32, ("B", d))),
    )
    unet = ComponentSpec(
        "unet",
        inputs=(
            TensorSpec("sample", f32, ("B", lc, ls, ls)),
            TensorSpec("timestep", f32, ("B",)),
            TensorSpec("context", f32, ("B", t, d)),
            TensorSpec("h_retr", f32, ("B", "K", c, hh, ww)),
            TensorSpec("lam", f32, ("B", "K")),
            TensorSpec("controls", f32, ("B", len(CONTROLS))),
        ),
        outputs=(TensorSpec("model_output", f32, ("B", lc, ls, ls)),),
    )
    vae = ComponentSpec(
        "vae_decoder",
        inputs=(TensorSpec("latent", f32, ("B", lc, ls, ls)),),
        outputs=(TensorSpec("image", f32, ("B", 3, res, res)),),
    )
    return {"text_encoder": text, "unet": unet, "vae_decoder": vae}


def spec_from_configs(
    unet: dict[str, Any],
    vae: dict[str, Any],
    text_encoder: dict[str, Any],
    model_name: str = "model",
    batch: DimRange | None = None,
    k: DimRange | None = None,
) -> ShapeSpec:
    """Derive the spec from the diffusers/transformers config dicts of a model."""
    ls = int(unet["sample_size"])
    lc = int(unet.get("in_channels", 4))
    blocks = list(unet["block_out_channels"])
    f = 2 ** (len(blocks) - 1)
    if ls % f:
        raise ValueError(f"latent size {ls} not divisible by the UNet's downsampling {f}")
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    res = ls * vae_scale
    d = int(text_encoder["hidden_size"])
    cross = unet.get("cross_attention_dim")
    if cross is not None and int(cross) != d:
        raise ValueError(f"UNet cross_attention_dim {cross} != text encoder hidden_size {d}")
    t = min(int(text_encoder.get("max_position_embeddings", MAX_TEXT_LEN)), MAX_TEXT_LEN)
    c, hh, ww = int(blocks[-1]), ls // f, ls // f
    return ShapeSpec(
        model_name=model_name,
        resolution=res,
        latent_channels=lc,
        latent_size=ls,
        text_len=t,
        embed_dim=d,
        h_shape=(c, hh, ww),
        vocab_size=int(text_encoder["vocab_size"]),
        batch=batch or DimRange(1, 4, BATCH_BUCKETS[-1]),
        k=k or DimRange(1, 1, MAX_K),
        components=_components(t, d, c, hh, ww, lc, ls, res),
    )


def batch_buckets(max_batch: int, given: Sequence[int] = ()) -> tuple[int, ...]:
    """The buckets an engine serving batches of up to ``max_batch`` captures: ``given``
    (sorted, unique), else the ``BATCH_BUCKETS`` below ``max_batch`` plus ``max_batch``."""
    if given:
        return tuple(sorted({int(b) for b in given}))
    return tuple(sorted({b for b in BATCH_BUCKETS if b < max_batch} | {int(max_batch)}))


def bucket_for(n: int, buckets: Sequence[int], what: str = "batch") -> int:
    """The smallest of ``buckets`` (ascending) that holds ``n``: the size a graph runs for
    ``n`` rows (or ``n`` neighbours). ValueError past the largest."""
    for b in buckets:
        if b >= n:
            return int(b)
    raise ValueError(f"{what} {n} exceeds the largest bucket {buckets[-1] if buckets else None}")


def spec_from_arch(arch: str, batch: DimRange | None = None, k: DimRange | None = None) -> ShapeSpec:
    """Spec of an in-code family ('tiny', 'sd-turbo') without building any module."""
    from engines.configs import get_arch

    cfg = get_arch(arch)
    return spec_from_configs(cfg.unet, cfg.vae, cfg.text_encoder, arch, batch, k)


def spec_from_model_dir(
    path: str | Path | ModelDir, batch: DimRange | None = None, k: DimRange | None = None
) -> ShapeSpec:
    """Spec of a model directory (a path or an opened ``ModelDir``), from its configs only."""
    from engines.modeldir import ModelDir

    md = ModelDir.open(path)
    cfgs = md.configs
    return spec_from_configs(cfgs["unet"], cfgs["vae"], cfgs["text_encoder"], md.name, batch, k)


def spec_from_pipeline(pipe: Any, batch: DimRange | None = None, k: DimRange | None = None) -> ShapeSpec:
    """Spec of a loaded ``OneStepPipeline`` (its modules' configs)."""
    return spec_from_configs(
        dict(pipe.unet.unet.config),
        dict(pipe.vae.config),
        pipe.text_encoder.config.to_dict(),
        pipe.name,
        batch,
        k,
    )
