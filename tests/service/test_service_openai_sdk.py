"""/v1/images/generations through the official ``openai`` SDK against the loopback server
(issue 15.1): every documented parameter is honoured or refused with OpenAI's error
shape naming it."""

from __future__ import annotations

import base64
import io
from typing import Any

import openai
import pytest
from PIL import Image
from service_servers import Server


@pytest.fixture(scope="module")
def sdk(real_server: Server) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{real_server.url}/v1", api_key="not-needed", max_retries=0, timeout=60
    )


def _image(b64: str | None) -> Image.Image:
    assert b64 is not None
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_honoured_parameters(sdk: openai.OpenAI, real_server: Server) -> None:
    res = sdk.images.generate(
        prompt="a red circle",
        n=2,
        size="256x256",
        response_format="b64_json",
        output_format="jpeg",
        output_compression=40,
        quality="auto",
        background="opaque",
        moderation="low",
        user="customer-1234",
    )
    assert len(res.data) == 2
    assert (res.output_format, res.size, res.background) == ("jpeg", "256x256", "opaque")
    for d in res.data:
        im = _image(d.b64_json)
        assert im.format == "JPEG" and im.size == (256, 256)
    webp = sdk.images.generate(prompt="a blue square", size="auto", output_format="webp",
                               moderation="auto")  # OpenAI's default: accepted, nothing filtered
    assert (webp.output_format, webp.size) == ("webp", "64x64")
    im = _image(webp.data[0].b64_json)
    assert im.format == "WEBP" and im.size == (64, 64)  # auto: the model's native size
    png = sdk.images.generate(prompt="a blue square")
    assert _image(png.data[0].b64_json).format == "PNG"
    served = sdk.images.generate(prompt="a blue square", model="tiny-random-0")
    assert len(served.data) == 1
    assert "customer-1234" not in real_server.logs()  # a hash at most


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"response_format": "url"}, "response_format", "unsupported_value"),
    ({"size": "1792x1024"}, "size", "unsupported_value"),
    ({"size": "1024x1536"}, "size", "unsupported_value"),
    ({"n": 0}, "n", "invalid_value"),
    ({"n": 10}, "n", "invalid_value"),
    ({"quality": "hd"}, "quality", "unsupported_value"),
    ({"style": "vivid"}, "style", "unsupported_value"),
    ({"background": "transparent"}, "background", "unsupported_value"),
    ({"moderation": "high"}, "moderation", "unsupported_value"),
    ({"output_format": "gif"}, "output_format", "unsupported_value"),
    ({"output_compression": 101}, "output_compression", "invalid_value"),
    ({"stream": True}, "stream", "unsupported_value"),
    ({"partial_images": 2}, "partial_images", "invalid_value"),
    ({"extra_body": {"seed_of_the_day": 3}}, "seed_of_the_day", "unknown_parameter"),
    ({"prompt": "   "}, "prompt", "invalid_value"),
]


@pytest.mark.parametrize(("kwargs", "param", "code"), REFUSED)
def test_refused_parameters_are_a_400_naming_them(
    sdk: openai.OpenAI, kwargs: dict[str, Any], param: str, code: str
) -> None:
    args: dict[str, Any] = {"prompt": "a red circle", **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        sdk.images.generate(**args)
    err = e.value
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    assert err.param == param, err.body
    assert err.code == code, err.body
    assert isinstance(err.message, str) and param in err.message


def test_unknown_model_is_404_model_not_found(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        sdk.images.generate(prompt="a red circle", model="dall-e-3")
    assert e.value.code == "model_not_found" and e.value.param == "model"
