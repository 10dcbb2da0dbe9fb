"""Build a real CLIP BPE tokenizer (vocab.json + merges.txt) locally, with no download.

The small model family and the tests need a tokenizer whose files load through
``transformers.CLIPTokenizer`` exactly as SD-Turbo's do. We build one from a word
list: the 512 byte-level base symbols (with and without the ``</w>`` end-of-word
suffix), one merge chain per word so every listed word is a single token, and the
two special tokens last (so ``argmax(input_ids)`` finds the end token, as CLIP's
legacy pooling expects). Words outside the list still tokenize, letter by letter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

# Words of the toy world's grammar plus common English glue words.
DEFAULT_WORDS: tuple[str, ...] = (
    "a an the one two three four some there is are of on in with and to that this"
    " it its which sits lies next picture image photo drawing showing shows"
    " circle circles square squares triangle triangles diamond diamonds cross crosses"
    " red green blue yellow purple orange white cyan black gray grey brown pink navy"
    " beige teal olive maroon dark light small big large tiny huge left right above"
    " below under over beside background plain coloured colored shape shapes object"
    " objects single pair group"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_clip_tokenizer_files(out_dir: str | Path, words: Iterable[str] = DEFAULT_WORDS) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` into ``out_dir``.

    Returns the directory. Deterministic: the same words give byte-identical files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for sym in base + [s + "</w>" for s in base]:
        vocab.setdefault(sym, len(vocab))
    merges: list[str] = []
    seen_merges: set[str] = set()
    for word in sorted({w.lower() for w in words if w.strip()}):
        if not word.isascii():
            raise ValueError(f"tokenizer words must be ASCII, got {word!r}")
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        cur = symbols[0]
        for nxt in symbols[1:]:
            rule = f"{cur} {nxt}"
            cur = cur + nxt
            if rule not in seen_merges:
                seen_merges.add(rule)
                merges.append(rule)
                vocab.setdefault(cur, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    cfg = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS})
    )
    return out
