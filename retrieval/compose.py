"""embed -> search -> λ -> backend: the one place a prompt becomes an image.

The CLI, the service and the toy world's evals call ``TextToImage.generate`` (``search`` is the
same embedding and index without an image). A batch may mix modes, k, seeds and excluded ids;
each result equals running its request alone. λ for a neighbour is its cosine score, or 0
below ``min_score`` (negative scores are always 0): ``engines.rules.neighbour_lambda``, the
one copy of the rule; each neighbour returned carries its λ, and a request none of whose
neighbours got λ > 0 is "weak", not "ok" (``retrieval.fit``; counted in ``weak_total``).
If the index or feature store fails or times out, the affected requests are generated
with mode "off" and ``retrieval_status="unavailable"`` (logged and counted in
``unavailable_total``); retrieval never makes ``generate`` raise. With a model vocabulary
(``engines.vocabulary``), every result lists the prompt's ``unknown_words``.

The backend gets one ``engines.request.Batch``. With a device copy of the database
(``retrieval.resident``, kept by ``retrieval.upkeep.Upkeep``) it is a batch with ``search``
set: search, λ and gather run inside the backend's graph and the rows it returns are mapped
back to pairs here; otherwise the index is searched on the host and the batch carries the
neighbours (``engines.request.gather_neighbours``). Health, warm-up and the copy's refresh
are ``Upkeep``'s (``TextToImage.upkeep``)."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engines.backends.base import Backend, SearchingBackend
from engines.modes import DEFAULT_MIN_SCORE, MAX_K, RetrievalStatus
from engines.request import Batch, ImageRequest, gather_neighbours
from engines.vocabulary import Vocabulary, load_vocabulary
from retrieval.db import DbConfig, RetrievalDB, open_db_or_reason
from retrieval.fit import weigh, weigh_scores
from retrieval.resident import ResidentIndex, device_copy
from retrieval.types import Neighbour, RetrievalError
from retrieval.upkeep import Upkeep

if TYPE_CHECKING:
    from engines.pipeline import OneStepPipeline

log = logging.getLogger(__name__)

__all__ = ["ImageRequest", "ImageResult", "TextToImage", "build_text_to_image"]


@dataclass
class ImageResult:
    """The image made for one ``ImageRequest``, with its neighbours and retrieval status."""

    image: np.ndarray  # uint8 (H,W,3)
    seed: int
    retrieved: list[Neighbour] = field(default_factory=list)
    retrieval_status: RetrievalStatus = "off"
    encoded: bytes | None = None  # ``image`` already encoded by the engine, in encoded_format
    encoded_format: str | None = None
    unknown_words: list[str] | None = None  # prompt words outside the model's vocabulary


class TextToImage:
    """A backend plus (optionally) a retrieval database: search -> λ -> backend.

    ``db=None`` means retrieval is not available (e.g. the database could not be
    opened): requests with a retrieval mode get status "unavailable".
    ``retrieval_timeout_s=None``: no deadline; the search runs in the caller's thread.
    ``min_score`` defaults to 0 here (the toy evals build this directly); what is served
    uses ``DEFAULT_MIN_SCORE`` (``build_text_to_image``, the service, the CLI).
    ``resident``, ``pending``, ``refresh_s`` and ``db_error`` go to ``Upkeep``.
    """

    def __init__(
        self,
        pipe: Backend | OneStepPipeline,
        db: RetrievalDB | None,
        *,
        min_score: float = 0.0,
        retrieval_timeout_s: float | None = 2.0,
        resident: ResidentIndex | None = None,
        refresh_s: float = 30.0,
        db_error: str | None = None,
        pending: ResidentIndex | None = None,
        vocabulary: Vocabulary | None = None,
    ) -> None:
        if not -1.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [-1, 1] (a cosine), got {min_score}")
        self.pipe = pipe
        self.db = db
        self.min_score = float(min_score)
        self.retrieval_timeout_s = retrieval_timeout_s
        self.upkeep = Upkeep(pipe if isinstance(pipe, Backend) else None, db, resident=resident,
                             pending=pending, refresh_s=refresh_s, db_error=db_error)
        self.model_name: str = pipe.name
        self.backend_name: str = pipe.backend_name
        self.resolution: int = int(pipe.resolution)
        self.vocabulary = vocabulary
        self.unavailable_total = 0
        self.weak_total = 0
        self._pool = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="retrieval")

    @property
    def resident(self) -> ResidentIndex | None:
        return self.upkeep.resident

    @property
    def retrieval_backend(self) -> str:
        return self.upkeep.where

    def retrieval_health(self) -> tuple[bool, str]:
        """(True, where search runs) or (False, why retrieval is unavailable): /readyz."""
        return self.upkeep.health()

    def warmup(self) -> float:
        """Compile/capture every batch bucket of the backend now (before traffic); seconds."""
        return self.upkeep.warmup()

    # ------------------------------------------------------------------ retrieval
    def _retrieve(
        self, pooled: torch.Tensor, ks: list[int], excl: list[frozenset[str]]
    ) -> tuple[list[list[Neighbour]], torch.Tensor]:
        """pooled (B,D) -> neighbours per query and their features (Σk, C,h,w)."""
        assert self.db is not None
        neigh = self.db.search(pooled, ks, excl)
        return neigh, self.db.features([n.id for r in neigh for n in r])

    def _retrieve_guarded(
        self, pooled: torch.Tensor, ks: list[int], excl: list[frozenset[str]]
    ) -> tuple[list[list[Neighbour]], torch.Tensor] | None:
        if self.db is None:
            return None
        try:
            if self.retrieval_timeout_s is None:  # no deadline: no thread hop either
                return self._retrieve(pooled.detach().float().cpu(), ks, excl)
            fut = self._pool.submit(self._retrieve, pooled.detach().float().cpu(), ks, excl)
            return fut.result(timeout=self.retrieval_timeout_s)
        except cf.TimeoutError:
            log.error("retrieval timed out after %.2fs; generating without retrieval", self.retrieval_timeout_s)
        except Exception as e:  # noqa: BLE001 - any index/store failure degrades to mode off
            log.error("retrieval failed (%s: %s); generating without retrieval", type(e).__name__, e)
        return None

    def search(self, query: str, k: int) -> list[Neighbour]:
        """The ``k`` nearest pairs to ``query``: the prompt's embedding and index search of
        ``generate`` (no λ, no image). Raises ``RetrievalError`` when retrieval is down."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
        db = self.upkeep.host_db
        if db is None:  # with a device copy (fast backend) the host index is the resident's
            raise RetrievalError(self.upkeep.db_error or "no retrieval database")
        pooled = self.pipe.encode_text([query]).pooled.detach().float().cpu()
        try:
            return db.search(pooled, [k], [frozenset()])[0]
        except RetrievalError:
            raise
        except Exception as e:  # any index/store failure: retrieval is down
            raise RetrievalError(f"{type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ generate
    def generate(self, reqs: Sequence[ImageRequest]) -> tuple[list[ImageResult], dict[str, float]]:
        """One batch. Results in request order; timings in ms: text, retrieval, unet, vae."""
        if not reqs:
            return [], {"text": 0.0, "retrieval": 0.0, "unet": 0.0, "vae": 0.0}
        resident = self.upkeep.tick()
        if resident is not None and not any(r.exclude_ids for r in reqs):
            return self._generate_in_graph(reqs, resident)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        text = self.pipe.encode_text([r.prompt for r in reqs])
        timings["text"] = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        want = [i for i, r in enumerate(reqs) if r.mode != "off"]
        status: list[RetrievalStatus] = ["off"] * len(reqs)
        retrieved: list[list[Neighbour]] = [[] for _ in reqs]
        got = self._retrieve_guarded(text.pooled[want], [reqs[i].k for i in want],
                                     [reqs[i].exclude_ids for i in want]) if want else None
        nb = None
        if want and got is None:
            self.unavailable_total += len(want)
            for i in want:
                status[i] = "unavailable"
        elif got is not None:
            neigh, feats = got
            nb = gather_neighbours([[n.score for n in ns] for ns in neigh], feats, self.pipe.h_shape,
                                   self.min_score, k=max(reqs[i].k for i in want), rows=want, b=len(reqs))
            lam_host = nb.lam.tolist()
            for i, ns in zip(want, neigh):
                retrieved[i], status[i] = weigh(ns, lam_host[i][: len(ns)])
        timings["retrieval"] = (time.perf_counter() - t0) * 1e3
        on = set(want) if nb is not None else set()
        batch = Batch(tuple(r if i in on else replace(r, mode="off") for i, r in enumerate(reqs)),
                      text=text, neighbours=nb)
        out = self.pipe.generate(batch)
        timings["unet"] = out.timings_ms.get("unet", 0.0)
        timings["vae"] = out.timings_ms.get("vae", 0.0)
        results = [
            ImageResult(image=out.images[i], seed=r.seed, retrieved=retrieved[i],
                        retrieval_status=status[i], unknown_words=self._unknown(r.prompt))
            for i, r in enumerate(reqs)
        ]
        self.weak_total += status.count("weak")
        return results, timings

    def _unknown(self, prompt: str) -> list[str] | None:
        return None if self.vocabulary is None else self.vocabulary.unknown_words(prompt)

    def _generate_in_graph(
        self, reqs: Sequence[ImageRequest], resident: ResidentIndex
    ) -> tuple[list[ImageResult], dict[str, float]]:
        """Search, λ and gather inside the backend's graph; rows mapped back to pairs here."""
        out = self.pipe.generate(Batch(tuple(reqs), search=self.min_score))
        assert out.rows is not None and out.scores is not None
        results = []
        for i, r in enumerate(reqs):
            enc = out.encoded[i] if out.encoded is not None else None
            res = ImageResult(image=out.images[i], seed=r.seed, encoded=enc,
                              encoded_format=r.fmt if enc is not None else None,
                              unknown_words=self._unknown(r.prompt))
            if r.mode != "off":
                ns = resident.neighbours(out.rows[i], out.scores[i], r.k)
                res.retrieved, res.retrieval_status = weigh_scores(ns, self.min_score)  # the graph's λ
                self.weak_total += res.retrieval_status == "weak"
            results.append(res)
        return results, dict(out.timings_ms)

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
    min_score: float = DEFAULT_MIN_SCORE,
    qdrant_timeout_s: float = 5.0,
    retrieval_timeout_s: float | None = 2.0,
    pipeline: Backend | OneStepPipeline | None = None,
    db_config: DbConfig | None = None,
    device_index_max_pairs: int = 2_000_000,
    feature_dtype: str = "float16",
    refresh_s: float = 30.0,
    synthetic_pairs: int = 0,
    **backend_options: Any,
) -> TextToImage:
    """Load the model through ``engines.backends.create_backend(backend, ...)`` and open the database.

    ``backend_options`` go to ``create_backend`` (e.g. ``onnx_dir=``, ``engine_dir=``);
    ``BackendUnavailable`` propagates (no fallback). ``pipeline`` lets a caller pass an
    object it already built (a OneStepPipeline or a Backend). A missing/empty/unreachable
    database does not fail the build (requests then report "unavailable"); features made
    by another model do (FingerprintMismatchError), because that is a deployment mistake.

    With a searching backend, the database is copied to the device (``ResidentIndex``)
    when it holds at most ``device_index_max_pairs`` pairs and no Qdrant server is
    configured; otherwise the search goes to Qdrant. ``synthetic_pairs`` > 0 (benchmarks
    only) fills the device copy with random pairs instead of opening the database.
    ``<model_dir>/vocabulary.txt``, when there, gives each result its ``unknown_words``.
    """
    if pipeline is None:
        from engines.backends import create_backend

        pipeline = create_backend(
            backend, model_dir, device=str(device), dtype=dtype, **backend_options
        )
    vocabulary = load_vocabulary(model_dir)
    cfg = db_config or DbConfig(
        db_path=Path(db_path) if db_path is not None else Path("data"),
        qdrant_url=qdrant_url,
        qdrant_api_key=qdrant_api_key,
        qdrant_timeout_s=qdrant_timeout_s,
    )
    if synthetic_pairs > 0:
        if not isinstance(pipeline, SearchingBackend):
            raise ValueError(f"synthetic_pairs needs a searching backend (fast), got {backend!r}")
        resident = ResidentIndex.synthetic(pipeline, synthetic_pairs, feature_dtype=feature_dtype)
        return TextToImage(pipeline, None, min_score=min_score, vocabulary=vocabulary,
                           retrieval_timeout_s=retrieval_timeout_s, resident=resident, refresh_s=0)
    db, db_error = open_db_or_reason(cfg, pipeline)
    resident = pending = None
    if db is not None and isinstance(pipeline, SearchingBackend):
        resident, pending, copy_error = device_copy(pipeline, db, bool(cfg.qdrant_url), device_index_max_pairs,
                                                    feature_dtype, refresh_s)
        db_error = copy_error or db_error
    return TextToImage(
        pipeline, db, min_score=min_score, retrieval_timeout_s=retrieval_timeout_s,
        resident=resident, refresh_s=refresh_s, db_error=db_error, pending=pending,
        vocabulary=vocabulary,
    )

