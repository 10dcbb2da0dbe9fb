"""Admission and waiting for one request (docs/service.md, data flow): prompt limit, readiness,
seeds, the queue bound (in ``Batcher.submit``), the deadline and client disconnects.

``run_job`` takes the request model whole; both routes express themselves as a
``GenerateRequest`` (the OpenAI route maps its fields onto one).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

from fastapi import Request

from engines.request import ImageRequest
from service.batcher import Job, JobResult
from service.errors import ClientGone, DeadlineExceeded, InvalidInput, NotReady
from service.schemas import MAX_SEED, GenerateRequest
from service.state import ServiceState

log = logging.getLogger(__name__)


@dataclass
class Admitted:
    result: JobResult
    seeds: list[int]
    arrival: float  # time.monotonic()


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def seeds_for(body: GenerateRequest) -> list[int]:
    """seed s, n images -> s, s+1, ... (mod 2**32); null -> an independent seed per image."""
    n = body.num_images
    if body.seed is None:
        return [secrets.randbelow(MAX_SEED + 1) for _ in range(n)]
    return [(body.seed + i) % (MAX_SEED + 1) for i in range(n)]


async def run_job(
    request: Request, state: ServiceState, body: GenerateRequest, fmt: str | None = None
) -> Admitted:
    """Admit ``body``, wait for its images (or the deadline, or the client leaving).

    ``fmt``: the format the response will be encoded in (default ``body.format``); an
    engine that can encode on the device hands those bytes back with the image."""
    arrival = time.monotonic()
    s = state.settings
    if len(body.prompt) > s.max_prompt_chars:
        state.metrics.rejected.labels(reason="invalid").inc()
        raise InvalidInput(
            f"prompt: at most {s.max_prompt_chars} characters allowed, got {len(body.prompt)}",
            param="prompt",
        )
    if not state.ready or state.batcher is None or state.t2i is None:
        state.metrics.rejected.labels(reason="not_ready").inc()
        raise NotReady(f"service is {state.status}", code=state.status)
    if s.log_prompts:
        log.info("prompt", extra={"prompt": body.prompt, "num_images": body.num_images})
    seeds = seeds_for(body)
    # the typed request below compose, built once: every retrieval option is a field of it
    opts = body.retrieval.model_dump()
    reqs = [ImageRequest(prompt=body.prompt, seed=sd, fmt=fmt or body.format, **opts) for sd in seeds]
    deadline = arrival + s.request_timeout_s
    job: Job = state.batcher.submit(reqs, deadline)  # raises QueueFull (counted)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {job.future, watcher},
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        watcher.cancel()
    if job.future in done:
        return Admitted(job.future.result(), seeds, arrival)  # may raise (504, 503, 500)
    if watcher in done:
        state.batcher.abandon(job, "disconnected")
        raise ClientGone("client disconnected")
    if not state.batcher.abandon(job, "timeout"):
        state.metrics.rejected.labels(reason="timeout").inc()
    raise DeadlineExceeded(f"request took longer than {s.request_timeout_s} s")


def record(state: ServiceState, res: JobResult, encode_s: float) -> None:
    """Per-request metrics once the images are encoded."""
    m = state.metrics
    first = res.results[0]
    m.stage_duration.labels(stage="encode").observe(encode_s)
    m.images_generated.inc(len(res.results))
    for nb in first.retrieved:
        m.retrieval_score.observe(float(nb.score))
    if first.retrieval_status == "unavailable":
        m.retrieval_unavailable.inc()
    elif first.retrieval_status == "weak":
        m.retrieval_weak.inc()
    if getattr(first, "unknown_words", None):
        m.unknown_words.inc()
