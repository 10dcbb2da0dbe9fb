"""Where should MIN_SCORE sit? Top-1 cosine of the shipped toy model's neighbours for
prompts that belong to the database and prompts that do not.

    PYTHONPATH=. python lab/min_score/measure.py --db data/toydb --work data/min_score

--db is the 10 000-pair database ``ragturbo toyworld embedded-db`` builds (it is copied,
not changed). Groups (``in`` should be "ok", ``out`` should be "weak"):

in   eval         the 400 toy eval prompts (held-out phrasings, half long-tail)
in   natural      400 captions of a split no database holds (training phrasings)
in   ring_db      prompts naming pink rings, against the copy with 20 ingested pink rings
in   star_db      prompts naming stars in known colours, against the copy with 20 stars
out  gibberish    "zzzz qqqq 12345" and 199 random strings of letters and digits
out  english      60 English sentences outside the toy grammar
out  ring_base    the ring prompts against the database without rings
out  star_base    the star prompts against the database without stars

A toy prompt's neighbour *matches* when its caption names the same objects (shape and
colour, in order), count and relation (``toyworld.parse``; size and background aside);
the error table counts a matching neighbour below the threshold as false weak and any
other neighbour at or above it as false ok (star_base apart: see docs/retrieval.md).

Writes <work>/scores.json (every score) and prints the tables docs/retrieval.md quotes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import string
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import write_set

ENGLISH = """the quick brown fox jumps over the lazy dog
a photo of a cat sitting on a sofa
stock prices rose sharply this morning
please send me the quarterly report by friday
an astronaut riding a horse on the moon
a bowl of ramen with a soft boiled egg
the weather in paris is mild in april
how do i reset my password
a watercolor painting of a lighthouse at dusk
my grandmother makes the best apple pie
a portrait of an old man with a beard
the train to london leaves at nine
a cozy cabin in a snowy forest
two dogs playing frisbee in the park
an oil painting of sunflowers in a vase
the meeting has been moved to thursday
a futuristic city skyline at night
a close up of a honeybee on a flower
she sells sea shells by the sea shore
a plate of spaghetti with tomato sauce
a red sports car parked on a street
a blue house with a white fence
a green apple on a wooden table
a yellow taxi in new york
a purple dragon breathing fire
an orange cat sleeping in the sun
a white horse running on the beach
a cyan neon sign in the rain
a black and white photo of a bridge
a small boat on a big lake
three birds sitting on a wire
a picture of my family at dinner
there is a man walking his dog
an image of a mountain landscape
a logo for a coffee shop
the history of the roman empire
quantum computers use qubits
i would like a cup of tea
happy birthday to you
the mitochondria is the powerhouse of the cell
a knight in shining armour
an elephant standing in the savanna
a child flying a kite on a hill
a bicycle leaning against a brick wall
a glass of red wine on a table
rain falling on a city street
a robot reading a book
a map of the world
a violin resting on a chair
the sun sets behind the mountains
a dark forest with tall trees
a pizza with mushrooms and olives
an old library full of books
a snowman wearing a scarf
fireworks over the harbour
a football stadium at night
a tiger hiding in the grass
an empty parking lot
a cup of coffee and a croissant
a wedding cake with flowers""".splitlines()

RING_PROMPTS = ["a pink ring", "a big pink ring", "a small pink ring", "there is a pink ring",
                "a picture of a pink ring", "a pink ring on a gray background",
                "a big pink ring on a navy background", "a small pink ring on a plain background",
                "one pink ring", "a ring that is pink"]
STAR_PROMPTS = ["a red star", "a big blue star", "a small green star", "there is a yellow star",
                "a picture of a red star", "a blue star on a gray background",
                "a big green star on a navy background", "a yellow star on a plain background",
                "one red star", "a star that is blue"]


def gibberish(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = ["zzzz qqqq 12345"]
    chars = string.ascii_lowercase + string.digits
    while len(out) < n:
        words = [''.join(rng.choice(chars) for _ in range(rng.randint(2, 9))) for _ in range(rng.randint(1, 5))]
        out.append(" ".join(words))
    return out


def top1(pipe: object, db_path: Path, prompts: list[str]) -> list[tuple[float, str]]:
    from retrieval.db import DbConfig, open_db_for_pipeline

    db = open_db_for_pipeline(DbConfig(db_path=db_path), pipe)  # type: ignore[arg-type]
    try:
        res = db.search(pipe.encode_text(prompts).pooled, 1)  # type: ignore[attr-defined]
    finally:
        db.close()
    return [(float(r[0].score), r[0].caption) if r else (float("nan"), "") for r in res]


def with_set(pipe: object, base: Path, work: Path, shape: str, colours: list[str]) -> Path:
    from retrieval.db import DbConfig, open_db_for_pipeline
    from retrieval.ingest import ingest, read_captions

    db_dir = work / f"{shape}_db"
    shutil.rmtree(db_dir, ignore_errors=True)
    shutil.copytree(base, db_dir)
    caps = write_set(work / f"{shape}_images", shape, colours, 20)
    db = open_db_for_pipeline(DbConfig(db_path=db_dir), pipe, create=True)  # type: ignore[arg-type]
    try:
        rep = ingest(pipe, db, caps.parent, read_captions(caps), progress=False)
    finally:
        db.close()
    print(f"{shape}: {rep.summary()}")
    return db_dir


def matches(prompt: str, neighbour: str) -> bool:
    """Same objects (shape, colour), count and relation; size and background aside."""
    from toyworld.parse import parse

    a, b = parse(prompt), parse(neighbour)
    return ([(o.shape, o.colour) for o in a.objects] == [(o.shape, o.colour) for o in b.objects]
            and a.kind == b.kind and a.count == b.count and a.relation == b.relation)


def split_by_match(got: dict[str, list[tuple[float, str]]], prompts: dict[str, tuple[list[str], Path]]) -> dict[str, list[float]]:
    """eval/natural split into *_match and *_other; ring_db/star_db match; the rest do not."""
    out: dict[str, list[float]] = {}
    for g in ("eval", "natural"):
        for p, (s, c) in zip(prompts[g][0], got[g]):
            out.setdefault(f"{g}_{'match' if matches(p, c) else 'other'}", []).append(s)
    for g in ("ring_db", "star_db", "gibberish", "english", "ring_base", "star_base"):
        out[g] = [s for s, _ in got[g]]
    return out


SHOULD_OK = ["eval_match", "natural_match", "ring_db", "star_db"]
SHOULD_WEAK = ["eval_other", "natural_other", "gibberish", "english", "ring_base"]


def errors(groups: dict[str, list[float]], t: float) -> dict[str, float]:
    res = {g: float(np.mean(np.array(groups[g]) < t)) for g in SHOULD_OK}
    res |= {g: float(np.mean(np.array(groups[g]) >= t)) for g in [*SHOULD_WEAK, "star_base"]}
    ins = np.concatenate([groups[g] for g in SHOULD_OK])
    outs = np.concatenate([groups[g] for g in SHOULD_WEAK])
    res["false_weak"], res["false_ok"] = float((ins < t).mean()), float((outs >= t).mean())
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("data/min_score"))
    ap.add_argument("--model-dir", type=Path, default=None)
    a = ap.parse_args()
    from engines.default_model import SHIPPED
    from engines.pipeline import OneStepPipeline
    from toyworld.models.data import eval_prompts, make_split

    pipe = OneStepPipeline.from_pretrained(a.model_dir or SHIPPED)
    a.work.mkdir(parents=True, exist_ok=True)
    ring_db = with_set(pipe, a.db, a.work, "ring", ["pink"])
    star_db = with_set(pipe, a.db, a.work, "star", ["red", "blue", "green", "yellow"])
    ev, _ = eval_prompts(200, 200)
    natural = make_split("natural", 400, workers=1, images=False).captions
    prompts = {"eval": (ev, a.db), "natural": (natural, a.db), "ring_db": (RING_PROMPTS, ring_db),
               "star_db": (STAR_PROMPTS, star_db), "gibberish": (gibberish(200), a.db),
               "english": (ENGLISH, a.db), "ring_base": (RING_PROMPTS, a.db), "star_base": (STAR_PROMPTS, a.db)}
    got = {g: top1(pipe, db, p) for g, (p, db) in prompts.items()}
    (a.work / "scores.json").write_text(json.dumps(
        {g: [{"prompt": p, "score": s, "neighbour": c} for p, (s, c) in zip(prompts[g][0], v)] for g, v in got.items()},
        indent=1))
    groups = split_by_match(got, prompts)
    print(f"model {pipe.name} fingerprint {pipe.fingerprint}")
    print("| group | should be | n | min | p1 | p5 | median | p95 | p99 | max |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for g, v in groups.items():
        q = np.percentile(v, [0, 1, 5, 50, 95, 99, 100])
        want = "ok" if g in SHOULD_OK else "weak" if g in SHOULD_WEAK else "(weak)"
        print(f"| {g} | {want} | {len(v)} | " + " | ".join(f"{x:.3f}" for x in q) + " |")
    cols = [*SHOULD_OK, *SHOULD_WEAK, "star_base"]
    print("\n| threshold | false weak | false ok | " + " | ".join(cols) + " |")
    print("|---:|---:|---:|" + "---:|" * len(cols))
    for t in (0.70, 0.75, 0.80, 0.82, 0.84, 0.85, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96):
        e = errors(groups, t)
        print(f"| {t:.2f} | {e['false_weak']:.3f} | {e['false_ok']:.3f} | " + " | ".join(f"{e[c]:.3f}" for c in cols) + " |")
    for g in ("ring_base", "star_base", "ring_db", "star_db"):
        print(g, [(p, round(s, 3), c) for p, (s, c) in zip(prompts[g][0], got[g])])

if __name__ == "__main__":
    main()
