from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

from engines.tokenizer_build import EOS, build_clip_tokenizer_files


def test_built_tokenizer_is_deterministic_and_loads(tmp_path: Path) -> None:
    a = build_clip_tokenizer_files(tmp_path / "a", ["red", "circle", "above"])
    b = build_clip_tokenizer_files(tmp_path / "b", ["above", "circle", "red"])
    for f in ("vocab.json", "merges.txt"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    tok = CLIPTokenizer.from_pretrained(str(a), local_files_only=True)
    ids = tok(["a red circle above"]).input_ids[0]
    # bos, "a" (a byte symbol), "red", "circle", "above", eos: each listed word is one token.
    assert len(ids) == 6
    assert ids[-1] == tok.convert_tokens_to_ids(EOS) == max(tok.get_vocab().values())
    # Unknown words still tokenize (letter by letter), never to nothing.
    assert len(tok(["zebra"]).input_ids[0]) > 3
