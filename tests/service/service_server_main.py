"""Entry point of the loopback test servers: the real service app and server (drain
included) with a chosen engine. Settings come from RAGTURBO_* as in production."""

from __future__ import annotations

import enum
from typing import Annotated

import typer
from service_fakes import FakeT2I, real_factory

from service.app import create_app
from service.logs import configure_logging
from service.server import serve
from service.settings import Settings


class Engine(str, enum.Enum):
    real = "real"
    fake = "fake"


def main(
    engine: Annotated[Engine, typer.Option(help="the real engine or the fake one")] = Engine.real,
    batch_s: Annotated[float, typer.Option("--batch-s", help="fake engine: seconds per batch")] = 0.0,
    noise_res: Annotated[int, typer.Option("--noise-res", help="fake engine: noise images of this size")] = 0,
) -> None:
    settings = Settings()
    configure_logging(settings.log_format, "INFO")
    fake = {"batch_s": batch_s, **({"noise": True, "resolution": noise_res} if noise_res else {})}
    factory = real_factory if engine is Engine.real else (lambda s: FakeT2I(**fake))
    serve(settings, create_app(settings, factory))


if __name__ == "__main__":
    typer.run(main)
