"""``ragturbo export onnx`` and ``ragturbo build trt`` (``make onnx``, ``make trt``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from engines.default_model import resolve_model_dir


def register(app: typer.Typer, bench: typer.Typer) -> None:
    export_app = typer.Typer(help="Export graphs (ONNX).", no_args_is_help=True)
    build_app = typer.Typer(help="Build engines (TensorRT).", no_args_is_help=True)
    app.add_typer(export_app, name="export")
    app.add_typer(build_app, name="build")

    @export_app.command("onnx")
    def export_onnx_cmd(
        out: Annotated[Path, typer.Option("--out", help="Output directory.")],
        model_dir: Annotated[
            Path | None,
            typer.Option(help="Model directory (default: RAGTURBO_MODEL_DIR or the shipped model)."),
        ] = None,
        opset: Annotated[int, typer.Option(min=14, help="ONNX opset.")] = 17,
        min_batch: Annotated[int, typer.Option(min=1, help="Smallest batch of the dynamic axis.")] = 1,
        opt_batch: Annotated[int, typer.Option(min=1, help="Batch the graphs are tuned for.")] = 4,
        max_batch: Annotated[int, typer.Option(min=1, help="Largest batch of the dynamic axis.")] = 16,
        max_k: Annotated[int, typer.Option(min=1, help="Most retrieved neighbours per image.")] = 8,
        verify: Annotated[
            bool, typer.Option("--verify/--no-verify", help="Compare with torch in onnxruntime.")
        ] = True,
    ) -> None:
        """ONNX graphs of text encoder, UNet+H-adapter and VAE decoder, plus manifest.json."""
        from engines.export_onnx import export_onnx
        from engines.shapes import DimRange

        try:
            batch = DimRange(min_batch, opt_batch, max_batch)
            k = DimRange(1, 1, max_k)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        man = export_onnx(resolve_model_dir(model_dir), out, opset=opset, batch=batch, k=k, verify=verify)
        typer.echo(
            f"wrote {out} (model {man['model_name']}, fingerprint {man['fingerprint']}, "
            f"opset {man['opset']}, {man['export_seconds']} s)"
        )
        if verify:
            typer.echo("onnxruntime vs torch max abs diff: " + json.dumps(man["verify_max_abs_diff"]))

    @build_app.command("trt")
    def build_trt_cmd(
        onnx: Annotated[Path, typer.Option("--onnx", help="Directory from `ragturbo export onnx`.")],
        out: Annotated[Path, typer.Option("--out", help="Output directory for plans.")],
        precision: Annotated[str, typer.Option(help="fp16, bf16, fp8 or fp32.")] = "fp16",
        timing_cache: Annotated[
            Path | None, typer.Option(help="Timing cache file (default: OUT/timing.cache).")
        ] = None,
        workspace_gb: Annotated[float, typer.Option(min=0.25, help="TensorRT builder workspace, GB.")] = 8.0,
        force: Annotated[bool, typer.Option(help="Rebuild even on an engine-cache hit.")] = False,
    ) -> None:
        """TensorRT plans (one optimisation profile each, from the shape spec)."""
        from engines.export_onnx import ManifestError
        from engines.trt_build import PRECISIONS, TensorRTUnavailable, build_engines

        if precision not in PRECISIONS:
            raise typer.BadParameter(
                f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}"
            )
        try:
            sides = build_engines(onnx, out, precision, timing_cache, workspace_gb, force)
        except (TensorRTUnavailable, ManifestError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from e
        for comp, side in sides.items():
            typer.echo(f"{comp}: {out / (comp + '.plan')} key {side['key']}")
