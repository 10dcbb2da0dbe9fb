"""``ragturbo serve`` (docs/service.md): settings from the environment, then the server; with
``--embedded-db`` the shipped toy model's database first (the command lives here, above the
packages, because it joins the service and the toy world)."""

from __future__ import annotations

import typer


def serve(
    host: str | None = typer.Option(None, "--host", help="Bind address (RAGTURBO_HOST)."),
    port: int | None = typer.Option(None, "--port", help="Bind port (RAGTURBO_PORT)."),
    embedded_db: bool = typer.Option(
        False, "--embedded-db", help="First build or load the shipped toy model's retrieval "
        "database under RAGTURBO_DB_PATH (what `ragturbo toyworld embedded-db` does; a no-op "
        "when current), in this process: `make run` uses it, so the model libraries load once."),
) -> None:
    """Run the HTTP service; every other setting comes from RAGTURBO_* env variables."""
    import os

    from pydantic import ValidationError

    from service.logs import configure_logging
    from service.settings import Settings, settings_error_message, unknown_env

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
    import logging

    for line in unknown_env(os.environ):
        logging.getLogger("service.settings").warning(line)
    if embedded_db:
        import time

        from toyworld.embedded_db import ensure_embedded_db

        t0 = time.perf_counter()
        done = ensure_embedded_db(settings.db_path, progress=False)
        logging.getLogger(__name__).info("embedded retrieval DB: %s (first-start split: DB step %.1f s)",
                                         done, time.perf_counter() - t0)
    from service.server import serve as run_server

    run_server(settings)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    del bench
    app.command("serve")(serve)
