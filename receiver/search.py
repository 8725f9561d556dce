"""The query API: ``GET``/``POST /api/search`` and ``GET /api/documents/{id}``, for search and
admin keys. Parsing and the search itself live in :mod:`core.search` (the CLI and the MCP server
use the same code); this module turns HTTP into those calls."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from core import access, search as core_search
from core.errors import VectorSyncError
from receiver import auth, bodies

MAX_BODY = 64 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


async def _json(request: Request) -> dict[str, Any] | JSONResponse:
    return await bodies.json_object(request, MAX_BODY)


async def search(request: Request) -> Response:
    """Search the index as the calling key may see it."""
    if denied := await run_in_threadpool(auth.require, request, "search"):
        return denied
    if request.method == "POST":
        data = await _json(request)
        if isinstance(data, Response):
            return data
    else:
        repeated = sorted({k for k in request.query_params if len(request.query_params.getlist(k)) > 1})
        if repeated:
            return _error(400, f"parameter(s) given more than once: {', '.join(repeated)}")
        data = dict(request.query_params)
    try:
        query = core_search.parse(data, query_string=request.method == "GET")
        view = access.view_for(auth.caller(request), query.as_user, query.include_restricted)
    except access.AccessDenied as exc:
        return _error(403, str(exc))
    except ValueError as exc:
        return _error(400, str(exc))
    app = request.app
    try:
        body = await core_search.search(app.state.services, app.state.query_embedder,
                                        app.state.settings, query, view)
    except VectorSyncError as exc:
        return _error(503, f"search failed: {exc}")
    return JSONResponse(body)


async def get_document(request: Request) -> Response:
    """What is indexed for one document (404 when unknown or not readable by this key)."""
    if denied := await run_in_threadpool(auth.require, request, "search"):
        return denied
    document_id = request.path_params["id"]
    if not document_id or len(document_id) > 1024 or "\x00" in document_id:
        return _error(400, "invalid document id")
    if any("\x00" in v for v in request.query_params.values()):
        return _error(400, "values must not contain NUL characters")
    unknown = sorted(set(request.query_params) - {"as_user", "include_restricted"})
    if unknown:
        return _error(400, f"unknown parameter(s): {', '.join(unknown)}")
    try:
        include = core_search.flag(request.query_params.get("include_restricted"), "include_restricted")
        view = access.view_for(auth.caller(request), request.query_params.get("as_user") or None, include)
    except access.AccessDenied as exc:
        return _error(403, str(exc))
    except ValueError as exc:
        return _error(400, str(exc))
    found = await run_in_threadpool(core_search.document, request.app.state.services, document_id, view)
    if found is None:
        return _error(404, f"no document {document_id!r} that this key may read")
    return JSONResponse(found)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/search", search, methods=["GET", "POST"]),
        Route("/api/documents/{id:path}", get_document, methods=["GET"]),
    ]
