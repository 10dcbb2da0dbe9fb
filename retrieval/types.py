"""Types shared by the retrieval package: neighbours, point ids, errors.

A point is one text-image pair. Its id is a UUID derived from the pair's content
(caption text and the image file's bytes), so re-ingesting the same pair is an
idempotent upsert on every backend.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

# Fixed namespace: ids must not change between releases (they key the feature store).
ID_NAMESPACE = uuid.UUID("6f0c1d2e-8a4b-5c3d-9e7f-a1b2c3d4e5f6")


@dataclass(frozen=True)
class Neighbour:
    """One retrieved pair: its point id, caption and cosine score against the query, and
    ``weight``, the λ the image was generated with (``engines.rules.neighbour_lambda``: 0
    for a neighbour below ``min_score``); None where nothing was generated (a search)."""

    id: str
    caption: str
    score: float
    weight: float | None = None

    @property
    def used(self) -> bool:
        """The neighbour contributed to the image (λ > 0)."""
        return self.weight is not None and self.weight > 0


def point_id(caption: str, image_bytes: bytes) -> str:
    """Stable id of a pair: uuid5 over sha256(caption.strip() utf-8 ‖ 0x00 ‖ image bytes).

    Raises ValueError for a caption that is not valid Unicode (lone surrogates).
    The caption is stripped so ingest, training and callers of ``exclude_ids`` agree on
    the id of a pair whatever whitespace their caption table carries.
    """
    text = caption.strip()
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate (e.g. "\ud800" from JSON) is not text
        raise ValueError(
            f"caption is not valid Unicode text: {e.reason} at position {e.start} "
            f"({text[e.start]!r})"
        ) from None
    h = hashlib.sha256()
    h.update(data)
    h.update(b"\x00")
    h.update(image_bytes)
    return str(uuid.uuid5(ID_NAMESPACE, h.hexdigest()))


def database_id(db_path: str | Path) -> str:
    """A database's public id: 16 hex of sha256 over its absolute data-directory path.

    ``/readyz`` shows it instead of the path; ``ragturbo generate --db PATH`` computes it
    for PATH and refuses a server whose id differs.
    """
    resolved = str(Path(db_path).expanduser().resolve())
    return hashlib.sha256(f"ragturbo-db\0{resolved}".encode()).hexdigest()[:16]


class RetrievalError(RuntimeError):
    """The index or feature store failed (I/O, timeout, server down)."""


class FingerprintMismatchError(RetrievalError):
    """Stored features were produced by a different model than the one loaded."""

    def __init__(self, stored: str, current: str, where: str) -> None:
        super().__init__(
            f"feature store at {where} was built with model fingerprint {stored}, but the "
            f"loaded model has fingerprint {current}; rebuild it with "
            f"`ragturbo ingest --rebuild-features --db ...` or point --db elsewhere"
        )
        self.stored = stored
        self.current = current
