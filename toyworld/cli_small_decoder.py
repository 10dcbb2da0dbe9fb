"""``ragturbo toyworld small-decoder``: distil and measure the small VAE decoder
(toyworld/small_decoder.py). Heavy imports happen inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engines.default_model import SHIPPED


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add ``ragturbo toyworld small-decoder`` to the toyworld sub-app."""
    del app, bench
    from toyworld.cli import toyworld_app

    @toyworld_app.command("small-decoder")
    def small_decoder_cmd(
        model: Annotated[Path, typer.Option("--model", help="Model dir; writes MODEL/vae_small.")] = SHIPPED,
        report: Annotated[Path | None, typer.Option("--report", help="Write the full report as JSON.")] = None,
        steps: Annotated[int, typer.Option("--steps", min=1, help="Distillation steps.")] = 2400,
        width_div: Annotated[int, typer.Option("--width-div", min=1, help="Divide every block width by this.")] = 2,
        seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the training data and init.")] = 0,
    ) -> None:
        """Distil a small VAE decoder from the full one (CPU minutes) and measure it (PSNR, checker)."""
        from toyworld.small_decoder import SmallDecoderConfig, run, summary

        cfg = SmallDecoderConfig(steps=steps, width_div=width_div, seed=seed)
        typer.echo(summary(run(model, cfg, report)))
