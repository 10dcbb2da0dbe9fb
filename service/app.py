"""The FastAPI app (docs/service.md, HTTP API): lifespan, middleware, error handlers, routes.

``create_app(settings, factory)`` wires everything; nothing happens at import time. The
engine is built and warmed up in the background after startup so /healthz answers at
once and /readyz turns 200 only after a real generation. The jobs live in their own
modules: ``service.auth`` (API keys), ``service.admission`` (admitting and waiting for
one request), ``service.routes`` (the APIRouter), ``service.accept`` (content
negotiation). The OpenAPI document is generated from the routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.admin import build_admin_router
from service.errors import install_handlers
from service.http_rules import HeadAsGetMiddleware, HostCheckMiddleware
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.routes import build_router
from service.seam import EngineFactory, build_from_settings
from service.settings import Settings
from service.state import ServiceState
from service.ui import build_ui_router


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
        # The Swagger UI page loads its scripts from a CDN: no docs page (an offline or
        # locked-down service must not fetch third-party code); /openapi.json stays.
        docs_url=None,
        redoc_url=None,
        # Starlette's trailing-slash redirect builds its Location from the Host header
        # (POST /generate/ with Host: evil.example -> http://evil.example/generate):
        # no redirects; /generate/ is a 404 like any unknown path.
        redirect_slashes=False,
    )
    install_handlers(app)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics)
    if settings.allowed_hosts:  # set: every request; empty: service.server adds the bind default
        app.add_middleware(HostCheckMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    app.include_router(build_router(settings))
    app.include_router(build_admin_router(settings))
    app.include_router(build_ui_router())  # GET /ui and /: the side-by-side page

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            # The prompt limit is a setting; the models carry only the hard upper bound.
            for comp in schema.get("components", {}).get("schemas", {}).values():
                prompt = comp.get("properties", {}).get("prompt")
                if prompt is not None and "maxLength" in prompt:
                    prompt["maxLength"] = settings.max_prompt_chars
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


__all__ = ["create_app"]
