"""The page a person looks at retrieval with: ``GET /ui`` (and ``GET /``).

One static HTML file (``service/static/index.html``) with its script and style inline: no
CDN, nothing fetched but the service's own ``POST /generate`` (twice, retrieval on and
off, same seed), so it works offline. It holds no secret and grants nothing: with API keys
configured the page asks for one and sends it on its calls, which the API checks as any
other client's. The Content-Security-Policy allows exactly the inline script and style
(by hash), images from ``data:`` URLs and connections to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = "index.html"


@cache
def page() -> tuple[str, str]:
    """(the page's HTML, its Content-Security-Policy)."""
    html = resources.files("service").joinpath("static", PAGE).read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
            for b in blocks
        )

    csp = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html, csp


def build_ui_router() -> APIRouter:
    router = APIRouter()

    @router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def ui() -> HTMLResponse:
        html, csp = page()
        return HTMLResponse(
            html,
            headers={
                "content-security-policy": csp,
                "x-content-type-options": "nosniff",
                "referrer-policy": "no-referrer",
                "cache-control": "no-cache",
            },
        )

    return router
