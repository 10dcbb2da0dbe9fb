"""Structured logs: one JSON object per line, carrying the request id of the request
being served (a context variable set by the request middleware). With the ``text``
format, control characters in a message (CR, LF, ESC, ...; e.g. a ``%0a`` in a logged
request path) are written escaped (``\\n``), so one record is always one line."""

from __future__ import annotations

import contextvars
import importlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _LibJsonFormatter

from retrieval.redact import mask_secrets, url_secrets

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


_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with every control character (and Unicode line break) as an escape."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """``asctime level logger: message``; the message cannot start a forged line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def env_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """Secret values of the settings (API keys, the Qdrant key, the Qdrant URL's password)."""
    env = os.environ if env is None else env
    keys = [k.strip() for k in env.get("RAGTURBO_API_KEYS", "").split(",")]
    return [
        s
        for s in (*keys, env.get("RAGTURBO_QDRANT_API_KEY", ""), *url_secrets(env.get("RAGTURBO_QDRANT_URL")))
        if s
    ]


class SecretFilter(logging.Filter):
    """Masks secret values and URL userinfo (``user:pass@``) in every record's message
    and exception text, whichever logger wrote it (ours, uvicorn's, a library's)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]
        self._fmt = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = mask_secrets(msg, self.secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._fmt.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text, self.secrets)
            record.exc_info = None
        return True


def configure_logging(
    fmt: str = "json", level: str = "INFO", secrets: Iterable[str] | None = None
) -> None:
    """Replace the root handlers (called by ``ragturbo serve``, never at import).
    ``secrets`` (default: those of the RAGTURBO_* environment) are masked in every line."""
    if fmt == "json":
        quiet_progress_bars()
    handler = logging.StreamHandler()
    handler.addFilter(SecretFilter(env_secrets() if secrets is None else secrets))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
