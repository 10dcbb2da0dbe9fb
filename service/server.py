"""Running the app under uvicorn with a graceful drain (docs/service.md: readyz 503 while
draining) and bounded request reading (service.protocol).

One deadline governs the whole shutdown: SIGTERM at ``t`` means the process has exited
by ``t + drain_timeout_s``. Until ``t + drain_timeout_s - RESERVE_S`` the service stops
admitting (/readyz and new /generate get 503) and keeps serving what it accepted; then
every request still waiting, running or being encoded is answered with a JSON 503
``draining`` (never a plain-text 500 from a cancelled task, no uvicorn ERROR); uvicorn
then closes the connections (``timeout_graceful_shutdown`` is the short rest, not a
second full limit), the lifespan stops the batcher without waiting again, and the
process leaves. ``RESERVE_S`` covers those steps: answers, uvicorn's 0.1 s loop tick,
its close, the exit. A second SIGINT forces the exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.errors import NotReady
from service.http_rules import HostCheckMiddleware, default_allowed_hosts
from service.protocol import protocol_class
from service.settings import Settings

log = logging.getLogger(__name__)

ANSWER_S = 0.25
"""Time given to the 503 answers to be written."""
CLOSE_S = 0.25
"""uvicorn's own graceful-shutdown wait once every request has been answered."""
TICK_S = 0.1
"""uvicorn checks ``should_exit`` once per tick of its main loop."""
EXIT_S = 0.2
"""The lifespan shutdown and the process exit."""
RESERVE_S = ANSWER_S + TICK_S + CLOSE_S + EXIT_S
"""Time before the deadline at which whatever is still unanswered gets its 503."""


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout_s = drain_timeout_s
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.exit_deadline: float | None = None  # time.monotonic() by which we are gone

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
        self.exit_deadline = time.monotonic() + self._drain_timeout_s
        loop = self._loop
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(sig)))

    async def _drain(self, sig: int) -> None:
        assert self.exit_deadline is not None
        deadline = self.exit_deadline
        state = getattr(self._app.state, "service", None)
        if state is not None:
            state.begin_drain()
            drained = await state.wait_drained(max(0.0, deadline - RESERVE_S - time.monotonic()))
            if drained:
                log.info("drained: every accepted request answered; exiting (signal %d)", sig)
            else:
                n = state.fail_pending(
                    NotReady(
                        f"service is shutting down; not finished within the drain limit of "
                        f"{self._drain_timeout_s:g} s",
                        code="draining",
                    )
                )
                answer_by = deadline - (RESERVE_S - ANSWER_S)
                await state.wait_drained(max(0.0, answer_by - time.monotonic()))
                log.warning(
                    "drain limit %.1fs reached: %d request(s) answered 503 draining; "
                    "%d still in flight; exiting",
                    self._drain_timeout_s,
                    n,
                    state.inflight,
                )
        self.should_exit = True


def _exit_now(code: int = 0) -> None:
    """Leave without the interpreter's finalisation: it joins every worker thread (a model
    call cannot be interrupted) and tears down torch, which took 1.6 s on the 2-core test
    machine, past the shutdown deadline. Everything that matters is already done: every
    request was answered, the index writes are durable when they return; logs are flushed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(settings: Settings, app: FastAPI | None = None) -> None:
    """Serve ``app`` (default: the real service) on settings.host:settings.port."""
    from service.app import create_app

    app = app or create_app(settings)
    asgi: object = app
    if not settings.allowed_hosts:  # the default for the bind address (service.http_rules)
        asgi = HostCheckMiddleware(app, default_allowed_hosts(settings.host))
    config = uvicorn.Config(
        asgi,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=protocol_class(
            settings.header_timeout_s, settings.body_timeout_s, settings.write_timeout_s
        ),
        timeout_graceful_shutdown=CLOSE_S,  # type: ignore[arg-type]  # uvicorn takes a float
        timeout_keep_alive=5,
    )
    log.info(
        "serving on http://%s:%d (backend=%s; allowed hosts: %s)",
        settings.host, settings.port, settings.backend,
        ", ".join(settings.allowed_hosts or default_allowed_hosts(settings.host)),
    )
    server = DrainingServer(config, app, settings.drain_timeout_s)
    server.run()
    if server.exit_deadline is not None:  # a signal stopped us: keep the one deadline
        _exit_now(0)
