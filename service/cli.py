"""``ragturbo serve`` (docs/service.md, CLI)."""

from __future__ import annotations

import typer


def serve(
    host: str | None = typer.Option(None, "--host", help="Bind address (RAGTURBO_HOST)."),
    port: int | None = typer.Option(None, "--port", help="Bind port (RAGTURBO_PORT)."),
) -> None:
    """Run the HTTP service; every other setting comes from RAGTURBO_* env variables."""
    import os

    from pydantic import ValidationError

    from service.logs import configure_logging
    from service.settings import Settings, settings_error_message

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        typer.echo(settings_error_message(e), err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_format, os.environ.get("RAGTURBO_LOG_LEVEL", "INFO"))
    from service.server import serve as run_server

    run_server(settings)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    del bench
    app.command("serve")(serve)
