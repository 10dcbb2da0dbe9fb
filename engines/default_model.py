"""Which model directory a command uses: ``resolve_model_dir``, the one copy of the rule.

An explicit directory (``--model-dir``, ``Settings.model_dir``), else ``RAGTURBO_MODEL_DIR``,
else the embedded default: the trained toy-world model shipped in ``toyworld/assets/model``,
or, where it is absent, a randomly initialised tiny model written once under the data
directory — it produces noise-like images and says so in the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent.parent / "toyworld" / "assets" / "model"


def default_model_dir(data_dir: str | Path = "data") -> Path:
    """The shipped trained model if present, else a random tiny one under ``data_dir``."""
    if (SHIPPED / "unet" / "config.json").is_file():
        return SHIPPED
    target = Path(data_dir) / "random-tiny-model"
    if not (target / "ragturbo.json").is_file():
        from engines.random_models import write_model_dir

        log.warning(
            "no trained default model at %s; writing a RANDOM tiny model to %s "
            "(images will not match prompts)",
            SHIPPED,
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
