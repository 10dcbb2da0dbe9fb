"""The seam between the service and the model: what the batcher calls.

The service only needs ``TextToImage.generate(reqs) -> (results, timings_ms)`` and three
attributes; it never knows which backend runs (STYLE.md, the seam). The real object
comes from ``retrieval.compose.build_text_to_image`` (the one place a prompt becomes
an image); tests pass their own factory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)


class TextToImageLike(Protocol):
    """Structural type of ``retrieval.compose.TextToImage``."""

    model_name: str
    backend_name: str
    resolution: int

    def generate(self, reqs: Sequence[Any]) -> tuple[list[Any], dict[str, float]]: ...


EngineFactory = Callable[["Settings"], TextToImageLike]


def gen_request(prompt: str, seed: int, mode: str, k: int) -> Any:
    """A ``retrieval.compose.GenRequest`` (imported lazily)."""
    from retrieval.compose import GenRequest

    return GenRequest(prompt=prompt, seed=seed, mode=mode, k=k)  # type: ignore[arg-type]


def retrieval_probe_for(t2i: Any) -> Callable[[], tuple[bool, str | None]] | None:
    """Pull-probe of the retrieval status of a ``retrieval.compose.TextToImage``: its
    database was not opened (None) or its index reports ``status()``. None when the
    engine has no retrieval attribute at all (test doubles)."""
    if not hasattr(t2i, "db"):
        return None

    def probe() -> tuple[bool, str | None]:
        db = t2i.db
        if db is None:
            return False, "retrieval database could not be opened at startup (see the log)"
        status = getattr(db.index, "status", None)
        return status() if status is not None else (True, None)

    return probe


def build_from_settings(settings: Settings) -> TextToImageLike:
    """The production factory: model dir + backend + index from settings. Raises if the
    chosen backend cannot start (no fallback)."""
    import torch

    from retrieval.compose import build_text_to_image

    model_dir = settings.resolved_model_dir()
    log.info(
        "building text-to-image: model_dir=%s backend=%s device=%s dtype=%s index=%s",
        model_dir,
        settings.backend,
        settings.device,
        settings.dtype,
        settings.qdrant_url or f"qdrant-edge:{settings.db_path}",
    )
    key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
    t2i = build_text_to_image(
        model_dir,
        device=settings.device,
        dtype=getattr(torch, settings.dtype),
        backend=settings.backend,
        db_path=settings.db_path,
        qdrant_url=settings.qdrant_url,
        qdrant_api_key=key,
        min_score=settings.min_score,
        onnx_dir=settings.onnx_dir,
        engine_dir=settings.engine_dir,
    )
    if t2i.backend_name != settings.backend:
        raise RuntimeError(
            f"backend {settings.backend!r} was asked for but {t2i.backend_name!r} runs"
        )
    return t2i
