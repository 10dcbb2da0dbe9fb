"""``ragturbo toyworld ...`` commands: data generation and the checker report.

``toyworld_app`` is the sub-app; other toyworld modules (training recipes, eval) add
their commands to it. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

toyworld_app = typer.Typer(
    help="The procedural captioned-shapes world: data, checker, recipes, evaluation.",
    no_args_is_help=True,
)

SPLITS = ("train", "retrieval", "eval")


@toyworld_app.command("data")
def data(
    out: Annotated[Path, typer.Option("--out", help="Output folder (created if missing).")],
    split: Annotated[str, typer.Option("--split", help="train | retrieval | eval")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of examples.")] = 1000,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Split seed (same seed, same data).")
    ] = 0,
) -> None:
    """Write N examples of a split: NNNNNN.png (64x64 RGB) + captions.jsonl (file, caption,
    ...) and, for eval, prompts.txt (one prompt per line)."""
    if split not in SPLITS:
        raise typer.BadParameter(f"--split must be one of {SPLITS}, got {split!r}")
    from toyworld.splits import write_split

    jsonl = write_split(out, split, n, seed)
    typer.echo(f"wrote {n} {split} examples: {jsonl}")


@toyworld_app.command("checker-report")
def checker_report_cmd(
    n: Annotated[int, typer.Option("--n", min=2, help="Eval-split examples per condition.")] = 300,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Eval-split seed.")] = 12345,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
) -> None:
    """Accuracy of the fidelity checker on clean, degraded, mismatched and noise images."""
    from toyworld.report import checker_report, format_table

    report = checker_report(n=n, seed=seed)
    typer.echo(json.dumps(report, indent=2) if as_json else format_table(report))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the ``toyworld`` sub-app to the root app (``bench`` is unused here)."""
    del bench
    app.add_typer(toyworld_app, name="toyworld")
