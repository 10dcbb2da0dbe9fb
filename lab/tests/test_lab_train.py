"""``lab/train``: the GPU reproduction script parses, and its summary names the rows that say
whether the product job reproduced what ships."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_reproduce_script_parses_and_runs_the_product_commands() -> None:
    script = ROOT / "lab" / "train" / "gpu_reproduce.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for cmd in ("train teacher-samples", "train adapter --config", "--control", "train export", "toyworld eval --work"):
        assert cmd in text, cmd


def test_summary_keeps_the_table_and_adds_the_rows_against_what_ships() -> None:
    from lab.train.reproduce import summary

    def mode(v: float) -> dict:
        return {"overall": v, "realism": 0.8, **{g: {"overall": v} for g in
                ("common", "seen_rare", "held_out_rare", "nb_full", "nb_partial")}}

    def diff(d: float) -> dict:
        return {s: {"diff": d, "lo": d - 0.01, "hi": d + 0.01, "n": 400} for s in ("overall", "held_out_rare")}

    res = {"modes": {"adapter": mode(0.53), "real": mode(0.536), "control": mode(0.515)},
           "comparisons": {"adapter-real": diff(-0.006), "adapter-control": diff(0.015)}}
    out = summary(res)
    assert "| adapter | 1 | 53.0 |" in out
    assert "| adapter-real | -0.6 [-1.6, +0.4] | -0.6 [-1.6, +0.4] |" in out
    assert "| adapter-control | +1.5 [+0.5, +2.5]" in out
