"""The seam between the service and the model: what the batcher calls.

The service only needs ``TextToImage.generate(reqs) -> (results, timings_ms)`` and three
attributes; it never knows which backend runs (docs/architecture.md, the seam). The real object
comes from ``retrieval.compose.build_text_to_image`` (the one place a prompt becomes
an image); tests pass their own factory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engines.request import ImageRequest
    from service.settings import Settings

log = logging.getLogger(__name__)


class TextToImageLike(Protocol):
    """Structural type of ``retrieval.compose.TextToImage``."""

    model_name: str
    backend_name: str
    resolution: int

    def generate(self, reqs: Sequence[ImageRequest]) -> tuple[list[Any], dict[str, float]]: ...


EngineFactory = Callable[["Settings"], TextToImageLike]


def retrieval_probe_for(t2i: Any) -> Callable[[], tuple[bool, str | None]] | None:
    """Pull-probe of the retrieval status of a ``retrieval.compose.TextToImage``: its
    database was not opened (None) or its index reports ``status()``. None when the
    engine has no retrieval attribute at all (test doubles)."""
    health = getattr(t2i, "retrieval_health", None)
    if health is not None:  # compose.TextToImage knows the device copy and the index
        return health  # type: ignore[no-any-return]
    if not hasattr(t2i, "db"):
        return None

    def probe() -> tuple[bool, str | None]:
        db = t2i.db
        if db is None:
            return False, "retrieval database could not be opened at startup (see the log)"
        status = getattr(db.index, "status", None)
        return status() if status is not None else (True, None)

    return probe


def database_info(t2i: Any) -> dict[str, Any] | None:
    """Which database ``t2i`` serves: {"id", "model_fingerprint", "pairs"} (no path, no URL),
    or None when it has none (no retrieval, synthetic pairs, test doubles)."""
    store = getattr(getattr(t2i, "db", None), "store", None)
    root = getattr(store, "root", None)
    if root is None:
        return None
    from retrieval.types import database_id

    return {"id": database_id(root.parent), "model_fingerprint": str(store.fingerprint),
            "pairs": len(store)}


def build_from_settings(settings: Settings) -> TextToImageLike:
    """The production factory: model dir + backend + index from settings. Raises if the
    chosen backend cannot start (no fallback)."""
    import os
    import time

    import torch

    from retrieval.compose import build_text_to_image

    if settings.compile_cache_dir is not None:
        # Inductor and Triton read these when they first compile: set before the build.
        cache = settings.compile_cache_dir
        cache.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    if settings.device.startswith("cuda"):
        import sys

        # The GPU worker thread releases the GIL around every CUDA call and copy; with the
        # default 5 ms switch interval each re-acquire can wait behind the event loop.
        sys.setswitchinterval(0.0005)
    t0 = time.perf_counter()

    model_dir = settings.resolved_model_dir()
    log.info(
        "building text-to-image: model_dir=%s backend=%s device=%s dtype=%s vae_decoder=%s index=%s",
        model_dir,
        settings.backend,
        settings.device,
        settings.dtype,
        settings.vae_decoder,
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
        device_index_max_pairs=settings.device_index_max_pairs,
        feature_dtype=settings.feature_dtype,
        refresh_s=settings.index_refresh_s,
        synthetic_pairs=settings.synthetic_pairs,
        **_backend_options(settings),
    )
    if t2i.backend_name != settings.backend:
        raise RuntimeError(
            f"backend {settings.backend!r} was asked for but {t2i.backend_name!r} runs"
        )
    t_build = time.perf_counter() - t0
    t_warm = t2i.warmup()  # every batch bucket compiled and captured before traffic
    ok, why = t2i.retrieval_health()
    log.info(
        "engine built in %.1f s, warm-up (compile + capture of every bucket) %.1f s; retrieval %s: %s",
        t_build, t_warm, "ok" if ok else "UNAVAILABLE", why,
    )
    return t2i


def _backend_options(settings: Settings) -> dict[str, Any]:
    """What ``create_backend`` takes besides the model: graph dirs, batch buckets (for a
    backend whose capabilities say it takes them)."""
    from engines.backends.registry import capabilities
    from engines.shapes import batch_buckets

    opts: dict[str, Any] = {"vae_decoder": settings.vae_decoder, "onnx_dir": settings.onnx_dir,
                            "engine_dir": settings.engine_dir}
    if capabilities(settings.backend).buckets:
        opts["buckets"] = tuple(settings.batch_buckets) or batch_buckets(settings.max_batch)
    return opts
