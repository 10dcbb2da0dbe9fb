"""Keeping secrets and internals out of logs and public answers.

``redact_url`` drops the userinfo (``user:password@``), query and fragment of a URL:
what logs and messages show of ``RAGTURBO_QDRANT_URL``. ``public_reason`` turns an
operator-facing reason (an exception message, an index status) into text fit for an
unauthenticated caller (``/readyz``): URLs keep only scheme, host and port, absolute
filesystem paths become ``<path>``, a server's raw response body is cut off, the given
secrets are masked, and the text is one line of bounded length. ``mask_secrets`` masks
known secret values and URL userinfo in any text (the log filter uses it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*)://([^\s/?#'\"<>]*)([^\s'\"<>]*)")
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@'\"<>]*@")
_PATH = re.compile(r"(?<![\w:/.~\-])/(?:[^\s:;,()'\"<>\[\]]+)")
_RAW_BODY = re.compile(r"\s*Raw response content:.*", re.DOTALL)
MAX_PUBLIC_CHARS = 300


def redact_url(url: str) -> str:
    """``scheme://host:port/path`` without userinfo, query or fragment (``***@`` marks a
    removed userinfo). A value that does not parse as a URL is returned with any
    ``user:pass@`` masked."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return _USERINFO.sub(rf"\1{MASK}@", url)
    if not parts.scheme or host is None:
        return _USERINFO.sub(rf"\1{MASK}@", url)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def url_secrets(url: str | None) -> list[str]:
    """The password in a URL's userinfo: a value a log must never show (the user name is
    not masked everywhere: it is often a common word; the URL form is masked whole)."""
    if not url:
        return []
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password] if password else []


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every given secret (non-empty) and every URL userinfo masked."""
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(s, MASK)
    return _USERINFO.sub(rf"\1{MASK}@", text)


def _public_url(m: re.Match[str]) -> str:
    netloc = m.group(2).rsplit("@", 1)[-1]
    return f"{m.group(1)}://{netloc}"


def public_reason(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """An operator's reason made safe for an unauthenticated caller (see module doc)."""
    if text is None:
        return None
    out = _RAW_BODY.sub("", mask_secrets(text, secrets))
    out = _URL.sub(_public_url, out)
    out = _PATH.sub("<path>", out)
    out = " ".join(out.split())
    if len(out) > MAX_PUBLIC_CHARS:
        out = out[: MAX_PUBLIC_CHARS - 1] + "…"
    return out
