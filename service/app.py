"""The FastAPI app (DESIGN.md, HTTP API): routes, auth, admission and response building.

``create_app(settings, factory)`` wires everything; nothing happens at import time. The
engine is built and warmed up in the background after startup so /healthz answers at
once and /readyz turns 200 only after a real generation.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

from service.batcher import Job, JobResult
from service.encode import MEDIA_TYPES, encode_b64, encode_result, encode_result_b64
from service.engine import EngineFactory, build_from_settings, gen_request
from service.errors import (
    BadRequest,
    ClientGone,
    DeadlineExceeded,
    InvalidInput,
    NotReady,
    ServiceError,
    Unauthorized,
    install_handlers,
)
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.schemas import (
    MAX_SEED,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Health,
    ImageOut,
    NeighbourOut,
    OpenAIImage,
    OpenAIImagesRequest,
    OpenAIImagesResponse,
    Timings,
)
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger(__name__)

_ERR = {"model": ErrorResponse}
GEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Invalid JSON or unsatisfiable Accept."},
    401: {**_ERR, "description": "Missing or wrong API key (when keys are configured)."},
    413: {**_ERR, "description": "Body too large."},
    422: {**_ERR, "description": "A field is invalid; the message names it."},
    429: {**_ERR, "description": "Queue full; see Retry-After."},
    503: {**_ERR, "description": "Not ready or draining."},
    504: {**_ERR, "description": "Deadline passed."},
}


def _state(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def _check_key(request: Request, state: ServiceState) -> None:
    keys = state.settings.api_keys
    if not keys:
        return
    given = (_presented_key(request) or "").encode()
    ok = False
    for key in keys:  # every key compared, in constant time each
        ok |= hmac.compare_digest(given, key.get_secret_value().encode())
    if not ok:
        state.metrics.rejected.labels(reason="unauthorized").inc()
        raise Unauthorized("missing or invalid API key")


def require_key(request: Request) -> None:
    _check_key(request, _state(request))


def require_metrics_key(request: Request) -> None:
    state = _state(request)
    if state.settings.metrics_require_key:
        _check_key(request, state)


Auth = Annotated[None, Depends(require_key)]


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _run_job(
    request: Request, prompt: str, n: int, seed: int | None, mode: str, k: int,
    fmt: str | None = None,
) -> tuple[JobResult, list[int], float]:
    """Admission + batching for one request; returns its results, seeds and arrival."""
    state = _state(request)
    arrival = time.monotonic()
    s = state.settings
    if len(prompt) > s.max_prompt_chars:
        state.metrics.rejected.labels(reason="invalid").inc()
        raise InvalidInput(
            f"prompt: at most {s.max_prompt_chars} characters allowed, got {len(prompt)}"
        )
    if not state.ready or state.batcher is None or state.t2i is None:
        state.metrics.rejected.labels(reason="not_ready").inc()
        raise NotReady(f"service is {state.status}", code=state.status)
    if s.log_prompts:
        log.info("prompt", extra={"prompt": prompt, "num_images": n})
    if seed is None:
        seeds = [secrets.randbelow(MAX_SEED + 1) for _ in range(n)]
    else:
        seeds = [(seed + i) % (MAX_SEED + 1) for i in range(n)]
    reqs = [gen_request(prompt, sd, mode, k, fmt) for sd in seeds]
    deadline = arrival + s.request_timeout_s
    job: Job = state.batcher.submit(reqs, deadline)  # raises QueueFull (counted)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {job.future, watcher},
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        watcher.cancel()
    if job.future in done:
        return job.future.result(), seeds, arrival  # may raise DeadlineExceeded
    if watcher in done:
        state.batcher.abandon(job, "disconnected")
        raise ClientGone("client disconnected")
    if not state.batcher.abandon(job, "timeout"):
        state.metrics.rejected.labels(reason="timeout").inc()
    raise DeadlineExceeded(f"request took longer than {s.request_timeout_s} s")


def _record(state: ServiceState, res: JobResult, encode_s: float) -> None:
    m = state.metrics
    first = res.results[0]
    m.stage_duration.labels(stage="encode").observe(encode_s)
    m.images_generated.inc(len(res.results))
    for nb in first.retrieved:
        m.retrieval_score.observe(float(nb.score))
    if first.retrieval_status == "unavailable":
        m.retrieval_unavailable.inc()


def _wants_image(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    if not accept or "application/json" in accept or "*/*" in accept:
        return False
    return "image/" in accept


def create_app(settings: Settings, factory: EngineFactory | None = None) -> FastAPI:
    """The service app. ``factory(settings) -> TextToImage`` defaults to the real engine."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(settings, metrics, factory or build_from_settings)
        app.state.service = state
        state.start()
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="ragturbo",
        version="0.1.0",
        description="One-step retrieval-augmented text-to-image (ImageRAGTurbo).",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    install_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

    @app.post(
        "/generate",
        response_model=GenerateResponse,
        responses={
            **GEN_RESPONSES,
            200: {
                "content": {m: {} for m in MEDIA_TYPES.values()},
                "description": "JSON; or the image itself with Accept: image/* and num_images 1.",
            },
        },
    )
    async def generate(body: GenerateRequest, request: Request, _: Auth) -> Any:
        """Generate ``num_images`` images for ``prompt`` (batched with other requests)."""
        state = _state(request)
        with state.track():
            return await _generate(body, request, state)

    async def _generate(body: GenerateRequest, request: Request, state: ServiceState) -> Any:
        as_image = _wants_image(request)
        if as_image and body.num_images != 1:
            raise BadRequest(f"Accept: image/* needs num_images 1, got {body.num_images}")
        res, seeds, arrival = await _run_job(
            request,
            body.prompt,
            body.num_images,
            body.seed,
            body.retrieval.mode,
            body.retrieval.k,
            body.format,
        )
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        if as_image:
            data = await loop.run_in_executor(
                state.encode_pool, encode_result, res.results[0], body.format
            )
            _record(state, res, time.perf_counter() - t0)
            return Response(
                data, media_type=MEDIA_TYPES[body.format], headers={"X-Seed": str(seeds[0])}
            )
        b64s = await asyncio.gather(
            *(
                loop.run_in_executor(state.encode_pool, encode_result_b64, r, body.format)
                for r in res.results
            )
        )
        encode_s = time.perf_counter() - t0
        _record(state, res, encode_s)
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
            retrieved=[
                NeighbourOut(id=str(nb.id), caption=nb.caption, score=float(nb.score))
                for nb in first.retrieved
            ],
            retrieval_status=first.retrieval_status,
            timings_ms=Timings(
                queue=res.queue_s * 1000,
                text=t.get("text", 0.0),
                retrieval=t.get("retrieval", 0.0),
                unet=t.get("unet", 0.0),
                vae=t.get("vae", 0.0),
                encode=encode_s * 1000,
                total=(time.monotonic() - arrival) * 1000,
            ),
        )

    @app.post(
        "/v1/images/generations", response_model=OpenAIImagesResponse, responses=GEN_RESPONSES
    )
    async def openai_images(body: OpenAIImagesRequest, request: Request, _: Auth) -> Any:
        """OpenAI-compatible subset (prompt, n, size, response_format=b64_json); retrieval
        runs with the defaults (adapter, k=1), seeds are random."""
        state = _state(request)
        with state.track():
            return await _openai(body, request, state)

    async def _openai(body: OpenAIImagesRequest, request: Request, state: ServiceState) -> Any:
        res, _seeds, _ = await _run_job(request, body.prompt, body.n, None, "adapter", 1)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        size = body.size_wh()
        b64s = await asyncio.gather(
            *(
                loop.run_in_executor(state.encode_pool, encode_b64, r.image, "png", size)
                for r in res.results
            )
        )
        _record(state, res, time.perf_counter() - t0)
        return OpenAIImagesResponse(
            created=int(time.time()), data=[OpenAIImage(b64_json=b) for b in b64s]
        )

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """Liveness: the process serves HTTP."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: _ERR})
    async def readyz(request: Request) -> Any:
        """200 only after a real warm-up generation; 503 while starting, failed or draining."""
        state = _state(request)
        if not state.ready or state.t2i is None:
            raise NotReady(
                f"service is {state.status}" + (f": {state.detail}" if state.detail else ""),
                code=state.status,
            )
        return Health(status="ready", backend=state.t2i.backend_name, model=state.t2i.model_name)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={401: _ERR},
        dependencies=[Depends(require_metrics_key)],
    )
    async def metrics_route(request: Request) -> Response:
        """Prometheus text format."""
        m = _state(request).metrics
        return Response(m.render(), media_type=m.content_type)

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        comps = schema.get("components", {}).get("schemas", {})
        for name in ("GenerateRequest", "OpenAIImagesRequest"):
            if name in comps:
                comps[name]["properties"]["prompt"]["maxLength"] = settings.max_prompt_chars
        for name in ("HTTPValidationError", "ValidationError"):
            comps.pop(name, None)
        for path in schema.get("paths", {}).values():
            for op in path.values():
                resp = op.get("responses", {})
                if "422" in resp:
                    resp["422"] = {
                        "description": GEN_RESPONSES[422]["description"],
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorResponse"}
                            }
                        },
                    }
        if settings.api_keys:
            comps_root = schema.setdefault("components", {})
            comps_root["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for p in ("/generate", "/v1/images/generations"):
                for op in schema["paths"].get(p, {}).values():
                    op["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app


__all__ = ["JSONResponse", "ServiceError", "create_app"]
