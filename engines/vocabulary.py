"""The words a model was trained on, declared by its model directory, and the prompt words
outside them.

A model directory may hold ``vocabulary.txt``: one lower-case word a line (blank lines and
lines starting with ``#`` are ignored). The service then reports, for every request, the
prompt's words that are not in it (``unknown_words``), so a client can tell content the
text names to the model from content only a retrieved neighbour can bring. A model
without the file (SD-Turbo: its CLIP text encoder saw open-ended web text, so no closed
list exists) reports ``None``: unknown words cannot be told.

Words are runs of Unicode word characters (``\\w+``) of the lower-cased prompt, so
"Ring," is the word "ring"; numbers count as words.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

VOCABULARY_FILE = "vocabulary.txt"
_WORD = re.compile(r"\w+")


def prompt_words(prompt: str) -> list[str]:
    """The prompt's words, lower-cased, in order, each once."""
    return list(dict.fromkeys(_WORD.findall(prompt.lower())))


@dataclass(frozen=True)
class Vocabulary:
    """A model's known words."""

    words: frozenset[str]
    source: str

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` the model was not trained on, in prompt order, each once."""
        return [w for w in prompt_words(prompt) if w not in self.words]

    @classmethod
    def read(cls, path: str | Path) -> Vocabulary:
        p = Path(path)
        lines = (ln.strip().lower() for ln in p.read_text(encoding="utf-8").splitlines())
        words = frozenset(ln for ln in lines if ln and not ln.startswith("#"))
        if not words:
            raise ValueError(f"{p} lists no words")
        bad = sorted(w for w in words if _WORD.fullmatch(w) is None)
        if bad:
            raise ValueError(f"{p}: entries must be single words (\\w+), got {bad[:5]}")
        return cls(words, str(p))


def load_vocabulary(model_dir: str | Path) -> Vocabulary | None:
    """``<model_dir>/vocabulary.txt`` or None when the model declares none."""
    p = Path(model_dir) / VOCABULARY_FILE
    if not p.is_file():
        log.info("model %s declares no vocabulary (%s): unknown_words not reported", model_dir, VOCABULARY_FILE)
        return None
    voc = Vocabulary.read(p)
    log.info("model vocabulary: %d words (%s)", len(voc.words), p)
    return voc


def write_vocabulary(path: str | Path, words: Iterable[str], comment: str) -> Path:
    """Write ``words`` (sorted, once each) to ``path`` with a ``#`` comment line first."""
    p = Path(path)
    ws = sorted({w.strip().lower() for w in words if w.strip()})
    p.write_text(f"# {comment}\n" + "\n".join(ws) + "\n", encoding="utf-8")
    return p
