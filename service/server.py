"""Running the app under uvicorn with a graceful drain (DESIGN.md: readyz 503 while
draining).

On the first SIGTERM/SIGINT the service stops admitting (/readyz and new /generate get
503), keeps serving what it accepted until every accepted request is answered or
``drain_timeout_s`` passes, and only then lets uvicorn shut down. A second SIGINT
forces the exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.settings import Settings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout_s = drain_timeout_s
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None:  # not serving yet: plain uvicorn behaviour
            self.should_exit = True
            return
        if self._draining:
            if sig == signal.SIGINT:  # a second Ctrl-C: stop waiting
                self.force_exit = True
                self.should_exit = True
            return
        self._draining = True
        loop = self._loop
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(sig)))

    async def _drain(self, sig: int) -> None:
        state = getattr(self._app.state, "service", None)
        if state is not None:
            state.begin_drain()
            drained = await state.wait_drained(self._drain_timeout_s)
            if drained:
                log.info("drained: every accepted request answered; exiting (signal %d)", sig)
            else:
                log.warning(
                    "drain timeout %.1fs passed with %d requests in flight; exiting",
                    self._drain_timeout_s,
                    state.inflight,
                )
        self.should_exit = True


def serve(settings: Settings, app: FastAPI | None = None) -> None:
    """Serve ``app`` (default: the real service) on settings.host:settings.port."""
    from service.app import create_app

    app = app or create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        timeout_keep_alive=5,
    )
    log.info("serving on http://%s:%d (backend=%s)", settings.host, settings.port, settings.backend)
    DrainingServer(config, app, settings.drain_timeout_s).run()
