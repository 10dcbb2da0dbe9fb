"""Signals of fit: the λ each neighbour got, ok vs weak, and the prompt's unknown words."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engines.vocabulary import Vocabulary, load_vocabulary, prompt_words
from retrieval.compose import ImageRequest, TextToImage, build_text_to_image
from retrieval.fit import weigh, weigh_scores
from retrieval.types import Neighbour


def test_weak_when_every_neighbour_is_below_min_score(pipe, shared_db) -> None:  # type: ignore[no-untyped-def]
    db, rows = shared_db
    cap = rows[1]["caption"]
    own = db.search(pipe.encode_text([cap]).pooled, 1)[0][0]
    strict = TextToImage(pipe, db, min_score=1.0)  # only an exact match could pass
    loose = TextToImage(pipe, db, min_score=0.0)
    (weak,), _ = strict.generate([ImageRequest(cap, 3, "adapter", 3, exclude_ids=frozenset({own.id}))])
    (ok,), _ = loose.generate([ImageRequest(cap, 3, "adapter", 3, exclude_ids=frozenset({own.id}))])
    assert weak.retrieval_status == "weak" and strict.weak_total == 1
    assert len(weak.retrieved) == 3 and all(n.weight == 0.0 and not n.used for n in weak.retrieved)
    assert ok.retrieval_status == "ok" and loose.weak_total == 0
    assert [n.weight for n in ok.retrieved] == pytest.approx([n.score for n in ok.retrieved])
    assert all(n.used for n in ok.retrieved)


def test_weigh_rule() -> None:
    ns = [Neighbour("a", "x", 0.9), Neighbour("b", "y", 0.5), Neighbour("c", "z", -0.2)]
    got, status = weigh_scores(ns, 0.6)
    assert status == "ok" and [n.weight for n in got] == pytest.approx([0.9, 0.0, 0.0])
    assert [n.used for n in got] == [True, False, False]
    assert weigh_scores(ns, 0.95)[1] == "weak"
    assert weigh([], []) == ([], "weak")  # nothing found: nothing used
    assert not Neighbour("a", "x", 0.9).used  # a search result carries no λ


def test_unknown_words_come_from_the_model_vocabulary(model_dir: Path, tmp_path: Path) -> None:
    bare = build_text_to_image(model_dir, db_path=tmp_path / "none")
    (r,), _ = bare.generate([ImageRequest("a pink ring", 0, "off")])
    assert r.unknown_words is None  # no vocabulary.txt: cannot be told
    bare.close()
    mdir = tmp_path / "model"
    shutil.copytree(model_dir, mdir)
    (mdir / "vocabulary.txt").write_text("# test\na\nred\ncircle\non\nbackground\n")
    t = build_text_to_image(mdir, db_path=tmp_path / "none")
    reqs = [ImageRequest("A pink Ring, on a RED background 7", 0, "adapter"), ImageRequest("a red circle", 1, "off")]
    (a, b), _ = t.generate(reqs)
    t.close()
    assert a.unknown_words == ["pink", "ring", "7"] and b.unknown_words == []


def test_vocabulary_file_errors_name_the_file(tmp_path: Path) -> None:
    assert load_vocabulary(tmp_path) is None
    (tmp_path / "vocabulary.txt").write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="lists no words"):
        load_vocabulary(tmp_path)
    (tmp_path / "vocabulary.txt").write_text("red\nleft of\n")
    with pytest.raises(ValueError, match="single words"):
        Vocabulary.read(tmp_path / "vocabulary.txt")
    assert prompt_words("Ring ring, RING! é-cole") == ["ring", "é", "cole"]
