"""``ragturbo toyworld eval | train-concepts | eval-prompts | retrieval-data | embedded-db |
embedded-assets | small-decoder``: the shipped model's evaluation, its retrieval data and
database, and its small decoder.

``register(app, bench)`` adds the commands to ``toyworld.cli.toyworld_app`` (the
sub-app itself is registered by ``toyworld.cli``). Heavy imports happen inside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def eval_cmd(
    prompts: Annotated[Path | None, typer.Option("--prompts", help="One prompt per line (the eval split's held-out prompts).")] = None,
    work: Annotated[Path | None, typer.Option("--work", help="Work dir of a staged run (model/, <arm>_model/, teacher/); default: the shipped models (toyworld/assets).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds per prompt.")] = 4,
    n_retrieval: Annotated[int, typer.Option("--n-retrieval", min=1, help="Retrieval-split size.")] = 10000,
    modes: Annotated[str, typer.Option("--modes", help="Comma list of modes (default: every one the models allow).")] = "",
    device: Annotated[str, typer.Option("--device", help="torch device; auto: cuda if available, else cpu.")] = "auto",
    concepts: Annotated[bool, typer.Option("--concepts", help="Held-out concepts instead: drawn rate before/after ingesting N pairs of each.")] = False,
    concept_ns: Annotated[str, typer.Option("--concept-ns", help="With --concepts: pairs ingested per concept, comma list.")] = "0,5,20,100",
    concept_prompts: Annotated[int, typer.Option("--concept-prompts", min=1, help="With --concepts: prompts per concept.")] = 10,
) -> None:
    """Fidelity of every mode (teacher, student, inject, adapter, control, shuffled, oracle) on
    PROMPTS, with common / seen-rare / held-out-rare splits and paired bootstrap intervals; with
    ``--concepts``, the held-out-concept table (``toyworld.concept_eval``) instead."""
    if concepts:
        _concepts_eval(work, seeds, n_retrieval, device, concept_ns, concept_prompts, as_json)
        return
    if prompts is None:
        raise typer.BadParameter("--prompts is required (or pass --concepts)")
    if not prompts.is_file():
        raise typer.BadParameter(f"--prompts {prompts} does not exist")
    lines = [ln.strip() for ln in prompts.read_text().splitlines() if ln.strip()]
    from toyworld.fideval import ALL_MODES
    from toyworld.fideval import evaluate as fid_evaluate
    from toyworld.fideval import format_table as fid_table

    want = tuple(m for m in modes.split(",") if m) or None
    if bad := [m for m in want or () if m not in ALL_MODES]:
        raise typer.BadParameter(f"--modes: unknown mode(s) {bad}; choose from {', '.join(ALL_MODES)}")
    suite = _suite(work, device)
    res = fid_evaluate(lines, suite, seeds, n_retrieval, modes=want)
    typer.echo(json.dumps(res, indent=2) if as_json else fid_table(res))


def prompts_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output prompts file.")],
    n_common: Annotated[int, typer.Option("--common", min=0, help="Prompts from the common part of the eval split.")] = 200,
    n_long_tail: Annotated[int, typer.Option("--long-tail", min=0, help="Prompts from its long tail (rare pairs).")] = 200,
) -> None:
    """Write the eval split's held-out prompts (common first, then long-tail), one a line."""
    from toyworld.models.data import eval_prompts

    p, _ = eval_prompts(n_common, n_long_tail)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(p) + "\n")
    typer.echo(f"wrote {len(p)} prompts to {out}")


def retrieval_data_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for PNGs + captions.jsonl (then: ragturbo ingest).")] = Path("data/toyworld-retrieval"),
    n: Annotated[int, typer.Option("--n", min=1, help="Pairs of the retrieval split to write.")] = 10000,
) -> None:
    """Regenerate the retrieval split the shipped model was evaluated with (deterministic)."""
    from toyworld.pair_build import write_retrieval_folder

    write_retrieval_folder(out, n)
    typer.echo(f"wrote {n} pairs to {out}; next: ragturbo ingest --images {out} --captions {out}/captions.jsonl")


def embedded_db_cmd(
    db: Annotated[Path | None, typer.Option("--db", help="Data directory (default RAGTURBO_DB_PATH or ./data).")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Pairs of the retrieval split to ingest.")] = 10000,
    exact: Annotated[bool, typer.Option("--exact", help="Render and encode every pair here (about a minute on 2 cores) instead of loading the precomputed pairs.")] = False,
) -> None:
    """Build (first start) or refresh the shipped model's retrieval database; no-op when current."""
    from retrieval.cli import db_path
    from toyworld.embedded_db import ensure_embedded_db

    typer.echo("embedded retrieval DB: " + ensure_embedded_db(db_path(db), n, exact=exact))


def embedded_assets_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (the shipped one: toyworld/assets/retrieval).")] = Path("toyworld/assets/retrieval"),
    n: Annotated[int, typer.Option("--n", min=1, help="Pairs of the retrieval split to precompute.")] = 10000,
) -> None:
    """Precompute the embedded database's pairs for the shipped model (exact fp32 build, then the compact form)."""
    from toyworld.precomputed import write_assets

    meta = write_assets(out, n)
    typer.echo(f"wrote {n} pairs to {out} (encoder fingerprint {meta['key']}; "
               f"H rel. L2 mean {meta['rel_l2_against_fp16']['h_mean']:.4f})")


def _suite(work: Path | None, device: str) -> Any:
    """The eval's models: a staged run's work dir, or the shipped ones."""
    from toyworld.fideval import Suite
    from toyworld.models.common import pick_device

    dev = pick_device(device)
    return Suite.from_workdir(work, dev) if work is not None else Suite.from_shipped(dev)


def _concepts_eval(work: Path | None, seeds: int, n_retrieval: int, device: str, ns: str, n_prompts: int,
                   as_json: bool) -> None:
    from toyworld.concept_eval import evaluate_concepts, format_concepts
    from toyworld.fideval import Database

    try:
        want = tuple(int(x) for x in ns.split(",") if x.strip())
    except ValueError as e:
        raise typer.BadParameter(f"--concept-ns must be a comma list of integers, got {ns!r}") from e
    suite = _suite(work, device)
    missing = [v for v in ("adapter", "control") if v not in suite.pipes]
    if missing:
        raise typer.BadParameter(f"--concepts needs the adapter and control variants; {suite.source} lacks {missing}")
    db = Database.build(suite.pipes["adapter"], n_retrieval)
    res = evaluate_concepts({k: suite.pipes[k] for k in ("adapter", "control")}, db, want, n_prompts, seeds)
    typer.echo(json.dumps(res, indent=2) if as_json else format_concepts(res))


def train_concepts_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run dir: rows, database cache, checkpoints, summary.json.")] = Path("out/concepts"),
    minutes: Annotated[float, typer.Option("--minutes", min=0.1, help="Training wall time (the schedule follows it).")] = 30.0,
    n_rows: Annotated[int, typer.Option("--rows", min=16, help="Adapter-split items to turn into rows.")] = 2500,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Rows a step.")] = 64,
    ship: Annotated[bool, typer.Option("--ship", help="Write the adapter arm into toyworld/assets/model and the control into assets/eval.")] = False,
) -> None:
    """Concept-dropout training (``toyworld.models.concept_train``) of the adapter and its control."""
    import shutil

    from toyworld.fideval import SHIPPED_EVAL
    from toyworld.models.concept_train import ship_variant, train_concepts

    summ = train_concepts(out, n_rows=n_rows, minutes=minutes, batch_size=batch_size)
    typer.echo(json.dumps({k: v for k, v in summ.items() if k not in ("adapter", "control")}, default=str))
    if ship:
        typer.echo(json.dumps(ship_variant(out / "adapter.safetensors")))
        shutil.copyfile(out / "control.safetensors", SHIPPED_EVAL / "control.safetensors")


def small_decoder_cmd(
    model: Annotated[Path | None, typer.Option("--model", help="Model dir; writes MODEL/vae_small (default: the shipped one).")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the full report as JSON.")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Distillation steps.")] = 2400,
    width_div: Annotated[int, typer.Option("--width-div", min=1, help="Divide every block width by this.")] = 2,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the training data and init.")] = 0,
) -> None:
    """Distil a small VAE decoder from the full one (CPU minutes) and measure it (PSNR, checker)."""
    from engines.default_model import SHIPPED
    from toyworld.small_decoder import SmallDecoderConfig, run, summary

    cfg = SmallDecoderConfig(steps=steps, width_div=width_div, seed=seed)
    typer.echo(summary(run(model or SHIPPED, cfg, report)))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add these commands to the ``toyworld`` sub-app."""
    del app, bench
    from toyworld.cli import toyworld_app

    toyworld_app.command("eval")(eval_cmd)
    toyworld_app.command("train-concepts")(train_concepts_cmd)
    toyworld_app.command("eval-prompts")(prompts_cmd)
    toyworld_app.command("retrieval-data")(retrieval_data_cmd)
    toyworld_app.command("embedded-db")(embedded_db_cmd)
    toyworld_app.command("embedded-assets")(embedded_assets_cmd)
    toyworld_app.command("small-decoder")(small_decoder_cmd)
