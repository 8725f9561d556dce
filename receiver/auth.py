"""Who is calling: API keys from ``Authorization: Bearer <key>`` or ``X-Admin-Key``, resolved in
one place (every guard calls :func:`require`), and the admin routes that manage keys and the
operator-set access of scopes.

A key is looked up on every request (one indexed query), so a revoked key is refused by the
very next request, on every receiver.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from core import access, apikeys, queue, state
from core.apikeys import ApiKey
from core.documents import Ref, split_doc_id
from core.settings import SOURCE_NAMES
from receiver import bodies


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)


def presented_token(request: Request) -> str:
    """The key the request carries: a Bearer token, else ``X-Admin-Key``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-admin-key", "").strip()


def authenticate(request: Request) -> ApiKey | JSONResponse:
    """The caller's key, or the 401 (no or unknown key) / 403 (none can exist) to answer."""
    cached = getattr(request.state, "api_key", None)
    if isinstance(cached, ApiKey):
        return cached
    settings = request.app.state.settings
    pool = request.app.state.services.pool
    env_key = str(settings.admin_api_key) or None
    token = presented_token(request)
    key = apikeys.resolve(pool, token, env_key) if token else None
    if key is None:
        if not token and env_key is None and not apikeys.any_keys(pool):
            return _error(403, "admin endpoints are disabled: ADMIN_API_KEY is not set and no API key exists")
        return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>' or X-Admin-Key")
    request.state.api_key = key
    return key


def require(request: Request, role: str = "admin") -> JSONResponse | None:
    """None when the caller may use a route needing ``role``; else the 401/403 to answer.

    ``admin`` routes take admin keys only; ``search`` routes take search and admin keys.
    """
    key = authenticate(request)
    if isinstance(key, JSONResponse):
        return key
    if role == "admin" and not key.is_admin:
        return _error(403, "this is a search key: it may only search and read documents")
    return None


def caller(request: Request) -> ApiKey:
    """The key :func:`require` accepted for this request."""
    key: ApiKey = request.state.api_key
    return key


# --- admin: keys -----------------------------------------------------------------------------


async def _body(request: Request) -> dict[str, Any] | JSONResponse:
    return await bodies.json_object(request)


def _unknown_fields(body: dict[str, Any], allowed: set[str]) -> JSONResponse | None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        return _error(400, f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return None


async def list_keys(request: Request) -> Response:
    if denied := require(request):
        return denied
    revoked = request.query_params.get("include_revoked", "false").lower()
    if revoked not in ("true", "false"):
        return _error(400, "'include_revoked' must be true or false")
    unknown = sorted(set(request.query_params) - {"include_revoked"})
    if unknown:
        return _error(400, f"unknown parameter(s): {', '.join(unknown)}")
    rows = await run_in_threadpool(apikeys.list_keys, request.app.state.services.pool, revoked == "true")
    return JSONResponse({"keys": rows})


async def create_key(request: Request) -> Response:
    if denied := require(request):
        return denied
    body = await _body(request)
    if isinstance(body, Response):
        return body
    if bad := _unknown_fields(body, {"role", "principal", "trusted", "name"}):
        return bad
    role, principal = body.get("role"), body.get("principal")
    trusted, name = body.get("trusted", False), body.get("name", "")
    if not isinstance(role, str):
        return _error(400, "'role' must be 'admin' or 'search'")
    if principal is not None and not isinstance(principal, str):
        return _error(400, "'principal' must be an email address")
    if not isinstance(trusted, bool):
        return _error(400, "'trusted' must be true or false")
    if not isinstance(name, str):
        return _error(400, "'name' must be a string")
    try:
        key, token = await run_in_threadpool(
            apikeys.create_key, request.app.state.services.pool, role, principal, trusted=trusted, name=name
        )
    except ValueError as exc:
        return _error(400, str(exc))
    return JSONResponse(
        {"id": key.id, "role": key.role, "principal": key.principal, "trusted": key.trusted,
         "name": key.name, "token": token, "note": "the token is shown once; store it now"},
        201,
    )


async def revoke_key(request: Request) -> Response:
    if denied := require(request):
        return denied
    key_id = request.path_params["id"]
    done = await run_in_threadpool(apikeys.revoke, request.app.state.services.pool, key_id)
    if not done:
        return _error(404, f"no live key {key_id!r}")
    return JSONResponse({"id": key_id, "status": "revoked"})


# --- admin: operator-set access per scope ----------------------------------------------------


def resync_refs(pool: Any, source: str, key: str) -> list[Ref]:
    """Sync refs for every live document of a scope: their access metadata follows."""
    refs = []
    for document_id in state.live_document_ids(pool, source, key):
        _, stable = split_doc_id(document_id)
        refs.append(Ref(source=source, id=stable, scope=key))
    return refs


def change_access(pool: Any, source: str, keys: list[str], access_type: str | None,
                  members: list[str]) -> tuple[list[str], list[Ref]]:
    done = access.set_scope_access(pool, source, keys, access_type, members)
    refs = [ref for key in done for ref in resync_refs(pool, source, key)]
    return done, refs


async def scope_access(request: Request) -> Response:
    """``POST /api/scopes/{source}/access`` with ``{"keys": [...], "restrict": [emails]}``,
    ``{"keys": [...], "public": true}`` or ``{"keys": [...], "inherit": true}`` (the source's own)."""
    if denied := require(request):
        return denied
    source = request.path_params["source"]
    if source not in SOURCE_NAMES:
        return _error(404, f"unknown source {source!r}; one of {', '.join(SOURCE_NAMES)}")
    body = await _body(request)
    if isinstance(body, Response):
        return body
    if bad := _unknown_fields(body, {"keys", "restrict", "public", "inherit"}):
        return bad
    keys = body.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        return _error(400, "'keys' must be a non-empty list of scope keys")
    modes = [m for m in ("restrict", "public", "inherit") if m in body]
    if len(modes) != 1:
        return _error(400, "give exactly one of 'restrict' (a list of emails), 'public': true or 'inherit': true")
    mode = modes[0]
    members: list[str] = []
    if mode == "restrict":
        members = body["restrict"]
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            return _error(400, "'restrict' must be a list of email addresses")
    elif body[mode] is not True:
        return _error(400, f"'{mode}' must be true")
    access_type = {"restrict": "restricted", "public": "public", "inherit": None}[mode]
    pool = request.app.state.services.pool
    try:
        done, refs = await run_in_threadpool(change_access, pool, source, keys, access_type, members)
    except ValueError as exc:
        return _error(400, str(exc))
    if refs:
        try:
            await run_in_threadpool(queue.enqueue, request.app.state.services.broker, refs)
        except Exception:
            return _error(503, "access saved, but the queue is unavailable: the documents follow on their next sync")
    unknown = sorted(set(keys) - set(done))
    out: dict[str, Any] = {"source": source, "changed": done, "access_type": access_type or "inherit",
                           "access_list": sorted({m.strip().lower() for m in members}), "resyncing": len(refs)}
    if unknown:
        out["error"] = f"unknown scope(s): {', '.join(unknown)}"
    return JSONResponse(out, 404 if unknown else 200)



def routes() -> list[BaseRoute]:
    return [
        Route("/api/keys", list_keys, methods=["GET"]),
        Route("/api/keys", create_key, methods=["POST"]),
        Route("/api/keys/{id}", revoke_key, methods=["DELETE"]),
        Route("/api/scopes/{source}/access", scope_access, methods=["POST"]),
    ]
