"""``ragturbo bench pipeline | service | retrieval | recall | fp8``: the benchmarks users run.

``register(app, bench)`` adds them to the CLI's ``bench`` sub-app; heavy imports happen
inside the commands. Every command writes its table to stdout (and JSON where asked).
"""

from __future__ import annotations

from pathlib import Path

import typer

from engines.modes import MAX_K


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the benchmark commands to the ``bench`` sub-app (``app`` is unused)."""
    del app
    from bench.service import bench_service

    bench.command("pipeline")(bench_pipeline_cmd)
    bench.command("service")(bench_service)
    bench.command("retrieval")(bench_retrieval_cmd)
    bench.command("recall")(bench_recall_cmd)
    bench.command("fp8")(bench_fp8_cmd)


def bench_pipeline_cmd(
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
    from bench.options import bench_pipeline
    from bench.report import format_table

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


def bench_fp8_cmd(
    pairs: int = typer.Option(1024, "--pairs", min=8, help="Real toy pairs (rendered + encoded)."),
    prompts: int = typer.Option(128, "--prompts", min=1, help="Eval prompts generated per variant."),
    k: int = typer.Option(2, "--k", min=1, max=MAX_K, help="Neighbours retrieved per prompt."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Default: the shipped toy model."),
    out: Path = typer.Option(Path("data/bench/fp8.json"), "--out", help="JSON output."),
) -> None:
    """Float8 vs float16 H-features of the device index: round-trip error, images, memory."""
    import json

    from bench.fp8 import run_fp8

    res = run_fp8(n=pairs, prompts=prompts, k=k, model_dir=str(model_dir) if model_dir else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    typer.echo(json.dumps(res, indent=2))
    typer.echo(f"wrote {out}")


def bench_recall_cmd(
    sizes: str = typer.Option("10000,100000", "--sizes", help="Comma-separated database sizes."),
    queries: int = typer.Option(500, "--queries", min=10, help="Eval prompts used as queries."),
    builds: str = typer.Option(
        "16:100,32:200", "--builds", help="Comma-separated HNSW builds m:ef_construct."
    ),
    hnsw_ef: str = typer.Option("16,32,64,128,256", "--hnsw-ef", help="Search beams to measure."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Default: the shipped toy model."),
    out: Path = typer.Option(Path("data/bench/recall.json"), "--out", help="JSON output."),
    cache: Path = typer.Option(
        Path("data/bench/recall-cache"), "--cache", help="Embedding cache (.npy)."
    ),
) -> None:
    """Qdrant Edge recall@1/@4 and latency vs exact cosine on real caption embeddings."""
    from bench.recall import format_table, run_recall

    try:
        ns = [int(s.replace("_", "")) for s in sizes.split(",") if s.strip()]
        bl = [tuple(int(x) for x in b.split(":")) for b in builds.split(",") if b.strip()]
        efs = [int(e) for e in hnsw_ef.split(",") if e.strip()]
    except ValueError:
        raise typer.BadParameter("--sizes, --builds (m:ef_construct), --hnsw-ef: integers") from None
    if any(len(b) != 2 for b in bl):
        raise typer.BadParameter(f"--builds must be m:ef_construct pairs, got {builds!r}")
    rows = run_recall(
        ns, queries, out, model_dir=model_dir, builds=bl, efs=efs, cache=cache  # type: ignore[arg-type]
    )
    typer.echo(format_table(rows))
    typer.echo(f"wrote {out}")


def bench_retrieval_cmd(
    sizes: str = typer.Option(
        "10000,100000,630000", "--sizes", help="Comma-separated database sizes."
    ),
    queries: int = typer.Option(500, "--queries", min=10, help="Queries per size."),
    dim: int = typer.Option(1024, "--dim", min=2, help="Vector width of the synthetic pairs."),
    out: Path = typer.Option(Path("data/bench/retrieval.json"), "--out", help="JSON output."),
    hnsw_m: int = typer.Option(16, "--hnsw-m", help="HNSW graph degree (Qdrant m)."),
    ef_construct: int = typer.Option(100, "--ef-construct", help="HNSW build beam width (Qdrant ef_construct)."),
    hnsw_ef: str = typer.Option(
        "64,128,512", "--hnsw-ef", help="Comma-separated search beams to measure."
    ),
    local_max: int = typer.Option(
        100_000, "--local-max", help="Largest size for qdrant-client local mode."
    ),
    hnsw_max: int | None = typer.Option(
        None, "--hnsw-max", help="Above this size, skip the HNSW build (exact scan only)."
    ),
    queries_exact: int = typer.Option(
        100, "--queries-exact", min=1, help="Queries for the exact/local rows."
    ),
) -> None:
    """Query latency p50/p99 and recall@1 vs exact search on random unit vectors."""
    from bench.retrieval import format_table, run_bench

    try:
        ns = [int(s.replace("_", "")) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"--sizes must be comma-separated integers, got {sizes!r}"
        ) from None
    efs = [int(e) for e in hnsw_ef.split(",") if e.strip()]
    rows = run_bench(
        ns,
        queries,
        out,
        dim=dim,
        hnsw_m=hnsw_m,
        ef_construct=ef_construct,
        hnsw_ef=efs,
        local_max=local_max,
        hnsw_max=hnsw_max,
        local_queries=max(1, queries_exact // 2),
    )
    typer.echo(format_table(rows))
    typer.echo(f"wrote {out}")
