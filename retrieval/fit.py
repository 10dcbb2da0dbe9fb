"""How well the database fits a request: the λ each neighbour got and the status it gives.

A neighbour is *used* when the λ rule (``engines.rules.neighbour_lambda``: its cosine
score, 0 below ``min_score`` or when not positive) gives it a weight above 0. A request
with at least one used neighbour is "ok"; one whose neighbours all got λ = 0 (or that
found none) is "weak": its image is the model's own, as with retrieval off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from engines.modes import RetrievalStatus
from engines.rules import neighbour_lambda
from retrieval.types import Neighbour


def weigh(ns: Sequence[Neighbour], lam: Sequence[float]) -> tuple[list[Neighbour], RetrievalStatus]:
    """Neighbours with the λ they got, and the status: "ok" when one was used, else "weak"."""
    out = [replace(n, weight=float(w)) for n, w in zip(ns, lam, strict=True)]
    return out, "ok" if any(n.used for n in out) else "weak"


def weigh_scores(ns: Sequence[Neighbour], min_score: float) -> tuple[list[Neighbour], RetrievalStatus]:
    """``weigh`` with λ computed here from the neighbours' scores (the rule the graph ran)."""
    lam = neighbour_lambda(torch.tensor([n.score for n in ns], dtype=torch.float32), min_score)
    return weigh(ns, lam.tolist())
