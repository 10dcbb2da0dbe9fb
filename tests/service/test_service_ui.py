"""The side-by-side page (GET /ui and /): served by the service, self-contained (nothing
outside this origin), locked down by its CSP, and no way around the API keys."""

from __future__ import annotations

import base64
import hashlib
import re

from service_fakes import FakeT2I
from test_service_app import KEY, client


def _sha(block: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"


def test_the_page_is_served_and_self_contained() -> None:
    with client() as c:
        r = c.get("/ui")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert c.get("/").text == r.text
        assert "/ui" not in c.get("/openapi.json").json()["paths"]
    html = r.text
    # No URL of another origin, no external script, style, font or image.
    assert not re.search(r"(?i)\b(?:https?:)?//[a-z0-9]", html), "external URL in the page"
    assert not re.search(r"(?i)<(?:link|iframe|object|embed)\b|<script[^>]*\bsrc=|@import|url\(", html)
    # It calls the JSON API twice, with retrieval and without, and shows the fit fields.
    assert 'fetch("generate"' in html and '"off"' in html
    for name in ("retrieval_status", "unknown_words", "used", "weight", "score", "caption", "min_score"):
        assert name in html, name
    # The CSP allows exactly this page's inline script and style, and this origin.
    csp = r.headers["content-security-policy"]
    (script,) = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    (style,) = re.findall(r"<style>(.*?)</style>", html, flags=re.DOTALL)
    assert f"script-src {_sha(script)};" in csp and f"style-src {_sha(style)};" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "img-src data:" in csp
    assert "innerHTML" not in script  # captions are user data: text only


def test_with_api_keys_the_page_opens_but_generation_still_needs_a_key() -> None:
    with client(lambda _: FakeT2I(), api_keys=[KEY]) as c:
        assert c.get("/ui").status_code == 200  # a static page: no data, no secret
        assert 'id="apikey"' in c.get("/ui").text
        body = {"prompt": "a red circle", "seed": 0}
        assert c.post("/generate", json=body).status_code == 401
        ok = c.post("/generate", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
