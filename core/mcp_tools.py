"""An MCP server exposing ``search`` and ``get_document`` to agents, with the same code, the
same access rules and the same results as ``/api/search`` and ``GET /api/documents/{id}``.

Two transports: stdio (``vector-sync mcp``, the key from ``VECTOR_SYNC_API_KEY``) and
streamable HTTP at ``/mcp`` on the receiver (the key in ``Authorization: Bearer``). The key is
resolved on every tool call, so revoking it stops an agent mid-session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from core import access, search as core_search
from core.apikeys import ApiKey

#: Given the tool call's context, the calling key (raises PermissionError when there is none).
KeyResolver = Callable[[Context], Awaitable[ApiKey]]


def build_server(services: Any, settings: Any, embedder: Any, key_of: KeyResolver) -> MCPServer:
    server = MCPServer(
        name="vector-sync",
        instructions=(
            "Search the team's Jira, Slack, GitHub, Notion, Tempo and Fireflies content. Each result "
            "says when it was last confirmed against its source (as_of) and whether its source is "
            "behind (stale): say so when you rely on a stale result."
        ),
        log_level="WARNING",
    )

    @server.tool()
    async def search(
        q: str,
        ctx: Context,
        top_k: int = 10,
        source: list[str] | None = None,
        scope: list[str] | None = None,
        updated_after: str | None = None,
        updated_before: str | None = None,
        author: str | None = None,
        as_user: str | None = None,
    ) -> dict[str, Any]:
        """Search the index as this key may see it. Exact identifiers (SUBS-652, acme/api#42) rank
        first. Dates are ISO 8601 or epoch seconds. as_user: answer for this person (trusted keys)."""
        key = await key_of(ctx)
        data: dict[str, Any] = {"q": q, "top_k": top_k, "source": source, "scope": scope,
                                "updated_after": updated_after, "updated_before": updated_before,
                                "author": author, "as_user": as_user}
        query = core_search.parse({k: v for k, v in data.items() if v is not None})
        view = _view(key, query.as_user)
        return await core_search.search(services, embedder, settings, query, view)

    @server.tool()
    async def get_document(document_id: str, ctx: Context, as_user: str | None = None) -> dict[str, Any]:
        """What is indexed for one document: state, content hash, chunks, when indexed and last
        checked against its source, last error, access type."""
        key = await key_of(ctx)
        view = _view(key, as_user)
        found = await asyncio.to_thread(core_search.document, services, document_id, view)
        if found is None:
            raise ValueError(f"no document {document_id!r} that this key may read")
        return found

    return server


def _view(key: ApiKey, as_user: str | None) -> access.AccessView:
    try:
        return access.view_for(key, as_user, False)
    except access.AccessDenied as exc:
        raise PermissionError(str(exc)) from None
