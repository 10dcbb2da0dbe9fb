"""Request and response bodies of the HTTP API (DESIGN.md, HTTP API).

Types are strict (a string is not an int; 2.0 is, as in JSON Schema) so wrong types get
a 422 that names the field. The prompt's upper bound is a setting (max_prompt_chars); the
handler checks it and the app's OpenAPI document states the configured value.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MAX_SEED = 2**32 - 1
MAX_IMAGES = 8
ImageFormat = Literal["png", "jpeg", "webp"]
Mode = Literal["adapter", "inject", "off"]
OpenAISize = Literal[
    "64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024", "1024x1792", "1792x1024"
]


def _integral(v: object) -> object:
    # JSON Schema counts 3.0 as an integer; strings and 3.5 stay errors (strict mode).
    if isinstance(v, float) and v.is_integer():
        return int(v)
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
    k: Annotated[int, Field(ge=1, le=8, description="Neighbours to retrieve."), _INT] = 1


def _non_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must contain a non-whitespace character")
    return v


class GenerateRequest(_Strict):
    prompt: Annotated[str, Field(min_length=1, max_length=100_000, description="Text prompt.")]
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
    score: float


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
    retrieval_status: Literal["ok", "unavailable", "off"]
    timings_ms: Timings


class OpenAIImagesRequest(BaseModel):
    """OpenAI ``images.generate`` subset; other OpenAI fields (model, user, ...) are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    prompt: Annotated[str, Field(min_length=1, max_length=100_000)]
    n: Annotated[int, Field(ge=1, le=MAX_IMAGES), _INT] = 1
    size: OpenAISize | None = Field(
        None,
        description="WIDTHxHEIGHT; the image is resized (Lanczos) from the model's "
        "native size. null: native size.",
    )
    response_format: Literal["b64_json"] = "b64_json"

    _prompt = field_validator("prompt")(_non_blank)

    def size_wh(self) -> tuple[int, int] | None:
        if self.size is None:
            return None
        w, h = (int(x) for x in self.size.split("x"))
        return w, h


class OpenAIImage(BaseModel):
    b64_json: str


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    backend: str | None = None
    model: str | None = None
    detail: str | None = None
