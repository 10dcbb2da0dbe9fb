"""Request and response bodies of the HTTP API (docs/service.md, HTTP API).

Types are strict (a string is not an int; 2.0 is, as in JSON Schema) so wrong types get
a 422 that names the field. The prompt's upper bound is a setting (max_prompt_chars); the
handler checks it and the app's OpenAPI document states the configured value.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from engines.modes import MAX_K, Mode, RetrievalStatus

MAX_SEED = 2**32 - 1
MAX_IMAGES = 8
ImageFormat = Literal["png", "jpeg", "webp"]
OpenAISize = Literal["auto", "64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024"]
"""Square sizes only: the model generates square images (a non-square size would stretch
them). The image is resized with Lanczos from the native size; auto/null: native."""

# A prompt needs one character that is neither whitespace nor a control character, by
# Python's str.isspace *and* by ECMAScript's \s (the JSON Schema regex dialect) — the
# union is spelled out so the schema's pattern and the validator are the same regex.
_BLANK_CLASS = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
PROMPT_PATTERN = f"[^{_BLANK_CLASS}]"
_PROMPT_RE = re.compile(PROMPT_PATTERN)


def _integral(v: object) -> object:
    # JSON Schema counts 3.0 as an integer; strings and 3.5 stay errors (strict mode).
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _only_bool(v: object) -> object:
    # Literal[False] alone would take 0 (False == 0); JSON's false only.
    if not isinstance(v, bool):
        raise ValueError("Input should be a valid boolean")  # noqa: TRY004 - pydantic wants ValueError
    return v


# Constraints go before the validator in Annotated, or the JSON schema loses them.
_INT = BeforeValidator(_integral)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class RetrievalOptions(_Strict):
    mode: Mode = Field(
        "adapter",
        description="adapter: cross-attention H-adapter; inject: "
        "slerp in H-space; off: no retrieval.",
    )
    k: Annotated[int, Field(ge=1, le=MAX_K, description="Neighbours to retrieve."), _INT] = 1


def _non_blank(v: str) -> str:
    if not _PROMPT_RE.search(v):
        raise ValueError("must contain a character that is not whitespace or a control character")
    return v


_PROMPT_FIELD = Field(
    min_length=1,
    max_length=100_000,
    description="Text prompt; needs one character that is not whitespace or a control character.",
    json_schema_extra={"pattern": PROMPT_PATTERN},
)


class GenerateRequest(_Strict):
    prompt: Annotated[str, _PROMPT_FIELD]
    num_images: Annotated[int, Field(ge=1, le=MAX_IMAGES), _INT] = 1
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), _INT] | None = Field(
        None,
        description="Seed of the first image; image i uses (seed + i) mod 2**32. "
        "null: an independent random seed per image (returned in images[].seed).",
    )
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions)
    format: ImageFormat = "png"

    _prompt = field_validator("prompt")(_non_blank)


class ImageOut(BaseModel):
    b64: str = Field(description="Base64 of the encoded image.")
    seed: int
    format: ImageFormat


class NeighbourOut(BaseModel):
    id: str
    caption: str
    score: float = Field(description="Cosine similarity of the prompt and the neighbour's caption.")
    weight: float = Field(description="λ the image was generated with: the score, or 0 below min_score.")
    used: bool = Field(description="The neighbour contributed to the image (weight > 0).")


class Timings(BaseModel):
    queue: float
    text: float
    retrieval: float
    unet: float
    vae: float
    encode: float
    total: float


class GenerateResponse(BaseModel):
    id: str
    created: int
    model: str
    images: list[ImageOut]
    retrieved: list[NeighbourOut]
    retrieval_status: RetrievalStatus = Field(
        description="ok: a neighbour was used (score >= min_score); weak: neighbours found, none "
        "used (the model's own image); unavailable: retrieval failed, generated without it; "
        "off: mode off."
    )
    min_score: float = Field(description="The server's λ threshold (RAGTURBO_MIN_SCORE).")
    unknown_words: list[str] | None = Field(
        description="Prompt words outside the model's training vocabulary (only a used "
        "neighbour can show them); null: the model declares no vocabulary."
    )
    timings_ms: Timings


_UNSUPPORTED = "Not supported by this server: omit it (or send null)."


class OpenAIImagesRequest(BaseModel):
    """OpenAI ``images.generate``: each documented parameter is honoured or refused (400,
    OpenAI's error shape, naming the parameter); unknown parameters are refused too."""

    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: Annotated[str, _PROMPT_FIELD]
    model: str | None = Field(None, description="Omit, or the served model's name.")
    n: Annotated[int, Field(ge=1, le=MAX_IMAGES), _INT] | None = 1
    size: OpenAISize | None = Field(
        None, description="auto/null: the native size; a square WxH is resized (Lanczos)."
    )
    response_format: Literal["b64_json"] | None = Field(
        None, description="b64_json only (this server stores no images to link to)."
    )
    output_format: ImageFormat | None = None
    output_compression: Annotated[int, Field(ge=0, le=100), _INT] | None = Field(
        None,
        description="JPEG/WebP quality 0..100 (default 90); for png the "
        "zlib effort (100: fastest, 0: smallest; same pixels).",
    )
    quality: Literal["auto"] | None = Field(None, description="One-step model: auto only.")
    background: Literal["auto", "opaque"] | None = Field(
        None, description="Images are opaque; transparent is not supported."
    )
    moderation: Literal["auto", "low"] | None = Field(
        None, description="Accepted as auto (OpenAI's default) or low; this server applies no "
        "content filter under either."
    )
    user: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="End-user id; logged only as a hash."
    )
    safety_identifier: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="As user: logged only as a hash."
    )
    stream: Annotated[Literal[False], BeforeValidator(_only_bool)] | None = Field(
        None, description="Streaming is not supported: false or omitted."
    )
    partial_images: Annotated[int, Field(ge=0, le=0), _INT] | None = Field(
        None, description="Streaming is not supported: 0 or omitted."
    )
    style: None = Field(None, description=_UNSUPPORTED)
    complexity: None = Field(None, description=_UNSUPPORTED)
    frame_count: None = Field(None, description=_UNSUPPORTED)
    frame_duration_ms: None = Field(None, description=_UNSUPPORTED)
    svg: None = Field(None, description=_UNSUPPORTED)

    _prompt = field_validator("prompt")(_non_blank)

    def size_wh(self) -> tuple[int, int] | None:
        if self.size is None or self.size == "auto":
            return None
        w, h = (int(x) for x in self.size.split("x"))
        return w, h


class OpenAIImage(BaseModel):
    b64_json: str


class OpenAIImagesResponse(BaseModel):
    """As gpt-image-1 answers, less ``quality`` and ``usage`` (one quality level, no tokens)."""

    created: int
    data: list[OpenAIImage]
    output_format: ImageFormat
    size: str = Field(description="WxH of the returned images.")
    background: Literal["opaque"] = "opaque"


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class OpenAIErrorDetail(ErrorDetail):
    param: str | None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorDetail


class ErrorResponse(BaseModel):
    error: ErrorDetail


class DatabaseInfo(BaseModel):
    id: str = Field(description="sha256 of the data directory's absolute path (16 hex); "
                    "`ragturbo generate --db PATH` compares it with PATH's.")
    model_fingerprint: str = Field(description="Fingerprint of the model the stored features come from.")
    pairs: int = Field(description="Pairs in the feature store.")


MAX_QUERY_CHARS = 1000


class SearchRequest(_Strict):
    query: Annotated[
        str,
        Field(min_length=1, max_length=MAX_QUERY_CHARS, json_schema_extra={"pattern": PROMPT_PATTERN},
              description="Text to search for; needs one character that is not whitespace "
              "or a control character."),
    ]
    k: Annotated[int, Field(ge=1, le=MAX_K, description="Neighbours to return."), _INT] = 5

    _query = field_validator("query")(_non_blank)


class SearchHit(BaseModel):
    id: str
    caption: str
    score: float = Field(description="Cosine similarity of the query and the caption.")


class SearchResponse(BaseModel):
    results: list[SearchHit] = Field(description="Nearest first; fewer than k in a smaller database.")
    database: DatabaseInfo | None = Field(description="The database searched (as in /readyz).")


class Health(BaseModel):
    status: str
    backend: str | None = None
    model: str | None = None
    retrieval: Literal["ok", "degraded"] | None = Field(
        None, description="degraded: images are generated without retrieval (see detail)."
    )
    detail: str | None = None
    database: DatabaseInfo | None = Field(None, description="The retrieval database served (ready only).")
