"""Which model directory a command uses: ``resolve_model_dir``, the one copy of the rule.

An explicit directory (``--model-dir``, ``Settings.model_dir``), else ``RAGTURBO_MODEL_DIR``,
else the embedded default: the shipped model (``shipped_model_dir``: the setting
``RAGTURBO_SHIPPED_MODEL_DIR``, whose default value ``SHIPPED`` is the trained toy-world
model in ``toyworld/assets/model`` — a path only, engines imports nothing of toyworld),
or, where it is absent, a randomly initialised tiny model written once under the data
directory — it produces noise-like images and says so in the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent.parent / "toyworld" / "assets" / "model"
"""The default value of ``RAGTURBO_SHIPPED_MODEL_DIR`` (declared here only). Serving and the
benches read the model through ``shipped_model_dir``; the toy world's training, eval and
ship tools use ``SHIPPED`` itself, since they read and write the repo's assets as one unit
(``toyworld/assets/model`` beside the ``eval/`` variants made for it)."""
SHIPPED_ENV = "RAGTURBO_SHIPPED_MODEL_DIR"


def shipped_model_dir() -> Path:
    """Where the shipped model lives: ``$RAGTURBO_SHIPPED_MODEL_DIR``, else ``SHIPPED``
    (e.g. an image or an install that keeps the toy model elsewhere sets the variable)."""
    return Path(os.environ.get(SHIPPED_ENV) or SHIPPED)


def default_model_dir(data_dir: str | Path = "data") -> Path:
    """The shipped trained model if present, else a random tiny one under ``data_dir``."""
    shipped = shipped_model_dir()
    if (shipped / "unet" / "config.json").is_file():
        return shipped
    target = Path(data_dir) / "random-tiny-model"
    if not (target / "ragturbo.json").is_file():
        from engines.random_models import write_model_dir

        log.warning(
            "no trained default model at %s; writing a RANDOM tiny model to %s "
            "(images will not match prompts)",
            shipped,
            target,
        )
        tmp = target.with_name(target.name + ".tmp")
        write_model_dir(tmp, "tiny", seed=0)
        tmp.replace(target) if not target.exists() else None
    return target


def resolve_model_dir(
    model_dir: str | Path | None = None, data_dir: str | Path = "data", *, read_env: bool = True
) -> Path:
    """``model_dir`` if given, else ``$RAGTURBO_MODEL_DIR`` (with ``read_env``), else
    ``default_model_dir(data_dir)``. ``read_env=False`` for callers whose settings already
    read the variable (``service.settings``)."""
    if model_dir is not None:
        return Path(model_dir)
    if read_env and os.environ.get("RAGTURBO_MODEL_DIR"):
        return Path(os.environ["RAGTURBO_MODEL_DIR"])
    return default_model_dir(data_dir)
