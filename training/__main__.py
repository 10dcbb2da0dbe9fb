"""``python -m training ...`` = ``ragturbo train ...`` (what torchrun launches: ``torchrun -m training``)."""

from __future__ import annotations

import logging
import os

from training.cli import train_app

if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("RAGTURBO_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    train_app()
