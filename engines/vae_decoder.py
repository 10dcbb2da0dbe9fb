"""The VAE decoder choice: the model's full decoder (default) or a distilled small one.

A small decoder lives in the model directory beside the full VAE::

    vae_small/config.json                         # diffusers ``Decoder`` kwargs + provenance
    vae_small/diffusion_pytorch_model.safetensors # the state dict of that ``Decoder``

It is a ``diffusers.models.autoencoders.vae.Decoder`` with fewer channels that replaces
``AutoencoderKL.decoder`` only: the full VAE's encoder (ingest), ``post_quant_conv`` and
``scaling_factor`` stay, so latents, H-features and the model fingerprint are unchanged
(the retrieval database stays valid). ``config.json`` records the sha256 of the full VAE
weights it was distilled from; loading refuses a small decoder distilled from another VAE.
Trained for the toy world by ``ragturbo toyworld small-decoder`` (toyworld/small_decoder.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

VaeDecoderChoice = Literal["full", "small"]
DECODERS: tuple[str, ...] = ("full", "small")
SMALL_DIR = "vae_small"
WEIGHTS = "diffusion_pytorch_model.safetensors"
_DECODER_KEYS = (
    "in_channels", "out_channels", "up_block_types", "block_out_channels",
    "layers_per_block", "norm_num_groups", "act_fn", "mid_block_add_attention",
)


def check_choice(choice: str) -> str:
    if choice not in DECODERS:
        raise ValueError(f"vae_decoder must be one of {DECODERS}, got {choice!r}")
    return choice


def decoder_kwargs_from_vae(vae_config: Any) -> dict[str, Any]:
    """The ``Decoder`` kwargs an ``AutoencoderKL`` config builds its decoder with."""
    get = vae_config.get if isinstance(vae_config, dict) else lambda k, d=None: getattr(vae_config, k, d)
    n = len(get("block_out_channels"))
    return {
        "in_channels": int(get("latent_channels", 4)),
        "out_channels": int(get("out_channels", 3)),
        "up_block_types": list(get("up_block_types", ["UpDecoderBlock2D"] * n)),
        "block_out_channels": [int(c) for c in get("block_out_channels")],
        "layers_per_block": int(get("layers_per_block", 2)),
        "norm_num_groups": int(get("norm_num_groups", 32)),
        "act_fn": str(get("act_fn", "silu")),
        "mid_block_add_attention": bool(get("mid_block_add_attention", True)),
    }


def small_decoder_kwargs(vae_config: Any, width_div: int = 2) -> dict[str, Any]:
    """The full decoder's kwargs with every block width divided by ``width_div`` (same
    number of blocks, so the same upsampling factor); groups shrink to divide the widths."""
    kw = decoder_kwargs_from_vae(vae_config)
    widths = [max(1, c // width_div) for c in kw["block_out_channels"]]
    groups = kw["norm_num_groups"]
    while groups > 1 and any(w % groups for w in widths):
        groups //= 2
    kw.update(block_out_channels=widths, norm_num_groups=groups)
    return kw


def build_decoder(kwargs: dict[str, Any]) -> nn.Module:
    """A ``diffusers`` VAE ``Decoder`` from kwargs (unknown keys are rejected by name)."""
    from diffusers.models.autoencoders.vae import Decoder

    extra = sorted(set(kwargs) - set(_DECODER_KEYS))
    if extra:
        raise ValueError(f"unknown Decoder config keys {extra}; expected a subset of {_DECODER_KEYS}")
    return Decoder(**kwargs)


def _vae_weights(model_dir: Path) -> Path | None:
    files = sorted(p for p in (model_dir / "vae").glob("*.safetensors"))
    return files[0] if files else None


def small_decoder_dir(model_dir: str | Path) -> Path:
    """``model_dir/vae_small`` after checking its files; raises ModelDirError naming them."""
    from engines.modeldir import ModelDirError

    d = Path(model_dir).expanduser() / SMALL_DIR
    missing = [str(p) for p in (d / "config.json", d / WEIGHTS) if not p.is_file()]
    if missing:
        raise ModelDirError(
            f"vae_decoder='small' needs a distilled decoder in {d}/ (missing: {', '.join(missing)}); "
            "train one with `ragturbo toyworld small-decoder` or use vae_decoder='full'"
        )
    return d


def load_small_decoder(
    model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, dict[str, Any]]:
    """(the small ``Decoder`` in eval mode, its config.json) from ``model_dir/vae_small``."""
    from safetensors.torch import load_file

    from engines.modeldir import ModelDirError, file_sha256

    d = small_decoder_dir(model_dir)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{d / 'config.json'} is not valid JSON: {e}") from e
    want = cfg.get("distilled_from_vae_sha256")
    src = _vae_weights(Path(model_dir).expanduser())
    have = file_sha256(src) if want and src is not None else None
    if have is not None and have != want:
        raise ModelDirError(
            f"{d} was distilled from another VAE (sha256 {want[:12]}…, {src} is "
            f"{have[:12]}…): retrain it with `ragturbo toyworld small-decoder`"
        )
    try:
        dec = build_decoder({k: cfg[k] for k in _DECODER_KEYS if k in cfg})
        dec.load_state_dict(load_file(str(d / WEIGHTS)))
    except (KeyError, RuntimeError, ValueError) as e:
        raise ModelDirError(f"could not load the small VAE decoder from {d}: {e}") from e
    return dec.to(device=device, dtype=dtype).eval().requires_grad_(False), cfg


def save_small_decoder(decoder: nn.Module, kwargs: dict[str, Any], out_dir: str | Path,
                       extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` (kwargs + ``extra`` provenance) and the safetensors weights."""
    from safetensors.torch import save_file

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in decoder.state_dict().items()}
    save_file(state, str(d / WEIGHTS))
    cfg = {"_class_name": "Decoder", "_module": "diffusers.models.autoencoders.vae",
           "replaces": "vae.decoder", **kwargs, **(extra or {})}
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return d


def param_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def random_small_decoder(vae: nn.Module, width_div: int = 2, seed: int = 0) -> nn.Module:
    """A small decoder with random weights on ``vae``'s device and dtype, for speed runs
    (speed does not depend on the weights; its images mean nothing)."""
    p = next(vae.parameters())
    torch.manual_seed(seed)
    dec = build_decoder(small_decoder_kwargs(vae.config, width_div))
    return dec.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)
