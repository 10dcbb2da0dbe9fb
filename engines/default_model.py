"""Where the embedded default model lives.

The trained toy-world family ships in ``toyworld/assets/model`` (issue: toy world).
Until it exists, the default is a randomly initialised tiny model written once under
the data directory — it produces noise-like images and says so in the log.
"""

from __future__ import annotations

import logging
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
