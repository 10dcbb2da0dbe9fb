"""The HTTP routes (docs/service.md, HTTP API) as an APIRouter built from the settings.

Dependencies are ``Annotated``: ``State`` (the ServiceState of the app) and, only when
API keys are configured, the key check — so the OpenAPI document, generated from these
routes, declares the security schemes exactly where they apply (including /metrics with
``METRICS_REQUIRE_KEY``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from retrieval.redact import public_reason
from retrieval.types import RetrievalError
from service.accept import negotiate
from service.admission import record, run_job
from service.auth import State, require_key
from service.encode import MEDIA_TYPES, encode_result, encode_result_b64
from service.errors import (
    BadRequest,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    NotReady,
    OpenAIBadRequest,
    ServiceError,
)
from service.schemas import (
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Health,
    ImageOut,
    NeighbourOut,
    OpenAIErrorResponse,
    OpenAIImage,
    OpenAIImagesRequest,
    OpenAIImagesResponse,
    SearchHit,
    SearchRequest,
    SearchResponse,
    Timings,
)
from service.seam import database_info
from service.settings import Settings

log = logging.getLogger(__name__)

_ERR = {"model": ErrorResponse}
GEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Invalid JSON, or an image Accept with num_images > 1."},
    401: {**_ERR, "description": "Missing or wrong API key (when keys are configured)."},
    406: {**_ERR, "description": "Accept names no format this route can produce."},
    408: {**_ERR, "description": "Request head or body not received in time."},
    413: {**_ERR, "description": "Body too large."},
    422: {**_ERR, "description": "A field is invalid; the message names it."},
    429: {**_ERR, "description": "Queue full; see Retry-After."},
    500: {**_ERR, "description": "The model failed on this request's batch (or a bug)."},
    503: {**_ERR, "description": "Not ready, failed or draining."},
    504: {**_ERR, "description": "Deadline passed."},
}
_OAI = {"model": OpenAIErrorResponse}
OPENAI_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_OAI, "description": "A parameter is invalid or not supported; `param` names it."},
    404: {**_OAI, "description": "`model` names a model this server does not serve."},
    "4XX": {**_OAI, "description": "401 key, 408 slow client, 413 too large, 429 queue full."},
    500: {**_OAI, "description": "The model failed on this request's batch (or a bug)."},
    503: {**_OAI, "description": "Not ready, failed or draining."},
    504: {**_OAI, "description": "Deadline passed."},
}


def neighbour_out(nb: Any) -> NeighbourOut:
    """A retrieved neighbour as JSON, with the λ it got (``Neighbour.weight``)."""
    w = float(getattr(nb, "weight", None) or 0.0)
    return NeighbourOut(id=str(nb.id), caption=nb.caption, score=float(nb.score), weight=w, used=w > 0)


def _user_hash(body: OpenAIImagesRequest) -> str | None:
    who = body.safety_identifier or body.user
    return hashlib.sha256(who.encode()).hexdigest()[:16] if who else None


async def _encode_b64(state: Any, results: Any, *args: Any) -> list[str]:
    """Each result as base64 of its image, on the encode pool (``encode_result_b64(r, *args)``)."""
    loop = asyncio.get_running_loop()
    work = (loop.run_in_executor(state.encode_pool, encode_result_b64, r, *args) for r in results)
    return list(await state.unless_drain_expired(asyncio.gather(*work)))


async def generate(body: GenerateRequest, request: Request, state: State) -> Any:
    """Generate ``num_images`` images for ``prompt`` (batched with other requests)."""
    with state.track():
        explicit = "format" in body.model_fields_set
        try:
            out = negotiate(request.headers.get("accept"), body.format, explicit)
        except ServiceError:
            state.metrics.rejected.labels(reason="invalid").inc()
            raise
        if out != "json" and body.num_images != 1:
            raise BadRequest(f"an image Accept needs num_images 1, got {body.num_images}")
        adm = await run_job(request, state, body, body.format if out == "json" else out)
        res = adm.result
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        if out != "json":
            data = await state.unless_drain_expired(
                loop.run_in_executor(state.encode_pool, encode_result, res.results[0], out)
            )
            record(state, res, time.perf_counter() - t0)
            return Response(
                data, media_type=MEDIA_TYPES[out], headers={"X-Seed": str(adm.seeds[0])}
            )
        b64s = await _encode_b64(state, res.results, body.format)
        encode_s = time.perf_counter() - t0
        record(state, res, encode_s)
        return _generate_json(state, body, adm, b64s, encode_s)


def _generate_json(
    state: Any, body: GenerateRequest, adm: Any, b64s: list[str], encode_s: float
) -> GenerateResponse:
    res = adm.result
    first = res.results[0]
    t = res.timings_ms
    assert state.t2i is not None
    return GenerateResponse(
        id=f"gen-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=state.t2i.model_name,
        images=[
            ImageOut(b64=b, seed=r.seed, format=body.format) for b, r in zip(b64s, res.results)
        ],
        retrieved=[neighbour_out(nb) for nb in first.retrieved],
        retrieval_status=first.retrieval_status,
        min_score=float(getattr(state.t2i, "min_score", state.settings.min_score)),
        unknown_words=getattr(first, "unknown_words", None),
        timings_ms=Timings(
            queue=res.queue_s * 1000,
            text=t.get("text", 0.0),
            retrieval=t.get("retrieval", 0.0),
            unet=t.get("unet", 0.0),
            vae=t.get("vae", 0.0),
            encode=encode_s * 1000,
            total=(time.monotonic() - adm.arrival) * 1000,
        ),
    )


async def openai_images(body: OpenAIImagesRequest, request: Request, state: State) -> Any:
    """OpenAI ``images.generate``: prompt, n, size (auto or square), response_format
    b64_json, output_format, output_compression; retrieval runs with the defaults
    (adapter, k=1), seeds are random. Other parameters: see the schema."""
    with state.track():
        model = state.t2i.model_name if state.t2i is not None else None
        if body.model is not None and model is not None and body.model != model:
            raise ModelNotFound(
                f"The model '{body.model}' does not exist on this server; it serves "
                f"'{model}' (or omit model).",
                param="model",
            )
        fmt = body.output_format or "png"
        user = _user_hash(body)
        if user is not None:
            log.info("openai request", extra={"user_hash": user, "n": body.n or 1})
        spec = GenerateRequest(prompt=body.prompt, num_images=body.n or 1, format=fmt)
        try:
            adm = await run_job(request, state, spec)
        except InvalidInput as e:  # in the wording of the route's other 400s
            msg = e.message.removeprefix(f"{e.param}: ") if e.param else e.message
            text = f"Invalid value for '{e.param}': {msg}." if e.param else e.message
            raise OpenAIBadRequest(text, param=e.param) from e
        t0 = time.perf_counter()
        size = body.size_wh()
        b64s = await _encode_b64(state, adm.result.results, fmt, size, body.output_compression)
        record(state, adm.result, time.perf_counter() - t0)
        res = state.t2i.resolution if state.t2i is not None else 0
        w, h = size or (res, res)
        return OpenAIImagesResponse(
            created=int(time.time()), data=[OpenAIImage(b64_json=b) for b in b64s],
            output_format=fmt, size=f"{w}x{h}",
        )


async def search(body: SearchRequest, state: State) -> SearchResponse:
    """The ``k`` nearest captions to ``query`` in the served database, with cosine
    scores: the text embedding and index search of /generate, on the model worker."""
    with state.track():
        t2i = state.t2i
        if not state.ready or t2i is None:
            state.metrics.rejected.labels(reason="not_ready").inc()
            raise NotReady(f"service is {state.status}", code=state.status)
        fn = getattr(t2i, "search", None)
        if fn is None:
            raise NotReady("this engine does not search", code="retrieval_unavailable")
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(state.gpu_pool, fn, body.query, body.k)
        try:
            hits = await state.unless_drain_expired(
                asyncio.wait_for(work, state.settings.request_timeout_s)
            )
        except TimeoutError as e:
            state.metrics.rejected.labels(reason="timeout").inc()
            raise DeadlineExceeded(
                f"search took longer than {state.settings.request_timeout_s} s"
            ) from e
        except RetrievalError as e:  # the index or store is down: say so, no paths
            log.error("search failed: %s", e)
            reason = public_reason(str(e), state.settings.secret_values())
            raise NotReady(
                f"retrieval unavailable: {reason}", code="retrieval_unavailable"
            ) from e
        return SearchResponse(
            results=[SearchHit(id=str(n.id), caption=n.caption, score=float(n.score)) for n in hits],
            database=database_info(t2i),
        )


async def healthz(state: State) -> Health:
    """Liveness: the process serves HTTP; 503 once the engine failed its health check
    after a batch error (a restart is the fix)."""
    if state.engine_broken:
        raise NotReady(state.detail, code="engine_broken")
    return Health(status="ok")


async def readyz(state: State) -> Any:
    """200 only after a real warm-up generation; 503 while starting, failed or draining.
    Retrieval down keeps it 200 with ``retrieval: degraded`` and the reason."""
    if not state.ready or state.t2i is None:
        raise NotReady(
            f"service is {state.status}" + (f": {state.detail}" if state.detail else ""),
            code=state.status,
        )
    state.refresh_retrieval()
    degraded = state.retrieval_ok is False
    return Health(
        status="degraded" if degraded else "ready",
        backend=state.t2i.backend_name,
        model=state.t2i.model_name,
        retrieval=None if state.retrieval_ok is None else "degraded" if degraded else "ok",
        # degraded: why; ok: where the search runs. /readyz is open: no URL userinfo,
        # paths, server bodies or secrets (the log has the full reason).
        detail=public_reason(state.retrieval_reason, state.settings.secret_values()),
        database=database_info(state.t2i),
    )


async def metrics_route(state: State) -> Response:
    """Prometheus text format."""
    state.refresh_retrieval()
    m = state.metrics
    return Response(m.render(), media_type=m.content_type)


def _add_generation(router: APIRouter, auth: list[Any]) -> None:
    """POST /generate, /v1/images/generations and /search (behind the key check)."""
    image_200 = {
        "content": {m: {} for m in MEDIA_TYPES.values()},
        "description": "JSON; or the image itself when Accept asks for an image type (num_images 1).",
    }
    router.add_api_route(
        "/generate", generate, methods=["POST"], response_model=GenerateResponse,
        dependencies=auth, responses={**GEN_RESPONSES, 200: image_200},
    )
    router.add_api_route(
        "/v1/images/generations", openai_images, methods=["POST"],
        response_model=OpenAIImagesResponse, dependencies=auth, responses=OPENAI_RESPONSES,
    )
    router.add_api_route(
        "/search", search, methods=["POST"], response_model=SearchResponse, dependencies=auth,
        responses={k: v for k, v in GEN_RESPONSES.items() if k not in (406, 429, 500)},
    )


def _add_probes(router: APIRouter, metrics_auth: list[Any]) -> None:
    """GET /healthz and /readyz (always open) and /metrics (keyed when configured)."""
    router.add_api_route("/healthz", healthz, methods=["GET"], response_model=Health,
                         responses={503: _ERR})
    router.add_api_route("/readyz", readyz, methods=["GET"], response_model=Health,
                         responses={503: _ERR})
    router.add_api_route(
        "/metrics", metrics_route, methods=["GET"], response_class=Response,
        responses={401: _ERR, 200: {"content": {"text/plain": {}}}}, dependencies=metrics_auth,
    )


def build_router(settings: Settings) -> APIRouter:
    """The routes of docs/service.md's HTTP API; the key check only where keys are set."""
    auth = [Depends(require_key)] if settings.api_keys else []
    router = APIRouter()
    _add_generation(router, auth)
    _add_probes(router, auth if settings.metrics_require_key else [])
    return router
