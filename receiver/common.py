"""What every route module shares: error replies, the app's services and settings, durable
enqueueing. Its own module so that ``routes`` and ``admin`` both import it and never each other."""

from __future__ import annotations

import logging
from typing import Any

import redis
from starlette.requests import Request
from starlette.responses import JSONResponse

from core import queue
from core.documents import Ref
from core.runtime import Services
from core.settings import Settings
from receiver.counters import WebhookCounters

log = logging.getLogger("vector_sync.receiver")

#: Seconds a sender is asked to wait when Postgres or Redis is down.
RETRY_AFTER_S = 10


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status)


def unavailable(what: str) -> JSONResponse:
    """503 + Retry-After: the sender should try again; nothing was accepted."""
    response = error(503, f"{what} unavailable; retry later")
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def settings_of(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


async def enqueue(request: Request, refs: list[Ref], **options: Any) -> JSONResponse | None:
    """Durably enqueue (``options`` ride in the message); None on success, a 503 when Redis
    cannot take the job."""
    try:
        await fast(request).enqueue(refs, **options)
    except redis.RedisError as exc:
        log.error("enqueue failed: %s", exc)
        return unavailable("queue")
    return None


async def claim_and_enqueue(request: Request, claim: str, refs: list[Ref], **options: Any) -> bool | JSONResponse:
    """Claim a webhook delivery (``queue.delivery_key``) and enqueue its refs in one atomic
    Redis call: True when both happened, False for a delivery already claimed (nothing
    enqueued), a 503 when Redis cannot take it (nothing claimed, so the retry goes through)."""
    try:
        return await fast(request).enqueue(refs, claim=claim, **options) is not None
    except redis.RedisError as exc:
        log.error("enqueue failed: %s", exc)
        return unavailable("queue")


def fast(request: Request) -> queue.FastEnqueuer:
    """The app's asyncio enqueuer (receiver.app's lifespan opens it)."""
    enqueuer: queue.FastEnqueuer = request.app.state.enqueuer
    return enqueuer


def counters(request: Request) -> WebhookCounters:
    """The app's webhook counters (receiver.counters), flushed to ``source_stats``."""
    tallies: WebhookCounters = request.app.state.webhook_counters
    return tallies
