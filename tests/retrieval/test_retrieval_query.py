"""`ragturbo search` loads the text encoder and tokenizer only, and scores as the service does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from conftest import make_pairs, write_jsonl
from typer.testing import CliRunner


def _app() -> typer.Typer:
    from ragturbo.search import search
    from retrieval.cli import register

    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    register(app, bench)
    app.command("search")(search)
    return app


def test_query_encoder_gives_the_pipelines_caption_vectors(model_dir: Path, pipe: Any) -> None:
    from retrieval.query import QueryEncoder

    enc = QueryEncoder(model_dir)
    prompts = ["a red circle", "two small blue squares on a gray background"]
    assert torch.equal(enc.pooled(prompts), pipe.encode_text(prompts).pooled)
    assert (enc.fingerprint, enc.embed_dim) == (pipe.fingerprint, pipe.embed_dim)
    assert (enc.h_shape, enc.latent_shape) == (tuple(pipe.h_shape), tuple(pipe.latent_shape))


def test_search_never_loads_the_unet_or_the_vae(model_dir: Path, pipe: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers

    from retrieval.db import DbConfig, open_db_for_pipeline

    rows = make_pairs(tmp_path / "imgs", 4)
    caps = write_jsonl(tmp_path / "caps.jsonl", rows)
    db = tmp_path / "db"
    r = CliRunner().invoke(_app(), ["ingest", "--images", str(tmp_path / "imgs"), "--captions", str(caps),
                                    "--db", str(db), "--model-dir", str(model_dir)])
    assert r.exit_code == 0, r.output

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("search loaded a UNet or VAE")

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", refuse)
    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", refuse)
    r = CliRunner().invoke(_app(), ["search", rows[1]["caption"], "--k", "2", "--json", "--db", str(db),
                                    "--model-dir", str(model_dir)])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)  # nothing but the answer: no progress bar
    monkeypatch.undo()
    database = open_db_for_pipeline(DbConfig(db_path=db), pipe)
    try:
        want = database.search(pipe.encode_text([rows[1]["caption"]]).pooled, 2)[0]
    finally:
        database.close()
    assert [g["id"] for g in got] == [n.id for n in want]
    assert [g["score"] for g in got] == pytest.approx([n.score for n in want], abs=1e-6)
