"""Entry point of the loopback test servers: the real service app and server (drain
included) with a chosen engine. Settings come from RAGTURBO_* as in production."""

from __future__ import annotations

import argparse

from service_fakes import FakeT2I, real_factory

from service.app import create_app
from service.logs import configure_logging
from service.server import serve
from service.settings import Settings


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", choices=["real", "fake"], default="real")
    p.add_argument("--batch-s", type=float, default=0.0, help="fake engine: seconds per batch")
    args = p.parse_args()
    settings = Settings()
    configure_logging(settings.log_format, "INFO")
    factory = real_factory if args.engine == "real" else (lambda s: FakeT2I(batch_s=args.batch_s))
    serve(settings, create_app(settings, factory))


if __name__ == "__main__":
    main()
