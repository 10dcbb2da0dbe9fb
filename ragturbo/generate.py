"""``ragturbo generate``: one image from a prompt, no server."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

log = logging.getLogger(__name__)


def generate(
    prompt: str = typer.Argument(..., help="The text prompt."),
    out: Path = typer.Option(Path("out.png"), "-o", "--out", help="Output PNG path."),
    seed: int = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Noise seed."),
    mode: str = typer.Option("adapter", "--mode", help="Retrieval mode: adapter, inject or off."),
    model_dir: Path | None = typer.Option(
        None, "--model-dir", help="Model directory (default: RAGTURBO_MODEL_DIR or the shipped model)."
    ),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda:0."),
) -> None:
    """Write one image for PROMPT at the model's native size."""
    import os

    from PIL import Image

    from engines.default_model import default_model_dir
    from engines.pipeline import MODES, OneStepPipeline

    if mode not in MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not prompt.strip():
        raise typer.BadParameter("PROMPT must not be empty")
    mdir = model_dir or (
        Path(os.environ["RAGTURBO_MODEL_DIR"])
        if os.environ.get("RAGTURBO_MODEL_DIR")
        else default_model_dir(os.environ.get("RAGTURBO_DB_PATH", "data"))
    )
    pipe = OneStepPipeline.from_pretrained(mdir, device=device)
    # Retrieval is wired by the retrieval package; without it the image uses no neighbours.
    res = pipe([prompt], [seed], "off" if mode != "off" else mode)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(res.images[0]).save(out, format="PNG")
    typer.echo(f"wrote {out} ({res.images.shape[2]}x{res.images.shape[1]}, seed {seed})")
