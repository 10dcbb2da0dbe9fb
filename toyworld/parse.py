"""Parse a prompt written in the toy grammar back to a ``SceneSpec``.

The parser accepts every phrasing ``toyworld.grammar`` produces (held-out ones too),
case-insensitively, with surrounding punctuation, "grey"/"colored" spellings and
either article ("a"/"an"). Anything else raises ``PromptOutsideGrammar`` naming the
prompt and the part that failed (unknown words are listed).
"""

from __future__ import annotations

import re

from toyworld.grammar import RELATION_WORDS
from toyworld.scene import ObjectSpec, SceneSpec
from toyworld.vocab import (
    BACKGROUNDS,
    COLOURS,
    PLAIN_BACKGROUND,
    SHAPE_PLURALS,
    SHAPES,
    SIZES,
    WORD_COUNTS,
)


class PromptOutsideGrammar(ValueError):
    """The prompt is not a sentence of the toy-world grammar."""


_SINGULAR = {p: s for s, p in SHAPE_PLURALS.items()}
_FRAME_PREFIXES = ("there is ", "there are ", "a picture of ", "an image showing ")
_BG_RE = re.compile(r"^(?P<body>.+?) (?:on|against) (?:a|an) (?P<bg>\w+) background$")
_REL_PHRASES = sorted(
    ((w, rel) for rel, words in RELATION_WORDS.items() for w in words),
    key=lambda wr: -len(wr[0]),
)
_REL_RE = re.compile(
    r"^(?P<a>.+?) (?:is )?(?P<rel>"
    + "|".join(re.escape(w) for w, _ in _REL_PHRASES)
    + r") (?P<b>.+)$"
)
_KNOWN_WORDS = (
    set(SHAPES)
    | set(SHAPE_PLURALS.values())
    | set(COLOURS)
    | set(BACKGROUNDS)
    | set(SIZES)
    | set(WORD_COUNTS)
    | {
        "a",
        "an",
        "that",
        "is",
        "are",
        "coloured",
        "there",
        "picture",
        "of",
        "image",
        "showing",
        "on",
        "against",
        "background",
        "plain",
        "to",
        "the",
        "left",
        "right",
        "above",
        "below",
        "over",
        "under",
        "beneath",
    }
)


def normalise(prompt: str) -> str:
    """Lower-case, map spelling variants, drop punctuation, collapse whitespace."""
    text = prompt.lower()
    text = re.sub(r"[.,;:!?\"']", " ", text)
    text = re.sub(r"\bgrey\b", "gray", text)
    text = re.sub(r"\bcolou?red\b", "coloured", text)
    return " ".join(text.split())


def _fail(prompt: str, why: str) -> PromptOutsideGrammar:
    unknown = sorted({w for w in normalise(prompt).split() if w not in _KNOWN_WORDS})
    extra = f"; unknown words: {unknown}" if unknown else ""
    return PromptOutsideGrammar(f"prompt {prompt!r} is outside the toy grammar: {why}{extra}")


def _noun_phrase(text: str, prompt: str) -> tuple[ObjectSpec, int]:
    """'a big circle that is red' -> (ObjectSpec('circle', 'red', 'big'), 1)."""
    words = text.split()
    if len(words) < 3:
        raise _fail(prompt, f"noun phrase {text!r} is too short (need determiner, colour, shape)")
    det, rest = words[0], words[1:]
    if det in ("a", "an"):
        count = 1
    elif det in WORD_COUNTS:
        count = WORD_COUNTS[det]
    else:
        raise _fail(prompt, f"noun phrase {text!r} must start with a/an/one/two/three")
    size = None
    if rest[0] in SIZES:
        size, rest = rest[0], rest[1:]
    if "that" in rest:
        if len(rest) != 4 or rest[1] != "that" or rest[2] not in ("is", "are"):
            raise _fail(prompt, f"expected '<shape> that is/are <colour>' in {text!r}")
        noun, verb, colour = rest[0], rest[2], rest[3]
        if (verb == "is") != (count == 1):
            raise _fail(prompt, f"'{verb}' does not agree with count {count} in {text!r}")
    else:
        if len(rest) == 3 and rest[1] == "coloured":
            rest = [rest[0], rest[2]]
        if len(rest) != 2:
            raise _fail(prompt, f"expected '[size] <colour> <shape>' in {text!r}")
        colour, noun = rest
    if colour not in COLOURS:
        raise _fail(prompt, f"{colour!r} is not a shape colour {tuple(COLOURS)}")
    if count == 1:
        if noun not in SHAPES:
            hint = " (plural noun after a singular determiner)" if noun in _SINGULAR else ""
            raise _fail(prompt, f"{noun!r} is not a shape {SHAPES}{hint}")
        shape = noun
    else:
        if noun not in _SINGULAR:
            raise _fail(prompt, f"{noun!r} is not a plural shape noun after {det!r}")
        shape = _SINGULAR[noun]
    return ObjectSpec(shape=shape, colour=colour, size=size), count


def parse(prompt: str) -> SceneSpec:
    """Parse a prompt to its ``SceneSpec`` (unstated sizes/background are None).

    >>> parse("Two big crosses that are cyan on a gray background.").count
    2
    """
    text = normalise(prompt)
    if not text:
        raise _fail(prompt, "empty prompt")
    background = None
    m = _BG_RE.match(text)
    if m:
        bg_word = m.group("bg")
        if bg_word == "plain":
            background = PLAIN_BACKGROUND
        elif bg_word in BACKGROUNDS:
            background = bg_word
        else:
            raise _fail(prompt, f"{bg_word!r} is not a background {tuple(BACKGROUNDS)} or 'plain'")
        text = m.group("body")
    for prefix in _FRAME_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    rm = _REL_RE.match(text)
    try:
        if rm:
            rel = dict(_REL_PHRASES)[rm.group("rel")]
            a, na = _noun_phrase(rm.group("a"), prompt)
            b, nb = _noun_phrase(rm.group("b"), prompt)
            if na != 1 or nb != 1:
                raise _fail(prompt, "relations are only between single objects")
            return SceneSpec(kind="relation", objects=(a, b), relation=rel, background=background)
        obj, count = _noun_phrase(text, prompt)
        kind = "single" if count == 1 else "group"
        return SceneSpec(kind=kind, objects=(obj,), count=count, background=background)
    except PromptOutsideGrammar:
        raise
    except ValueError as err:  # SceneSpec validation, e.g. two objects of one shape
        raise _fail(prompt, str(err)) from err
