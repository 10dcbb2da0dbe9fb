"""Content negotiation of /generate (RFC 9110 ``Accept``): JSON or one image format.

``negotiate(accept, body_format, explicit)`` returns ``"json"`` or an image format, or
raises NotAcceptable (406). Rules, in order: no Accept, ``*/*`` or ``application/json``
(with q > 0) -> JSON, unless an image type has a strictly higher q. Among image types a
``format`` the client set in the body wins if acceptable (a 406 if the Accept excludes
it); otherwise the highest q wins (``image/png;q=0.5, image/jpeg;q=0.9`` -> JPEG), the
default ``format`` only on a tie (``image/*`` -> the format).
Nothing acceptable (``image/gif``, ``text/html``) -> 406.
"""

from __future__ import annotations

from service.encode import MEDIA_TYPES
from service.errors import NotAcceptable

_BY_MEDIA = {v: k for k, v in MEDIA_TYPES.items()}


def parse_accept(header: str) -> list[tuple[str, float]]:
    """``"image/png;q=0.8, */*"`` -> [("image/png", 0.8), ("*/*", 1.0)] (lower-cased)."""
    out = []
    for part in header.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        q = 1.0
        for f in fields[1:]:
            k, _, v = f.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(v)))
                except ValueError:
                    q = 0.0
        out.append((media, q))
    return out


def _q(ranges: list[tuple[str, float]], media: str) -> float:
    """q of ``media`` under the most specific matching range (0 if none matches)."""
    main = media.split("/")[0]
    best, spec = 0.0, -1
    for r, q in ranges:
        s = 2 if r == media else 1 if r == f"{main}/*" else 0 if r == "*/*" else -1
        if s > spec:
            best, spec = q, s
    return best if spec >= 0 else 0.0


def negotiate(accept: str | None, body_format: str, explicit: bool) -> str:
    if not accept or not accept.strip():
        return "json"
    ranges = parse_accept(accept)
    q_json = _q(ranges, "application/json")
    images = {fmt: _q(ranges, media) for fmt, media in MEDIA_TYPES.items()}
    # A bare */* (or image/*) does not ask for an image: JSON stays the default answer.
    named = {fmt: q for fmt, q in images.items() if q > 0 and _named(ranges, MEDIA_TYPES[fmt])}
    best_img = max(named.values(), default=0.0)
    if q_json > 0 and q_json >= best_img:
        return "json"
    if images[body_format] > 0 and (explicit or named.get(body_format, -1.0) >= best_img):
        return body_format
    if explicit:
        raise NotAcceptable(
            f"format {body_format!r} ({MEDIA_TYPES[body_format]}) is excluded by Accept: {accept}"
        )
    if named:
        return max(named, key=lambda f: named[f])
    if images[body_format] > 0:  # image/*
        return body_format
    raise NotAcceptable(
        f"cannot produce any of Accept: {accept}; available: application/json, "
        + ", ".join(MEDIA_TYPES.values())
    )


def _named(ranges: list[tuple[str, float]], media: str) -> bool:
    main = media.split("/")[0]
    return any(r in (media, f"{main}/*") for r, _ in ranges)
