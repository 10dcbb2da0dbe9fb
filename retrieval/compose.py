"""embed -> search -> gather features -> generate: the one place a prompt becomes an image.

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

Two ways to the same result: with a searching backend (``fast``) and a device copy of the
database (``retrieval.resident``), search, λ and gather run inside the backend's graph and
the rows it returns are mapped back to pairs here; otherwise the index is searched on the
host and the features are handed to the backend. ``retrieval_health`` says which runs (and,
when retrieval is down, why: /readyz reports it)."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engines.backends.base import Backend, SearchingBackend
from engines.modes import DEFAULT_MIN_SCORE, MAX_K, MODES, Mode, RetrievalStatus
from engines.rules import neighbour_lambda
from engines.vocabulary import Vocabulary, load_vocabulary
from retrieval.db import DbConfig, RetrievalDB, open_db_or_reason
from retrieval.fit import weigh, weigh_scores
from retrieval.resident import ResidentIndex, device_copy
from retrieval.types import Neighbour, RetrievalError

if TYPE_CHECKING:
    from engines.pipeline import OneStepPipeline

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ImageRequest:
    """One image to make, one item of a ``TextToImage.generate`` batch (the service turns an
    HTTP ``GenerateRequest`` into ``num_images`` of these)."""

    prompt: str
    seed: int
    mode: Mode = "adapter"
    k: int = 1  # 1..MAX_K
    exclude_ids: frozenset[str] = frozenset()
    fmt: str | None = None  # the image format the caller will encode (an engine may do it)


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
    """A pipeline plus (optionally) a retrieval database.

    ``db=None`` means retrieval is not available (e.g. the database could not be
    opened): requests with a retrieval mode get status "unavailable".
    ``retrieval_timeout_s=None``: no deadline; the search runs in the caller's thread.
    ``min_score`` defaults to 0 here (the toy evals build this directly); what is served
    uses ``DEFAULT_MIN_SCORE`` (``build_text_to_image``, the service, the CLI).
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
        if resident is not None and not isinstance(pipe, SearchingBackend):
            raise TypeError(f"a resident index needs a SearchingBackend, got {type(pipe).__name__}")
        self.pipe = pipe
        self.db = db
        self.resident = resident
        self.min_score = float(min_score)
        self.retrieval_timeout_s = retrieval_timeout_s
        self.refresh_s = float(refresh_s)
        self._last_refresh = time.monotonic()
        self.db_error = db_error
        # A device copy that could not be loaded at startup (index down): retried on refresh.
        self._pending = pending
        self._pending_error = db_error or ""
        self.model_name: str = pipe.name
        self.backend_name: str = getattr(pipe, "backend_name", "torch")
        if resident is not None:
            self.retrieval_backend = f"device-index ({resident.source}, {len(resident)} pairs)"
        else:
            self.retrieval_backend = db.backend_name if db is not None else "none"
        self.resolution: int = int(pipe.resolution)
        self.vocabulary = vocabulary
        self.unavailable_total = 0
        self.weak_total = 0
        self._pool = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="retrieval")

    def retrieval_health(self) -> tuple[bool, str]:
        """(True, where search runs) or (False, why retrieval is unavailable): /readyz."""
        db = self.db if self.db is not None else getattr(self.resident, "db", None)
        bad = getattr(getattr(db, "store", None), "bad_shards", None)
        if bad:  # the readable shards still serve; the excluded ones are named
            names = ", ".join(sorted(bad))
            return False, (f"{len(bad)} feature-store shard(s) excluded, their pairs not served "
                           f"(retried on refresh): {names}: {next(iter(bad.values()))}")
        if self.resident is not None:
            # The device copy serves even while the index is down (refreshes then wait).
            return True, f"search inside the {self.backend_name} graph over {len(self.resident)} pairs ({self.resident.source})"
        if self.db is None:
            return False, self.db_error or "no retrieval database"
        status = getattr(self.db.index, "status", None)
        ok, why = status() if status is not None else (True, None)
        if not ok:
            return False, why or f"{self.db.backend_name} unavailable"
        if self._pending is not None:
            return True, f"search in {self.db.backend_name}; device copy not loaded yet ({self._pending_error})"
        return True, f"search in {self.db.backend_name}"

    def warmup(self) -> float:
        """Compile/capture every batch bucket of the backend now (before traffic); seconds."""
        fn = getattr(self.pipe, "warmup", None)
        if fn is None:
            return 0.0
        if isinstance(self.pipe, SearchingBackend):
            return float(self.pipe.warmup(("search",) if self.resident is not None else None))
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def _maybe_refresh(self) -> None:
        if (self.resident is None and self._pending is None) or self.refresh_s <= 0:
            return
        now = time.monotonic()
        if now - self._last_refresh < self.refresh_s:
            return
        self._last_refresh = now
        if self._pending is not None:
            self._load_pending()
            return
        assert self.resident is not None
        try:
            self.resident.refresh()
        except Exception as e:  # noqa: BLE001 - a failed refresh keeps serving the old copy
            log.error("resident index refresh failed (%s: %s); serving the copy as is", type(e).__name__, e)

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
        db = self.db if self.db is not None else getattr(self.resident, "db", None)
        if db is None:  # with a device copy (fast backend) the host index is the resident's
            raise RetrievalError(self.db_error or "no retrieval database")
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
        for r in reqs:
            if not 1 <= r.k <= MAX_K:
                raise ValueError(f"k must be in 1..{MAX_K}, got {r.k}")
            if r.mode not in MODES:
                raise ValueError(f"mode must be one of {', '.join(MODES)}; got {r.mode!r}")
        self._maybe_refresh()
        if self.resident is not None and not any(r.exclude_ids for r in reqs):
            return self._generate_resident(reqs)
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
                dev = pipe.device
                h_retr = torch.zeros((len(reqs), kmax, *pipe.h_shape), dtype=torch.float32, device=dev)
                lam = torch.zeros((len(reqs), kmax), dtype=torch.float32, device=dev)
                feats = feats.to(dev, torch.float32)
                pos = 0
                for i, ns in zip(want, neigh):
                    modes[i] = reqs[i].mode
                    for j, n in enumerate(ns):
                        h_retr[i, j] = feats[pos]
                        lam[i, j] = n.score
                        pos += 1
                lam = neighbour_lambda(lam, self.min_score)
                lam_host = lam.cpu().tolist()
                for i, ns in zip(want, neigh):
                    retrieved[i], status[i] = weigh(ns, lam_host[i][: len(ns)])
        timings["retrieval"] = (time.perf_counter() - t0) * 1e3

        out = pipe.generate(text, [r.seed for r in reqs], modes, h_retr, lam)
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

    def _load_pending(self) -> None:
        pend = self._pending
        assert pend is not None
        try:
            pend.load()
        except Exception as e:  # noqa: BLE001 - keep serving through the index; retry later
            self._pending_error = f"{type(e).__name__}: {e}"
            log.warning("device copy of the database still not loaded (%s)", self._pending_error)
            return
        isp = self.pipe
        if isinstance(isp, SearchingBackend):
            isp.warmup(("search",))
        self.resident, self._pending = pend, None
        self.retrieval_backend = f"device-index ({pend.source}, {len(pend)} pairs)"
        log.info("device copy of the database loaded: search now runs inside the graph")

    def _generate_resident(self, reqs: Sequence[ImageRequest]) -> tuple[list[ImageResult], dict[str, float]]:
        """Search, λ and gather inside the backend's graph; rows mapped back to pairs here."""
        assert self.resident is not None and isinstance(self.pipe, SearchingBackend)
        out = self.pipe.generate_search(
            [r.prompt for r in reqs], [r.seed for r in reqs], [r.mode for r in reqs],
            [r.k for r in reqs], self.min_score, encode=[r.fmt for r in reqs],
        )
        results = []
        for i, r in enumerate(reqs):
            enc = out.encoded[i] if out.encoded is not None else None
            extra: dict[str, Any] = {"encoded": enc, "encoded_format": r.fmt if enc is not None else None,
                                     "unknown_words": self._unknown(r.prompt)}
            if r.mode == "off":
                results.append(ImageResult(image=out.images[i], seed=r.seed, **extra))
                continue
            ns = self.resident.neighbours(out.rows[i], out.scores[i], r.k)
            ns, status = weigh_scores(ns, self.min_score)  # the graph's λ, from the same scores
            self.weak_total += status == "weak"
            results.append(
                ImageResult(image=out.images[i], seed=r.seed, retrieved=ns, retrieval_status=status, **extra)
            )
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

