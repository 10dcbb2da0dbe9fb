"""API keys (docs/service.md, 401): ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

FastAPI's security classes read the headers, so the OpenAPI document declares both
schemes on exactly the routes that need a key (it is generated from the routes). Every
configured key is compared in constant time; a refusal is counted where it happens.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized
from service.state import ServiceState

bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="bearer", description="Authorization: Bearer <API key>"
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="apiKey", description="X-API-Key: <API key>"
)


def get_state(request: Request) -> ServiceState:
    return request.app.state.service  # type: ignore[no-any-return]


State = Annotated[ServiceState, Depends(get_state)]


def check_key(state: ServiceState, given: str | None) -> None:
    """Raise Unauthorized unless ``given`` is one of the configured keys (none: open)."""
    keys = state.settings.api_keys
    if not keys:
        return
    raw = (given or "").encode()
    ok = False
    for key in keys:  # every key compared, in constant time each
        ok |= hmac.compare_digest(raw, key.get_secret_value().encode())
    if not ok:
        state.metrics.rejected.labels(reason="unauthorized").inc()
        raise Unauthorized("missing or invalid API key")


def require_key(
    state: State,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> None:
    """The dependency of a protected route (added only when keys are configured)."""
    check_key(state, bearer.credentials.strip() if bearer is not None else api_key)
