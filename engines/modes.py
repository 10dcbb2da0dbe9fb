"""The retrieval modes of a sample and the bound on its neighbours: one copy, no heavy
imports (the service's schemas, the pipeline, compose and the CLI read them)."""

from __future__ import annotations

from typing import Literal, get_args

Mode = Literal["adapter", "inject", "off"]
"""adapter: the H-adapter over the retrieved features; inject: training-free slerp of the
top neighbour into H; off: no retrieval."""
MODES: tuple[str, ...] = get_args(Mode)
MAX_K = 8
"""Most neighbours one sample may have: the API's bound, compose's check and the graphs' K range."""

RetrievalStatus = Literal["ok", "weak", "unavailable", "off"]
"""What retrieval did for one image: ok (at least one neighbour used, score >= min_score),
weak (neighbours found, none used: every score below min_score, or no neighbour at all),
unavailable (the index or store failed: generated without retrieval), off (mode off)."""
DEFAULT_MIN_SCORE = 0.88
"""The served λ threshold (cosine), chosen on the shipped toy model's top-1 scores: neighbours
that match the prompt score above it, gibberish and other topics below (docs/retrieval.md,
"MIN_SCORE")."""
