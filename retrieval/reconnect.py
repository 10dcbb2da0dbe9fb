"""Reopening an index that was unavailable, with tenacity's backoff.

``Reconnector(what, connect)`` runs ``connect()`` on a daemon thread until it succeeds:
exponential backoff from ``initial_s`` (0.5 s) to ``max_s`` (10 s) between attempts (tenacity), stopped
by ``stop()``. ``status()`` -> ``(True, None)`` once connected, else ``(False, reason)``
with the last error. The indexes use it when the first open fails (Qdrant server down,
Edge shard locked by another process): operations fail fast with ``RetrievalError``
meanwhile (compose then generates without retrieval) and start working by themselves
once the index is back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential,
)

log = logging.getLogger(__name__)


class Reconnector:
    def __init__(
        self,
        what: str,
        connect: Callable[[], None],
        *,
        initial_s: float = 0.5,
        max_s: float = 10.0,
    ) -> None:
        self.what = what
        self._connect = connect
        self._initial_s, self._max_s = initial_s, max_s
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._reason: str | None = None
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def status(self) -> tuple[bool, str | None]:
        if self._connected.is_set():
            return True, None
        return False, f"{self.what} unavailable: {self._reason}; reconnecting with backoff"

    def mark_connected(self) -> None:
        self._connected.set()
        self._reason = None

    def start(self, first_error: BaseException) -> None:
        """Begin reconnecting after ``first_error`` (the failed first open)."""
        self._reason = f"{type(first_error).__name__}: {first_error}"
        log.warning("%s unavailable (%s); reconnecting in the background", self.what, self._reason)
        self._thread = threading.Thread(
            target=self._run, name=f"reconnect {self.what}", daemon=True
        )
        self._thread.start()

    def _note(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        self._reason = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown"
        log.info(
            "%s still unavailable after %d attempt(s) (%s); next in %.1fs",
            self.what,
            state.attempt_number,
            self._reason,
            state.upcoming_sleep,
        )

    def _run(self) -> None:
        retrying = Retrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential(multiplier=self._initial_s, max=self._max_s),
            stop=stop_when_event_set(self._stop),
            sleep=self._stop.wait,  # stop() interrupts the backoff at once
            before_sleep=self._note,
            reraise=True,
        )
        try:
            retrying(self._connect)
        except Exception:  # noqa: BLE001 - only when stopped
            return
        if not self._stop.is_set():
            self.mark_connected()
            log.info("%s available again", self.what)

    def stop(self) -> None:
        self._stop.set()
