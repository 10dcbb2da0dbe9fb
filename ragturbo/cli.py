"""The ``ragturbo`` console script (the commands of the README and docs/).

Each package contributes its commands through ``<package>.cli.register(app, bench)``;
heavy imports happen inside the commands, so ``ragturbo --help`` is fast.
"""

from __future__ import annotations

import importlib
import logging
import os

import typer

app = typer.Typer(
    name="ragturbo",
    help="One-step retrieval-augmented text-to-image (ImageRAGTurbo).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Latency and throughput tables (docs/perf.md).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# Modules that expose ``register(app, bench)``; the package CLIs first (toyworld.cli
# creates the ``toyworld`` sub-app that toyworld.cli_models extends).
CLI_MODULES = (
    "engines.cli",
    "retrieval.cli",
    "ragturbo.serve",
    "training.cli",
    "toyworld.cli",
    "toyworld.cli_models",
    "bench.cli",
)


def _register_all() -> None:
    from ragturbo.generate import generate
    from ragturbo.search import search

    app.command("generate")(generate)
    app.command("search")(search)
    for name in CLI_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (name == e.name or name.startswith(e.name + ".")):
                # that package or module does not exist in this checkout
                continue
            raise
        mod.register(app, bench_app)


@app.callback()
def _root(
    log_level: str = typer.Option(
        os.environ.get("RAGTURBO_LOG_LEVEL", "INFO"), help="Logging level."
    ),
) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def flags_without_type() -> None:
    """Help shows no type for flags: typer prints ``--json <bool>`` (as if the flag took a
    value) for every boolean flag, ``--help`` included; values keep their ``<int>`` etc."""
    from typer.core import TyperOption

    if getattr(TyperOption.display_type_rich, "_ragturbo", False):
        return
    plain = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        return None if self.is_flag else plain(self, ctx)  # type: ignore[arg-type]

    display_type_rich._ragturbo = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


def main() -> None:
    flags_without_type()
    _register_all()
    app()


if __name__ == "__main__":
    main()
