"""Markdown tables for ``ragturbo bench pipeline`` results."""

from __future__ import annotations

from typing import Any


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def format_table(result: dict[str, Any]) -> str:
    """One markdown table (every variant at every batch) plus the environment and extras."""
    env = result["env"]
    lines = [
        (
            f"card: {env.get('card')} | torch {env.get('torch')} | CUDA {env.get('cuda', '-')} | "
            f"cuDNN {env.get('cudnn', '-')} | diffusers {env.get('diffusers')} | "
            f"transformers {env.get('transformers')} | {env.get('date')}"
        ),
        (
            f"arch {result['options']['arch']}, dtype {result['options']['dtype']}, "
            f"k={result['store']['k']} of {result['store']['entries']} stored H-features, "
            f"GFLOP/image {result.get('gflop_per_image', '-')}"
        ),
        "",
        (
            "| variant | batch | text ms | retrieval ms | UNet(+adapter) ms | VAE ms | end to end ms "
            "| images/s | x eager | x peer | floor fraction | retrieval overhead | served ms | peak GiB | build s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(result["rows"], key=lambda r: (r["batch"], r["variant"])):
        s = r["stages_ms"]
        ovh = r.get("retrieval_overhead_pct")
        lines.append(
            f"| {r['variant']} | {r['batch']} | {_f(s.get('text'))} | {_f(s.get('retrieval'), 3)} | "
            f"{_f(s.get('unet'))} | {_f(s.get('vae'))} | {_f(r['e2e_ms'])} | {_f(r['images_per_s'], 1)} | "
            f"{_f(r.get('speedup_vs_eager'))} | {_f(r.get('speedup_vs_peer'))} | "
            f"{_f(r.get('floor_fraction'), 3)} | {_f(ovh) + ' %' if ovh is not None else '-'} | "
            f"{_f(r.get('served_e2e_ms'))} | "
            f"{_f(r.get('peak_mem_gib'))} | {_f(r.get('build_s'), 1)} |"
        )
    if result.get("small_decoder"):
        lines.insert(2, (
            f"rows '+small-vae': small VAE decoder {result['small_decoder']}, "
            f"GFLOP/image {result.get('gflop_per_image_small_vae')}"
        ))
    if result.get("parity"):
        lines.append("")
        lines.append("parity (uint8 images, fast vs eager, same inputs and weights): " + "; ".join(
            f"{k}: max {v['max_abs']}, mean {v['mean_abs']}, >2 levels {v['frac_gt2']:.3%}"
            for k, v in result["parity"].items()
        ))
    if result.get("subpixel_off"):
        lines.append("sub-pixel VAE upsampling off: " + "; ".join(
            f"b={b}: VAE {v['vae_ms']} ms, e2e {v['e2e_ms']} ms" for b, v in result["subpixel_off"].items()
        ))
    if result.get("fast_config"):
        lines.append(f"fast config: {result['fast_config']}, total build {result.get('fast_build_s')} s")
    if result.get("fast+small-vae_build_s") is not None:
        lines.append(f"fast+small-vae total build {result['fast+small-vae_build_s']} s")
    for name, err in (result.get("errors") or {}).items():
        lines.append(f"error: {name}: {err[:300]}")
    for s in result.get("skipped", []):
        lines.append(f"skipped: {s}")
    lines.append(f"model build {result.get('model_build_s')} s, whole run {result.get('elapsed_s')} s")
    return "\n".join(lines)
