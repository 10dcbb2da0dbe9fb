"""`python -m lab.train.reproduce prepare|evalwork|summary`: the pieces of
``lab/train/gpu_reproduce.sh`` around the product's commands.

* ``prepare DIR --rows N [--start S]``: ``DIR/student`` (the shipped model with the shipped
  student's decoder and adapter, ``toyworld/assets/eval/student.safetensors``: the model the
  shipped adapter was trained from; its adapter has the query gate at g = 0) and
  ``DIR/prompts.txt`` (adapter-split captions S..S+N-1, the shipped recipe's prompts);
* ``evalwork DIR ADAPTER CONTROL``: ``DIR/eval`` as ``ragturbo toyworld eval --work`` reads it:
  ``model`` (the student), ``adapter_model`` / ``control_model`` (this run's exports),
  ``real_model`` (the shipped adapter) and ``control_plain_model`` (the shipped control), so the
  eval's ``adapter − real`` row is this run against what ships;
* ``summary EVAL_JSON``: the overall fidelity of each mode and the rows that matter, as markdown.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from engines.default_model import SHIPPED

EVAL = SHIPPED.parent / "eval"
KEY_ROWS = ("adapter-real", "adapter-control", "real-control_plain", "control-control_plain", "adapter-student")


def _model_with_variant(variant: Path | None, dest: Path, name: str) -> Path:
    """The shipped model dir with ``variant``'s decoder + adapter (None: as it ships) at ``dest``."""
    from engines.pipeline import OneStepPipeline
    from toyworld.models.variants import apply_variant

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(SHIPPED, dest, ignore=shutil.ignore_patterns(".fingerprint-cache.json", "unet", "hadapter"))
    pipe = OneStepPipeline.from_pretrained(SHIPPED)
    if variant is not None:
        apply_variant(pipe, variant)
    pipe.unet.unet.save_pretrained(str(dest / "unet"), safe_serialization=True)
    pipe.hadapter.save_pretrained(str(dest / "hadapter"), safe_serialization=True)
    meta = json.loads((dest / "ragturbo.json").read_text())
    (dest / "ragturbo.json").write_text(json.dumps({**meta, "variant": name}, indent=2))
    return dest


def prepare(d: Path, rows: int, start: int = 0) -> None:
    from toyworld.models.data import make_split

    d.mkdir(parents=True, exist_ok=True)
    _model_with_variant(EVAL / "student.safetensors", d / "student", "student")
    caps = make_split("adapter", rows, start=start, images=False).captions
    (d / "prompts.txt").write_text("\n".join(caps) + "\n")


def evalwork(d: Path, adapter: Path, control: Path) -> Path:
    w = d / "eval"
    w.mkdir(parents=True, exist_ok=True)
    for name, src in (("model", d / "student"), ("adapter_model", adapter), ("control_model", control),
                      ("real_model", SHIPPED)):
        shutil.rmtree(w / name, ignore_errors=True)
        shutil.copytree(src, w / name, ignore=shutil.ignore_patterns(".fingerprint-cache.json"))
    _model_with_variant(EVAL / "control.safetensors", w / "control_plain_model", "control_plain")
    (w / "arms").mkdir(exist_ok=True)
    (w / "arms" / "done.json").write_text("{}")  # marks a work dir of this family for `toyworld eval`
    return w


def summary(res: dict) -> str:
    """The eval's ordinary table, then the rows that say whether this run reproduces what ships."""
    from toyworld.fideval import format_table

    lines = [format_table(res), "", "| this run's key rows (points, 95 % paired bootstrap CI) | overall | held-out-rare |",
             "|---|---|---|"]
    for k in KEY_ROWS:
        c = res["comparisons"].get(k)
        if c:
            cell = [f"{100 * c[s]['diff']:+.1f} [{100 * c[s]['lo']:+.1f}, {100 * c[s]['hi']:+.1f}]"
                    for s in ("overall", "held_out_rare")]
            lines.append(f"| {k} | {cell[0]} | {cell[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lab.train.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--start", type=int, default=0)
    e = sub.add_parser("evalwork")
    e.add_argument("dir", type=Path)
    e.add_argument("adapter", type=Path)
    e.add_argument("control", type=Path)
    s = sub.add_parser("summary")
    s.add_argument("eval_json", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        prepare(a.dir, a.rows, a.start)
    elif a.cmd == "evalwork":
        print(evalwork(a.dir, a.adapter, a.control))
    else:
        print(summary(json.loads(a.eval_json.read_text())), end="")


if __name__ == "__main__":
    main()
