"""``ragturbo generate``: one image from a prompt, no server (retrieval via retrieval.compose)."""

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
    k: int = typer.Option(1, "--k", min=1, max=8, help="Neighbours to retrieve."),
    db: Path | None = typer.Option(
        None, "--db", help="Data directory (default RAGTURBO_DB_PATH or ./data)."
    ),
    qdrant_url: str | None = typer.Option(
        None, "--qdrant-url", help="Qdrant server URL (default: embedded Qdrant Edge)."
    ),
    min_score: float = typer.Option(
        0.0, "--min-score", min=-1.0, max=1.0, help="λ=0 for neighbours below this cosine."
    ),
    model_dir: Path | None = typer.Option(
        None,
        "--model-dir",
        help="Model directory (default: RAGTURBO_MODEL_DIR or the shipped model).",
    ),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda:0."),
) -> None:
    """Write one image for PROMPT at the model's native size."""
    import os

    from PIL import Image

    from engines.default_model import default_model_dir
    from engines.pipeline import MODES
    from retrieval.compose import GenRequest, build_text_to_image

    if mode not in MODES:
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not prompt.strip():
        raise typer.BadParameter("PROMPT must not be empty")
    dbp = db or Path(os.environ.get("RAGTURBO_DB_PATH", "data"))
    mdir = model_dir or (
        Path(os.environ["RAGTURBO_MODEL_DIR"])
        if os.environ.get("RAGTURBO_MODEL_DIR")
        else default_model_dir(dbp)
    )
    t2i = build_text_to_image(
        mdir,
        device=device,
        db_path=dbp,
        qdrant_url=qdrant_url or os.environ.get("RAGTURBO_QDRANT_URL") or None,
        qdrant_api_key=os.environ.get("RAGTURBO_QDRANT_API_KEY") or None,
        min_score=min_score,
    )
    try:
        (res,), _ = t2i.generate([GenRequest(prompt=prompt, seed=seed, mode=mode, k=k)])  # type: ignore[arg-type]
    finally:
        t2i.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(res.image).save(out, format="PNG")
    h, w = res.image.shape[:2]
    typer.echo(f"wrote {out} ({w}x{h}, seed {seed}, retrieval {res.retrieval_status})")
    for n in res.retrieved:
        typer.echo(f"  {n.score:7.4f}  {n.id}  {n.caption}")
