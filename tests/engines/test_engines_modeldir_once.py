"""A backend start reads its model directory once: one validation, one tokenizer, one
fingerprint (the weights hashed once), whichever objects (pipeline, graph backend, shape
spec) need them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    from transformers import CLIPTokenizer

    import engines.modeldir as md

    c: Counter[str] = Counter()

    def counted(key: str, fn: Any) -> Any:
        def wrap(*a: Any, **kw: Any) -> Any:
            c[key] += 1
            return fn(*a, **kw)

        return wrap

    monkeypatch.setattr(md, "validate_model_dir", counted("validate", md.validate_model_dir))
    monkeypatch.setattr(md, "fingerprint", counted("fingerprint", md.fingerprint))
    monkeypatch.setattr(md, "file_sha256", counted("file_hash", md.file_sha256))
    tok = CLIPTokenizer.from_pretrained.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(CLIPTokenizer, "from_pretrained", classmethod(counted("tokenizer", tok)))
    return c


@pytest.mark.parametrize("name", ["torch", "torch-opt", "fast"])
def test_backend_start_reads_the_model_dir_once(name: str, tiny_model_dir: Path, tmp_path: Path,
                                                counts: Counter[str]) -> None:
    import shutil

    from engines.backends import create_backend

    # a copy without the fingerprint cache other tests may have written: every file is hashed
    d = shutil.copytree(tiny_model_dir, tmp_path / "m", ignore=shutil.ignore_patterns(".fingerprint-cache.json"))
    n_files = sum(1 for c in ("text_encoder", "tokenizer", "unet", "vae") for f in (d / c).rglob("*") if f.is_file())
    be = create_backend(name, d)
    assert counts["validate"] == 1
    assert counts["tokenizer"] == 1
    assert counts["fingerprint"] == 1
    assert counts["file_hash"] == n_files  # each feature file hashed once
    assert be.fingerprint and be.h_shape


def test_modeldir_is_not_read_again_when_passed(tiny_model_dir: Path, counts: Counter[str]) -> None:
    from engines.modeldir import ModelDir
    from engines.pipeline import OneStepPipeline
    from engines.shapes import spec_from_model_dir

    m = ModelDir.open(tiny_model_dir)
    assert ModelDir.open(m) is m
    pipe = OneStepPipeline.from_pretrained(m)
    spec = spec_from_model_dir(m)
    assert counts["validate"] == 1 and counts["tokenizer"] == 1 and counts["fingerprint"] == 1
    assert pipe.fingerprint == m.fingerprint and spec.h_shape == pipe.h_shape and pipe.tokenizer is m.tokenizer
