"""The receiver: a Starlette app. ``main()`` is the uvicorn factory (``uvicorn --factory``).

Everything it needs arrives through ``create_app(settings)``; its lifespan opens the shared
services (pool, index, broker) and closes them on shutdown.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import sys
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import psycopg
import psycopg_pool
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core import apikeys
from core.embeddings import build_embedder
from core.errors import SettingsError
from core.heartbeat import Heartbeat
from core.logs import configure_logging
from core.queue import FastEnqueuer
from core.runtime import SourceSet, open_services
from core.settings import Settings
from core.status import StatusCache
from receiver import mcp_http
from receiver.common import error, unavailable
from receiver.counters import WebhookCounters, flushing
from receiver.routes import routes

log = logging.getLogger("vector_sync.receiver")

#: How long a request waits for a database connection before it answers 503 (the pool's
#: default, 30 s, outlasts every sender's timeout: GitHub gives up after 10 s).
DB_WAIT_S = 8.0


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = open_services(settings, pool_size=10)
        services.pool.timeout = min(services.pool.timeout, DB_WAIT_S)
        heartbeat = Heartbeat(services.pool, "web", settings.heartbeat_interval,
                              redis=services.broker.client).start()
        app.state.services = services
        app.state.sources = SourceSet(settings, services.pool)
        app.state.settings = settings
        app.state.status_cache = StatusCache(settings.status_cache_ttl)
        app.state.query_embedder = build_embedder(settings)
        # The webhook hot path: an asyncio Redis client (no thread-pool hop) and counters
        # flushed to Postgres once a second instead of a write per webhook.
        fast_redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
        app.state.enqueuer = FastEnqueuer(fast_redis, services.broker)
        app.state.webhook_counters = WebhookCounters()
        log.info("receiver ready", extra={"sources": ",".join(settings.configured_sources()) or "none"})
        try:
            async with flushing(app.state.webhook_counters, services.pool,
                                settings.webhook_counts_interval), mcp_http.lifespan(app):
                yield  # (the MCP server at /mcp)
        finally:
            heartbeat.stop()
            await fast_redis.aclose()
            await app.state.sources.aclose()
            await app.state.query_embedder.aclose()
            services.close()

    async def server_error(request: Request, exc: Exception) -> Response:
        # Never a stack trace to a caller: log it, answer with a short message.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; see the receiver's log"}, 500)

    async def http_error(request: Request, exc: Exception) -> Response:
        # The router's own 404 and 405, as JSON with an "error" like every other refusal.
        assert isinstance(exc, HTTPException)
        message = {404: "not found", 405: f"method {request.method} not allowed here"}.get(
            exc.status_code, str(exc.detail))
        return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)

    async def database_down(request: Request, exc: Exception) -> Response:
        # Postgres unreachable, restarting or out of connections: the sender should retry.
        log.error("database unavailable on %s %s: %s: %s", request.method, request.url.path,
                  type(exc).__name__, exc)
        return unavailable("database")

    async def redis_down(request: Request, exc: Exception) -> Response:
        log.error("redis unavailable on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return unavailable("queue")

    return Starlette(
        routes=routes(),
        lifespan=lifespan,
        middleware=[Middleware(_NoCache), Middleware(_Exposure, settings=settings), Middleware(_RefuseNul)],
        exception_handlers={
            Exception: server_error,
            HTTPException: http_error,
            # OperationalError covers lost connections, AdminShutdown and PoolTimeout;
            # InterfaceError a connection the pool handed out closed.
            psycopg.OperationalError: database_down,
            psycopg.InterfaceError: database_down,
            psycopg_pool.PoolTimeout: database_down,
            redis.RedisError: redis_down,
        },
    )


#: What answers without credentials when ``PUBLIC_ROUTES=webhooks``: the senders' door and the
#: orchestrator's probes (``/readyz`` says only "ok" or which dependency is unreachable).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
PUBLIC_PREFIX = "/webhooks/"
#: Routes that show the status report: the status key or an admin key, never a search key
#: (the report names hosts, pids and upstream error messages).
STATUS_PATHS = frozenset({"/", "/api/status", "/metrics"})


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX)


def presented_credential(headers: dict[bytes, bytes]) -> str:
    """The key a request carries: ``Authorization: Bearer``, ``X-Admin-Key``, or the password
    of ``Authorization: Basic`` (so a browser can open the dashboard: it asks once and sends
    the same credentials with the page's own requests)."""
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return (password or user).strip()
    return headers.get(b"x-admin-key", b"").decode("latin-1").strip()


class _Exposure:
    """``PUBLIC_ROUTES=webhooks``: every route but ``/webhooks/*``, ``/healthz`` and ``/readyz``
    needs a credential: ``STATUS_API_KEY`` or any API key (admin or search). Anything not on the
    public list is protected, so a route added later is covered without a change here. Past
    this gate, each route still checks its own role (admin routes want an admin key, search a
    search key); the status routes (dashboard, ``/api/status``, ``/metrics``) want the status
    key or an admin key. ``PUBLIC_ROUTES=all`` (the default without ``STATUS_API_KEY``):
    nothing is added, as for ``make run`` on loopback."""

    def __init__(self, app: object, settings: Settings) -> None:
        self.app = app
        self.on = settings.public_routes == "webhooks"
        self.status_key = str(settings.status_api_key).encode()
        self.admin_key = str(settings.admin_api_key) or None

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if not self.on or scope["type"] not in ("http", "websocket") or is_public(scope.get("path", "")):
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        token = presented_credential(dict(scope.get("headers") or []))
        refusal: Response | None = None
        if not token:
            refusal = _challenge("credentials required: send 'Authorization: Bearer <key>' "
                                 "(STATUS_API_KEY or an API key)")
        elif not (self.status_key and hmac.compare_digest(token.encode(), self.status_key)):
            try:
                key = await run_in_threadpool(apikeys.resolve, scope["app"].state.services.pool,
                                              token, self.admin_key)
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                log.error("cannot check a credential: %s: %s", type(exc).__name__, exc)
                refusal = unavailable("database")
            else:
                if key is None:
                    refusal = _challenge("wrong or revoked key")
                elif not key.is_admin and scope.get("path") in STATUS_PATHS:
                    refusal = error(403, "a search key cannot read the status; use STATUS_API_KEY or an admin key")
                else:
                    scope.setdefault("state", {})["api_key"] = key  # receiver.auth reuses it
        if refusal is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})  # type: ignore[operator]
                return
            await refusal(scope, receive, send)  # type: ignore[arg-type]
            return
        await self.app(scope, receive, send)  # type: ignore[operator]


def _challenge(message: str) -> Response:
    response = error(401, message)
    response.headers["WWW-Authenticate"] = 'Basic realm="vector-sync", charset="UTF-8"'
    return response


class _RefuseNul:
    """A NUL character in the path or a query parameter is refused with a 400 before any route
    sees it: Postgres cannot store or compare it, so it could only end in a 500."""

    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] == "http":
            problem = None
            if "\x00" in scope.get("path", ""):
                problem = "the path contains a NUL character (%00)"
            else:
                query = scope.get("query_string", b"").decode("latin-1")
                for key, value in parse_qsl(query, keep_blank_values=True):
                    if "\x00" in key or "\x00" in value:
                        problem = f"query parameter {key.replace(chr(0), '')[:40]!r} contains a NUL character (%00)"
                        break
            if problem:
                await error(400, problem)(scope, receive, send)  # type: ignore[arg-type]
                return
        await self.app(scope, receive, send)  # type: ignore[operator]


class _NoCache:
    """API answers describe the present: tell caches not to keep them."""

    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # type: ignore[operator]
            return

        async def send_with_header(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"cache-control", b"no-store"))
            await send(message)  # type: ignore[operator]

        await self.app(scope, receive, send_with_header)  # type: ignore[operator]


def main() -> Starlette:
    """uvicorn factory: settings from the environment; a bad one exits with one line."""
    try:
        settings = Settings.from_environ()
    except SettingsError as exc:
        print(f"vector-sync: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level)
    return create_app(settings)
