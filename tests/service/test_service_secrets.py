"""No secret, path or server body reaches an unauthenticated caller or a log line:
/readyz detail, the Qdrant index's status and log, the log filter, the settings error."""

from __future__ import annotations

import io
import logging
import socket

import pytest
from pydantic import ValidationError
from service_fakes import FakeT2I
from test_service_hardening import client

from service.logs import SecretFilter, env_secrets
from service.settings import Settings, settings_error_message

PW = "pw-s3cret-9"
URL = f"http://admin:{PW}@127.0.0.1:6333"
KEY = "client-key-123"


class _Index:
    def status(self) -> tuple[bool, str]:
        return False, (
            f"Qdrant at {URL} unavailable: qdrant get_collection at {URL} failed: Unexpected "
            "Response: 403 (Forbidden)\nRaw response content:\nb'{\"status\":{\"error\":\"tok-internal\"}}'"
            "; shard /srv/ragturbo/data/edge"
        )


class _DB:
    index = _Index()


def test_readyz_detail_hides_password_paths_and_server_body() -> None:
    t2i = FakeT2I()
    t2i.db = _DB()  # type: ignore[attr-defined]
    with client(lambda _: t2i, api_keys=KEY, qdrant_url=URL) as c:
        r = c.get("/readyz")  # no key: /readyz is open
        assert r.status_code == 200 and r.json()["retrieval"] == "degraded"
        text = r.text
        assert PW not in text and "admin" not in text
        assert "tok-internal" not in text and "Raw response" not in text
        assert "/srv/ragturbo" not in text
        assert "127.0.0.1:6333" in r.json()["detail"]  # still says which server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_qdrant_server_index_never_logs_or_reports_the_password(caplog: pytest.LogCaptureFixture) -> None:
    from retrieval.server_index import QdrantServerIndex

    url = f"http://admin:{PW}@127.0.0.1:{_free_port()}"
    caplog.set_level(logging.DEBUG)
    idx = QdrantServerIndex(8, url=url, retries=0, timeout_s=0.5)
    try:
        ok, reason = idx.status()
        assert not ok and reason is not None
        assert PW not in reason and f"127.0.0.1:{url.rsplit(':', 1)[1]}" in reason
        assert "unavailable" in caplog.text and PW not in caplog.text
    finally:
        idx.close()


def test_log_filter_masks_secrets_and_userinfo_in_messages_and_exceptions() -> None:
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.addFilter(SecretFilter(env_secrets({"RAGTURBO_QDRANT_URL": URL, "RAGTURBO_API_KEYS": KEY})))
    lg = logging.getLogger("ragturbo.test.secrets")
    lg.handlers, lg.propagate = [h], False
    lg.warning("connect %s with %s", URL, KEY)
    lg.warning("plain http://bob:hunter2@h:1/x")
    try:
        raise RuntimeError(f"failed at {URL}")
    except RuntimeError:
        lg.exception("boom")
    out = buf.getvalue()
    assert PW not in out and KEY not in out and "hunter2" not in out
    assert "http://***@127.0.0.1:6333" in out and "RuntimeError" in out


def test_qdrant_url_not_a_url_is_refused_without_echoing_a_password() -> None:
    with pytest.raises(ValidationError) as e:
        Settings(device="cpu", qdrant_url="not a url")
    msg = settings_error_message(e.value)
    assert "RAGTURBO_QDRANT_URL" in msg and "'not a url'" in msg
    with pytest.raises(ValidationError) as e:
        Settings(device="cpu", qdrant_url=f"ftp://admin:{PW}@host:99999")
    msg = settings_error_message(e.value)
    assert "RAGTURBO_QDRANT_URL" in msg and PW not in msg
    assert Settings(device="cpu", qdrant_url=" http://q:6333 ").qdrant_url == "http://q:6333"
    assert Settings(device="cpu", qdrant_url="").qdrant_url is None
