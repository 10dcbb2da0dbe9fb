"""embed -> search -> gather features -> generate: the one place a prompt becomes an image.

The CLI, the service and the training job call ``TextToImage.generate``. A batch may
mix modes, k, seeds and excluded ids; each result equals running its request alone.
λ for a neighbour is its cosine score, or 0 below ``min_score`` (negative scores are
always 0). If the index or feature store fails or times out, the affected requests
are generated with mode "off" and ``retrieval_status="unavailable"`` (logged and
counted in ``unavailable_total``); retrieval never makes ``generate`` raise.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from retrieval.db import DbConfig, RetrievalDB, open_db_for_pipeline
from retrieval.types import FingerprintMismatchError, Neighbour

log = logging.getLogger(__name__)

MAX_K = 8
RetrievalStatus = Literal["ok", "unavailable", "off"]


@dataclass(frozen=True)
class GenRequest:
    prompt: str
    seed: int
    mode: Literal["adapter", "inject", "off"] = "adapter"
    k: int = 1  # 1..8
    exclude_ids: frozenset[str] = frozenset()


@dataclass
class GenResult:
    image: np.ndarray  # uint8 (H,W,3)
    seed: int
    retrieved: list[Neighbour] = field(default_factory=list)
    retrieval_status: RetrievalStatus = "off"


class TextToImage:
    """A pipeline plus (optionally) a retrieval database.

    ``db=None`` means retrieval is not available (e.g. the database could not be
    opened): requests with a retrieval mode get status "unavailable".
    """

    def __init__(
        self,
        pipe: Any,
        db: RetrievalDB | None,
        *,
        min_score: float = 0.0,
        retrieval_timeout_s: float | None = 2.0,
    ) -> None:
        if not -1.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [-1, 1] (a cosine), got {min_score}")
        self.pipe = pipe
        self.db = db
        self.min_score = float(min_score)
        self.retrieval_timeout_s = retrieval_timeout_s
        self.model_name: str = pipe.name
        self.backend_name: str = getattr(pipe, "backend_name", "torch")
        self.retrieval_backend: str = db.backend_name if db is not None else "none"
        self.resolution: int = int(pipe.resolution)
        self.unavailable_total = 0
        self._pool = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="retrieval")

    # ------------------------------------------------------------------ retrieval
    def _retrieve(
        self, pooled: torch.Tensor, ks: list[int], excl: list[frozenset[str]]
    ) -> tuple[list[list[Neighbour]], torch.Tensor]:
        """pooled (B,D) -> neighbours per query and their features (Σk, C,h,w)."""
        assert self.db is not None
        neigh = self.db.search(pooled, ks, excl)
        flat = [n.id for r in neigh for n in r]
        return neigh, self.db.features(flat)

    def _retrieve_guarded(
        self, pooled: torch.Tensor, ks: list[int], excl: list[frozenset[str]]
    ) -> tuple[list[list[Neighbour]], torch.Tensor] | None:
        if self.db is None:
            return None
        try:
            fut = self._pool.submit(self._retrieve, pooled.detach().float().cpu(), ks, excl)
            return fut.result(timeout=self.retrieval_timeout_s)
        except cf.TimeoutError:
            log.error(
                "retrieval timed out after %.2fs; generating without retrieval",
                self.retrieval_timeout_s,
            )
        except Exception as e:  # noqa: BLE001 - any index/store failure degrades to mode off
            log.error(
                "retrieval failed (%s: %s); generating without retrieval", type(e).__name__, e
            )
        return None

    # ------------------------------------------------------------------ generate
    def generate(self, reqs: Sequence[GenRequest]) -> tuple[list[GenResult], dict[str, float]]:
        """One batch. Results in request order; timings in ms: text, retrieval, unet, vae."""
        if not reqs:
            return [], {"text": 0.0, "retrieval": 0.0, "unet": 0.0, "vae": 0.0}
        for r in reqs:
            if not 1 <= r.k <= MAX_K:
                raise ValueError(f"k must be in 1..{MAX_K}, got {r.k}")
            if r.mode not in ("adapter", "inject", "off"):
                raise ValueError(f"mode must be adapter, inject or off; got {r.mode!r}")
        pipe = self.pipe
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        text = pipe.encode_text([r.prompt for r in reqs])
        timings["text"] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        want = [i for i, r in enumerate(reqs) if r.mode != "off"]
        status: list[RetrievalStatus] = ["off"] * len(reqs)
        retrieved: list[list[Neighbour]] = [[] for _ in reqs]
        modes = ["off"] * len(reqs)
        h_retr = lam = None
        if want:
            got = self._retrieve_guarded(
                text.pooled[want], [reqs[i].k for i in want], [reqs[i].exclude_ids for i in want]
            )
            if got is None:
                self.unavailable_total += len(want)
                for i in want:
                    status[i] = "unavailable"
            else:
                neigh, feats = got
                kmax = max(reqs[i].k for i in want)
                dev = getattr(pipe, "device", feats.device)
                dt = getattr(pipe, "dtype", torch.float32)
                h_retr = torch.zeros((len(reqs), kmax, *pipe.h_shape), dtype=dt, device=dev)
                lam = torch.zeros((len(reqs), kmax), dtype=torch.float32, device=dev)
                feats = feats.to(dev, dt)
                pos = 0
                for i, ns in zip(want, neigh):
                    status[i], retrieved[i], modes[i] = "ok", ns, reqs[i].mode
                    for j, n in enumerate(ns):
                        h_retr[i, j] = feats[pos]
                        lam[i, j] = n.score if n.score >= self.min_score and n.score > 0 else 0.0
                        pos += 1
        timings["retrieval"] = (time.perf_counter() - t0) * 1e3

        out = pipe.generate(text, [r.seed for r in reqs], modes, h_retr, lam)
        timings["unet"] = out.timings_ms.get("unet", 0.0)
        timings["vae"] = out.timings_ms.get("vae", 0.0)
        results = [
            GenResult(
                image=out.images[i], seed=r.seed, retrieved=retrieved[i], retrieval_status=status[i]
            )
            for i, r in enumerate(reqs)
        ]
        return results, timings

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.db is not None:
            self.db.close()


def build_text_to_image(
    model_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str = "torch",
    db_path: str | Path | None = None,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    min_score: float = 0.0,
    qdrant_timeout_s: float = 5.0,
    retrieval_timeout_s: float | None = 2.0,
    pipeline: Any | None = None,
    db_config: DbConfig | None = None,
    **backend_options: Any,
) -> TextToImage:
    """Load the model through ``engines.backends.create_backend(backend, ...)`` and open the database.

    ``backend_options`` go to ``create_backend`` (e.g. ``onnx_dir=``, ``engine_dir=``);
    ``BackendUnavailable`` propagates (no fallback). ``pipeline`` lets a caller pass an
    object it already built (a OneStepPipeline or a Backend). A missing/empty/unreachable
    database does not fail the build (requests then report "unavailable"); features made
    by another model do (FingerprintMismatchError), because that is a deployment mistake.
    """
    if pipeline is None:
        from engines.backends import create_backend

        pipeline = create_backend(
            backend, model_dir, device=str(device), dtype=dtype, **backend_options
        )
    cfg = db_config or DbConfig(
        db_path=Path(db_path) if db_path is not None else Path("data"),
        qdrant_url=qdrant_url,
        qdrant_api_key=qdrant_api_key,
        qdrant_timeout_s=qdrant_timeout_s,
    )
    db: RetrievalDB | None
    try:
        db = open_db_for_pipeline(cfg, pipeline)
        log.info(
            "retrieval: %s with %d stored pairs (features %s)",
            db.backend_name,
            len(db.store),
            db.store.root,
        )
    except FingerprintMismatchError:
        raise
    except Exception as e:  # noqa: BLE001 - an outage must not stop startup
        log.error(
            "retrieval database unavailable (%s); images will be generated without retrieval", e
        )
        db = None
    return TextToImage(pipeline, db, min_score=min_score, retrieval_timeout_s=retrieval_timeout_s)
