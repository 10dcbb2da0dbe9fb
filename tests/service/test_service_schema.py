"""Property-based tests from the OpenAPI document against the real server (schemathesis):
no 5xx, and responses conform to the document (status codes, content types, bodies)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from service_servers import Server

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="session")
def api_schema(real_server: Server):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_url(f"{real_server.url}/openapi.json")


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_conforms_and_never_5xx(case: schemathesis.Case) -> None:
    case.call_and_validate(timeout=30)
