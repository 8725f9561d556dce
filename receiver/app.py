"""The receiver: a Starlette app. ``main()`` is the uvicorn factory (``uvicorn --factory``).

Everything it needs arrives through ``create_app(settings)``; its lifespan opens the shared
services (pool, index, broker) and closes them on shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.embeddings import build_embedder
from core.errors import SettingsError
from core.heartbeat import Heartbeat
from core.logs import configure_logging
from core.runtime import SourceSet, open_services
from core.settings import Settings
from receiver import mcp_http
from receiver.routes import routes

log = logging.getLogger("vector_sync.receiver")


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = open_services(settings, pool_size=10)
        heartbeat = Heartbeat(services.pool, "web", settings.heartbeat_interval,
                              redis=services.broker.client).start()
        app.state.services = services
        app.state.sources = SourceSet(settings, services.pool)
        app.state.settings = settings
        app.state.query_embedder = build_embedder(settings)
        log.info("receiver ready", extra={"sources": ",".join(settings.configured_sources()) or "none"})
        try:
            async with mcp_http.lifespan(app):  # the MCP server at /mcp
                yield
        finally:
            heartbeat.stop()
            await app.state.sources.aclose()
            await app.state.query_embedder.aclose()
            services.close()

    async def server_error(request: Request, exc: Exception) -> Response:
        # Never a stack trace to a caller: log it, answer with a short message.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; see the receiver's log"}, 500)

    return Starlette(
        routes=routes(),
        lifespan=lifespan,
        middleware=[Middleware(_NoCache)],
        exception_handlers={Exception: server_error},
    )


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
