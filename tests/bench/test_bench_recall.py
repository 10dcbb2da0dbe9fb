"""bench recall: exact top-k, tie-aware recall, the toy captions, and a small real Edge run."""

from __future__ import annotations

import numpy as np
import pytest

from bench.recall import (
    TIE_EPS,
    db_captions,
    exact_topk,
    format_table,
    recall_grid,
    tie_aware_recall,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_exact_topk_matches_full_sort_across_chunks() -> None:
    rng = np.random.default_rng(0)
    db, q = _unit(rng.standard_normal((1000, 16))), _unit(rng.standard_normal((20, 16)))
    s, i = exact_topk(db, q, 4, chunk=170)
    full = q @ db.T
    want = np.argsort(-full, axis=1)[:, :4]
    assert np.array_equal(i, want)
    assert np.allclose(s, np.take_along_axis(full, want, 1))


def test_ties_count_as_hits_and_wrong_rows_do_not() -> None:
    rng = np.random.default_rng(1)
    base = _unit(rng.standard_normal((50, 8)))
    db = np.concatenate([base, base[:5]])  # rows 50..54 duplicate rows 0..4: exact ties
    q = base[:5] + 0.01 * rng.standard_normal((5, 8)).astype(np.float32)
    q = _unit(q)
    ts, ti = exact_topk(db, q, 4)
    # a tied duplicate in place of the exact top-1 is a hit
    tied = [[50 + b if ti[b, 0] == b else b] for b in range(5)]
    assert tie_aware_recall(db, q, ts, tied, 1) == 1.0
    # the 2nd-best distinct row is not (no tie within TIE_EPS)
    far = [[int(np.argsort(-(db[:50] @ q[b]))[1])] for b in range(5)]
    assert all(ts[b, 0] - db[far[b][0]] @ q[b] > TIE_EPS for b in range(5))
    assert tie_aware_recall(db, q, ts, far, 1) == 0.0
    # recall@4: the exact top-4 scores 1; a short answer counts its missing rows as misses
    assert tie_aware_recall(db, q, ts, ti.tolist(), 4) == 1.0
    assert tie_aware_recall(db, q, ts, ti[:, :2].tolist(), 4) == 0.5


def test_db_captions_are_the_shipped_split_captions() -> None:
    from toyworld.models.data import make_split

    assert db_captions(40) == make_split("retrieval", 40, workers=1).captions


@pytest.fixture(scope="module")
def toy_pipe():  # the shipped toy model: real caption embeddings
    from engines.default_model import SHIPPED
    from engines.pipeline import OneStepPipeline

    if not (SHIPPED / "text_encoder").is_dir():
        pytest.skip(f"no shipped toy model at {SHIPPED}")
    return OneStepPipeline.from_pretrained(SHIPPED)


def test_edge_hnsw_recall_on_real_captions(toy_pipe, tmp_path) -> None:
    """A forced HNSW graph over 800 real caption embeddings reaches recall@1 >= 0.95 on
    held-out eval prompts at the shipped hnsw_ef; exact=True is 1 by construction."""
    from bench.recall import embed, query_prompts

    db = embed(toy_pipe, db_captions(800))
    q = embed(toy_pipe, query_prompts(40))
    rows = recall_grid(db, q, tmp_path, builds=((16, 100),), efs=(128,), shipped_threshold=False)
    hnsw, exact = rows
    assert hnsw.mode == "hnsw" and hnsw.indexed == 800
    assert hnsw.recall_at_1 >= 0.95 and hnsw.recall_at_4 >= 0.9
    assert exact.mode == "exact=True" and exact.recall_at_1 == 1.0 and exact.recall_at_4 == 1.0
    assert "| 800 |" in format_table(rows)


def test_bench_recall_and_fp8_commands_are_registered_and_run(tmp_path) -> None:
    import json

    import typer
    from typer.testing import CliRunner

    from bench.cli import register

    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    register(app, bench)
    out = tmp_path / "recall.json"
    args = ["bench", "recall", "--sizes", "300", "--queries", "10", "--builds", "16:100"]
    args += ["--hnsw-ef", "64", "--out", str(out), "--cache", str(tmp_path / "cache")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["rows"]
    assert [x["mode"] for x in rows] == ["hnsw", "exact=True", "as shipped (EdgeIndex defaults)"]
    assert rows[2]["indexed"] == 0  # 300 x 128 floats: below Qdrant's indexing threshold
    assert "| 300 |" in r.output and list((tmp_path / "cache").glob("db-300-*.npy"))
    bad = CliRunner().invoke(app, ["bench", "recall", "--builds", "16"])
    assert bad.exit_code != 0
    out8 = tmp_path / "fp8.json"
    r = CliRunner().invoke(
        app, ["bench", "fp8", "--pairs", "8", "--prompts", "1", "--k", "1", "--out", str(out8)]
    )
    assert r.exit_code == 0, r.output
    res = json.loads(out8.read_text())
    assert res["roundtrip"][0]["rel_l2_max"] < 0.035 and len(res["images"]) == 3
