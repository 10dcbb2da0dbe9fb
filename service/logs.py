"""Structured logs: one JSON object per line, carrying the request id of the request
being served (a context variable set by the request middleware)."""

from __future__ import annotations

import contextvars
import importlib
import logging
import os
import sys
import time
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _LibJsonFormatter

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class JsonFormatter(_LibJsonFormatter):
    """``{"ts","level","logger","msg","request_id", ...extra}``; exceptions as text in ``exc``.

    python-json-logger does the record-to-JSON work (extras, exception text, encoding
    of non-JSON values with ``str``); this subclass only fixes our field names and order
    and adds the request id of the request being served.
    """

    def __init__(self) -> None:
        super().__init__(
            "%(message)s",
            rename_fields={"message": "msg", "exc_info": "exc"},
            reserved_attrs=[*RESERVED_ATTRS, "color_message", "request_id"],
            json_default=str,
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z"
        )
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        super().add_fields(log_data, record, message_dict)
        log_data["request_id"] = getattr(record, "request_id", None) or request_id_var.get()
        # our order: ts, level, logger, msg, request_id, then the extras
        for k in [k for k in log_data if k not in ("ts", "level", "logger", "msg", "request_id")]:
            log_data[k] = log_data.pop(k)


def quiet_progress_bars() -> None:
    """Third-party progress bars off (transformers' "Loading weights", diffusers', the HF
    hub's): they write carriage-return lines to stderr, between the log's JSON lines."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when they are imported
    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            importlib.import_module(f"{name}.utils.logging").disable_progress_bar()


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Replace the root handlers (called by ``ragturbo serve``, never at import); in the
    JSON format, third-party progress bars are turned off (``quiet_progress_bars``)."""
    if fmt == "json":
        quiet_progress_bars()
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
