"""``ragturbo bench pipeline``: registers the pipeline benchmark on the bench sub-app."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    @bench.command("pipeline")
    def pipeline(
        arch: str = typer.Option("tiny", help="Model family: sd-turbo or tiny."),
        random_weights: bool = typer.Option(
            True, "--random-weights", help="Random weights of the in-code config (speed does not depend on them)."
        ),
        batch: str = typer.Option("1,4,16", help="Comma-separated batch sizes."),
        backend: str = typer.Option(
            "eager,peer,fast",
            help="Comma list: eager (diffusers baseline), peer (diffusers + torch.compile "
            "reduce-overhead), fast (engines.fast runner with retrieval).",
        ),
        json_out: Path | None = typer.Option(None, "--json", help="Write the full result as JSON."),
        device: str = typer.Option("auto", help="auto, cuda, cuda:N or cpu."),
        dtype: str = typer.Option("fp16", help="fp16, bf16 or fp32."),
        k: int = typer.Option(4, help="Retrieved neighbours per image."),
        compile_mode: str = typer.Option("whole", "--compile", help="fast runner: regional, whole or none."),
        cuda_graphs: bool = typer.Option(True, help="fast runner: CUDA graph per batch bucket."),
        subpixel_vae: bool = typer.Option(True, help="fast runner: sub-pixel VAE upsampling."),
        ablate_subpixel: bool = typer.Option(False, help="Also time the fast VAE without sub-pixel."),
        parity_batch: str = typer.Option("1,8", help="Batches for the fast-vs-eager image check."),
        min_time_s: float = typer.Option(1.0, help="Minimum timed seconds per measurement."),
        min_iters: int = typer.Option(10, help="Minimum timed iterations per measurement."),
        time_budget_s: float | None = typer.Option(None, help="Skip what would overrun this budget."),
        decoder: str = typer.Option(
            "full", help="Comma list of VAE decoders: full, small (random weights, widths / 2, "
            "speed only; rows named '<variant>+small-vae')."),
        small_decoder_variants: str | None = typer.Option(
            None, help="Variants also timed with the small decoder (default: all in --backend)."),
    ) -> None:
        """Latency/throughput table: diffusers eager vs compiled peer vs the fast runner (docs/perf.md)."""
        from engines.bench.cli_impl import bench_pipeline
        from engines.bench.report import format_table

        if not random_weights:
            raise typer.BadParameter("only --random-weights is supported (speed does not depend on weights)")
        try:
            res = bench_pipeline(
                arch, batch, backend, json_out, device, dtype, k, compile_mode, cuda_graphs,
                subpixel_vae, ablate_subpixel, parity_batch, min_time_s, min_iters, time_budget_s,
                decoder, small_decoder_variants,
            )
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        typer.echo(format_table(res))

    @bench.command("vae")
    def vae(
        out: Path = typer.Option(..., "--out", help="Directory for vae_levers.json and vae_levers.md."),
        arch: str = typer.Option("sd-turbo", help="Model family: sd-turbo or tiny."),
        batch: str = typer.Option("1,16", help="Comma-separated batch sizes."),
        budget_s: float = typer.Option(400.0, help="Skip levers that would overrun this budget."),
        autotune_budget_s: float = typer.Option(180.0, help="Cap on the max-autotune child process."),
    ) -> None:
        """VAE decoder profile and levers, each alone vs eager (issue #17, docs/perf.md)."""
        from engines.bench.vae_levers import main as vae_main

        vae_main(["--out", str(out), "--arch", arch, "--batch", batch, "--budget-s", str(budget_s),
                  "--autotune-budget-s", str(autotune_budget_s)])
