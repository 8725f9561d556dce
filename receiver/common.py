"""What every route module shares: error replies, the app's services and settings, durable
enqueueing. Its own module so that ``routes`` and ``admin`` both import it and never each other."""

from __future__ import annotations

import logging
from typing import Any

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from core import queue
from core.documents import Ref
from core.runtime import Services
from core.settings import Settings

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
        await run_in_threadpool(lambda: queue.enqueue(services(request).broker, refs, **options))
    except redis.RedisError as exc:
        log.error("enqueue failed: %s", exc)
        return unavailable("queue")
    return None
