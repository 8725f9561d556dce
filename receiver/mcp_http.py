"""The MCP server (core/mcp_tools.py) over streamable HTTP at ``/mcp``, for search and admin
keys. A request without a live key is refused here (401) before MCP sees it; each tool call
resolves the key again, so revocation is immediate."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from core import apikeys
from core.apikeys import ApiKey
from core.mcp_tools import build_server
from receiver import auth


def _key_resolver(app: Starlette) -> Any:
    async def key_of(ctx: Context) -> ApiKey:
        headers = ctx.headers or {}
        value = headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else headers.get("x-admin-key", "").strip()
        settings = app.state.settings
        key = await run_in_threadpool(apikeys.resolve, app.state.services.pool, token,
                                      str(settings.admin_api_key) or None)
        if key is None:
            raise PermissionError("missing, unknown or revoked API key")
        return key

    return key_of


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Build the MCP server on the app's services and run its session manager."""
    server = build_server(app.state.services, app.state.settings, app.state.query_embedder, _key_resolver(app))
    # Stateless JSON: any receiver behind a load balancer answers any call. DNS-rebinding
    # protection (Host/Origin checks) is off because every request must carry an API key.
    app.state.mcp_http = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    async with server.session_manager.run():
        yield


class _Endpoint:
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        key = await run_in_threadpool(auth.authenticate, request)
        if isinstance(key, Response):
            await key(scope, receive, send)
            return
        await request.app.state.mcp_http(scope, receive, send)


def routes() -> list[BaseRoute]:
    # No GET: a stateless server offers no server-initiated SSE stream, and the transport
    # lets it answer 405 (a GET here would otherwise hold a connection open doing nothing).
    return [Route("/mcp", _Endpoint(), methods=["POST", "DELETE"])]
