"""``ragturbo train ...``: adapter training, export, teacher samples (docs/training.md).

Several GPUs: ``torchrun --nproc_per_node N -m training adapter --config FILE`` (the same
command through ``python -m training``), or ``torchrun ... $(which ragturbo) train adapter``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

train_app = typer.Typer(help="The offline adapter training job and its export.", no_args_is_help=True)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


@train_app.command("adapter")
def adapter_cmd(
    config: Path = typer.Option(..., "--config", help="YAML or TOML config (docs/training.md)."),
    steps: int | None = typer.Option(None, "--steps", help="Override `steps`."),
    output_dir: Path | None = typer.Option(None, "--output-dir", help="Override `output_dir`."),
    control: bool = typer.Option(False, "--control", help="Control run: λ = 0 (no retrieval)."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start fresh even if a checkpoint exists."),
    time_limit_s: float | None = typer.Option(None, "--time-limit-s", help="Override `time_limit_s` (regression)."),
) -> None:
    """Train the H-adapter with the decoder's LoRA (LADD) or the decoder (regression), per the config."""
    from training.adapter import train
    from training.config import load_config

    over: dict[str, object] = {}
    if steps is not None:
        over["steps"] = steps
    if output_dir is not None:
        over["output_dir"] = str(output_dir.resolve())
    if control:
        over["control"] = True
    if no_resume:
        over["resume"] = False
    if time_limit_s is not None:
        over["time_limit_s"] = time_limit_s
    try:
        cfg = load_config(config, over)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from None
    res = train(cfg)
    typer.echo(json.dumps(res.to_json(), indent=2))


@train_app.command("export")
def export_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint file or run directory (latest.pt)."),
    out: Path = typer.Option(..., "--out", help="Model directory to write."),
    student: Path | None = typer.Option(None, "--student", help="Student dir (default: from the checkpoint)."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the raw weights even if an EMA exists."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Write the adapter and the LoRA-merged UNet as a model directory the pipeline loads."""
    from training.export import export_checkpoint

    path = export_checkpoint(ckpt, out, student=student, use_ema=not no_ema, overwrite=overwrite)
    typer.echo(f"wrote model directory {path}")


@train_app.command("teacher-samples")
def teacher_samples_cmd(
    student: Path = typer.Option(..., "--student", help="Student model dir (text encoder, VAE, scheduler)."),
    teacher_unet: Path = typer.Option(..., "--teacher-unet", help="Teacher UNet folder (diffusers)."),
    prompts: Path = typer.Option(..., "--prompts", help=".txt (one a line) or .jsonl (caption)."),
    out: Path = typer.Option(..., "--out", help="Output dataset folder."),
    steps: int = typer.Option(50, "--steps", min=1, help="Sampler steps."),
    cfg: float = typer.Option(7.5, "--cfg", help="Classifier-free guidance scale."),
    scheduler: str = typer.Option("ddim", "--scheduler", help="ddim or euler."),
    seed: int = typer.Option(0, "--seed", min=0, help="Sample i starts from noise seed + i (recorded as noise_seed)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Prompts sampled together."),
    device: str = typer.Option("cpu", "--device", help="torch device."),
    fmt: str = typer.Option("folder", "--format", help="folder (PNG + captions.jsonl) or parquet."),
    prediction_type: str | None = typer.Option(None, "--prediction-type", help="Override the teacher's."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N prompts."),
) -> None:
    """Generate teacher targets with its multi-step sampler and write them as a dataset."""
    from training.teacher_samples import noise_seeds, read_prompts, sample_teacher, write_dataset

    if scheduler not in ("ddim", "euler"):
        raise typer.BadParameter(f"--scheduler must be ddim or euler, got {scheduler!r}")
    if fmt not in ("folder", "parquet"):
        raise typer.BadParameter(f"--format must be folder or parquet, got {fmt!r}")
    ps = read_prompts(prompts)[:limit]
    imgs, lats = sample_teacher(
        student, teacher_unet, ps, steps=steps, cfg=cfg, scheduler=scheduler,  # type: ignore[arg-type]
        seed=seed, batch_size=batch_size, device=device, prediction_type=prediction_type,
    )
    path = write_dataset(out, ps, imgs, lats, fmt, noise_seeds(seed, len(ps)))  # type: ignore[arg-type]
    typer.echo(f"wrote {len(ps)} teacher samples to {path}")
