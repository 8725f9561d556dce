"""HTTP routes: health, the push API, signed webhooks, status and metrics (search: receiver.search)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from core import queue, state
from core.documents import Document, Ref
from core.errors import InvalidWebhook, NotConfigured
from core.runtime import Services
from core.settings import SOURCE_NAMES, Settings
from core.status import build_status, render_metrics
from receiver import admin, auth, dashboard, mcp_http, openapi, search

log = logging.getLogger("vector_sync.receiver")

#: Push API limits.
MAX_ID_LENGTH = 512


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def settings_of(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


def check_admin(request: Request) -> JSONResponse | None:
    """None when the request carries an admin key; else the 401/403 to answer (receiver.auth)."""
    return auth.require(request, "admin")


async def read_body(request: Request, limit: int) -> bytes | JSONResponse:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return error(413, f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return error(413, f"body over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        return error(400, "client disconnected")
    return b"".join(chunks)


async def enqueue(request: Request, refs: list[Ref]) -> JSONResponse | None:
    """Durably enqueue; None on success, a 503 when Redis cannot take the job."""
    try:
        await run_in_threadpool(queue.enqueue, services(request).broker, refs)
    except redis.RedisError as exc:
        log.error("enqueue failed: %s", exc)
        return error(503, "queue unavailable; retry later")
    return None


# --- health ---------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    svc = services(request)
    checks: dict[str, str] = {}
    try:
        await run_in_threadpool(state.check, svc.pool)
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    try:
        await run_in_threadpool(svc.broker.client.ping)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    failing = [name for name, v in checks.items() if v != "ok"]
    body: dict[str, Any] = {"status": "ready" if ok else "not ready", "checks": checks}
    if failing:
        body["error"] = f"{' and '.join(failing)} unreachable"
    return JSONResponse(body, 200 if ok else 503)


# --- push API and search --------------------------------------------------------------------


def parse_document(body: Any, now: float) -> Document | str:
    """A pushed document, or the message saying what is wrong with it."""
    if not isinstance(body, Mapping):
        return "body must be a JSON object"
    doc_id, title, text = body.get("id"), body.get("title"), body.get("text")
    if not isinstance(doc_id, str) or not doc_id.strip():
        return "'id' must be a non-empty string"
    if len(doc_id) > MAX_ID_LENGTH:
        return f"'id' must be at most {MAX_ID_LENGTH} characters"
    if not isinstance(title, str):
        return "'title' must be a string"
    if not isinstance(text, str):
        return "'text' must be a string"
    if not title.strip() and not text.strip():
        return "'title' and 'text' are both empty"
    url = body.get("url", "")
    if url is None:
        url = ""
    if not isinstance(url, str):
        return "'url' must be a string"
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        return "'metadata' must be an object"
    for key, value in metadata.items():
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                return f"metadata '{key}': lists must hold strings only"
        elif not isinstance(value, str | int | float | bool):
            return f"metadata '{key}': values must be strings, numbers, booleans or lists of strings"
    updated_at = body.get("updated_at", now)
    if not isinstance(updated_at, int | float) or isinstance(updated_at, bool):
        return "'updated_at' must be epoch seconds"
    author = body.get("author", "")
    if not isinstance(author, str):
        return "'author' must be a string"
    return Document(
        source="api", id=doc_id.strip(), scope=str(metadata.get("scope", "")), title=title,
        text=text, updated_at=float(updated_at), url=url, author=author, metadata=dict(metadata),
    )


async def push_document(request: Request) -> Response:
    if denied := check_admin(request):
        return denied
    raw = await read_body(request, settings_of(request).webhook_max_bytes * 8)
    if isinstance(raw, Response):
        return raw
    try:
        body = json.loads(raw)
    except ValueError:
        return error(400, "body is not valid JSON")
    doc = parse_document(body, time.time())
    if isinstance(doc, str):
        return error(400, doc)
    ref = Ref(source="api", id=doc.id, scope=doc.scope, event_at=doc.updated_at, document=doc)
    if failed := await enqueue(request, [ref]):
        return failed
    return JSONResponse({"document_id": doc.document_id, "status": "enqueued"}, 202)


async def delete_document(request: Request) -> Response:
    if denied := check_admin(request):
        return denied
    doc_id = request.path_params["id"]
    doc_id = doc_id[len("api:"):] if doc_id.startswith("api:") else doc_id
    if not doc_id or len(doc_id) > MAX_ID_LENGTH:
        return error(400, "invalid document id")
    ref = Ref(source="api", id=doc_id, op="delete", event_at=time.time())
    if failed := await enqueue(request, [ref]):
        return failed
    return JSONResponse({"document_id": ref.document_id, "status": "delete enqueued"}, 202)


# --- webhooks -------------------------------------------------------------------------------


async def webhook(request: Request) -> Response:
    name = request.path_params["source"]
    if name not in SOURCE_NAMES:
        return error(404, f"no webhook route for {name!r}")
    raw = await read_body(request, settings_of(request).webhook_max_bytes)
    if isinstance(raw, Response):
        return raw
    svc = services(request)
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        source = request.app.state.sources.get(name)
    except NotConfigured as exc:
        await run_in_threadpool(state.record_webhook, svc.pool, name, rejected=str(exc))
        return error(403, f"refused: {exc}")
    handshake = getattr(source, "handshake", None)
    if handshake is not None:
        token = handshake(headers, raw)
        if token:
            return await record_handshake(request, name, token)
    try:
        source.verify(headers, raw)
        result = source.parse(headers, raw)
    except NotConfigured as exc:
        await run_in_threadpool(state.record_webhook, svc.pool, name, rejected=str(exc))
        return error(403, f"refused: {exc}")
    except InvalidWebhook as exc:
        await run_in_threadpool(state.record_webhook, svc.pool, name, rejected=str(exc))
        return error(exc.status, str(exc))
    if result.reply is not None:
        status, body, content_type = result.reply
        return Response(body, status, media_type=content_type)
    if result.delivery_id:
        first = await run_in_threadpool(state.claim_delivery, svc.pool, name, result.delivery_id)
        if not first:
            return JSONResponse({"status": "duplicate", "delivery_id": result.delivery_id})
    refs = list(result.refs)
    if result.scope_events:
        refs += await run_in_threadpool(admin.apply_scope_events, svc, name, result.scope_events)
    if refs and (failed := await enqueue(request, refs)):
        if result.delivery_id:  # let the sender's retry through
            await run_in_threadpool(state.release_delivery, svc.pool, name, result.delivery_id)
        return failed
    await run_in_threadpool(state.record_webhook, svc.pool, name)
    return JSONResponse({"status": "accepted", "enqueued": len(refs), "note": result.note or None})


async def record_handshake(request: Request, name: str, token: str) -> Response:
    svc = services(request)
    stored = await run_in_threadpool(
        state.kv_set, svc.pool, f"{name}.verification_token", token, only_if_absent=True
    )
    if not stored:
        return error(409, f"{name} verification token already recorded; configure it and restart")
    log.warning(
        "%s webhook verification token received: paste it into %s and set %s_WEBHOOK_TOKEN; "
        "it is shown by 'vector-sync status' and GET /api/admin/verification-token/%s",
        name, name, name.upper(), name,
    )
    await run_in_threadpool(state.record_webhook, svc.pool, name)
    return JSONResponse({"status": "verification token recorded"})


# --- status ---------------------------------------------------------------------------------


async def status(request: Request) -> Response:
    body = await run_in_threadpool(build_status, services(request), settings_of(request))
    # The state cannot be read (Postgres down): say so, as JSON, with 503 rather than a 500.
    code = 200 if body["postgres"]["up"] else 503
    return JSONResponse(body, code, headers={"Retry-After": "10"} if code == 503 else None)


async def metrics(request: Request) -> Response:
    # Always 200 while the receiver runs: vector_sync_healthy and vector_sync_up say what is down.
    body = await run_in_threadpool(build_status, services(request), settings_of(request))
    return PlainTextResponse(render_metrics(body), media_type="text/plain; version=0.0.4")


async def not_found(request: Request) -> Response:
    return error(404, "not found")


def routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/api/status", status),
        Route("/metrics", metrics),
        Route("/api/documents", push_document, methods=["POST"]),
        Route("/api/documents/{id:path}", delete_document, methods=["DELETE"]),
        *search.routes(),
        Route("/webhooks/{source}", webhook, methods=["POST"]),
        *auth.routes(),  # before admin: /api/scopes/{source}/access
        *admin.routes(),
        *dashboard.routes(),
        *openapi.routes(),
        *mcp_http.routes(),
    ]
