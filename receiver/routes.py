"""HTTP routes: health, the push API, signed webhooks, status and metrics (search: receiver.search)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from core import jsonsafe, queue, state
from core.documents import Document, Ref
from core.errors import InvalidWebhook, MalformedWebhook, NotConfigured, VectorSyncError
from core.settings import SOURCE_NAMES
from core.sources.webhooks import check_result
from core import metrics as metrics_module
from core.status import StatusCache, render_metrics
from receiver.bodies import read_body
from receiver.common import claim_and_enqueue, counters, enqueue, error, fast, services, settings_of
from receiver import admin, auth, dashboard, mcp_http, openapi, search

log = logging.getLogger("vector_sync.receiver")

#: Push API limits.
MAX_ID_LENGTH = 512
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_CHARS = 256
#: The pushed metadata as JSON, at most this many bytes (the vector index keeps 40 KB per
#: vector for metadata *and* the chunk text).
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_LIST = 256
#: ``updated_at`` must be epoch seconds in [1990-01-01, now + one day].
EARLIEST_UPDATED_AT = 631152000.0
FUTURE_TOLERANCE_S = 86400.0


def loggable(message: str, limit: int = 500) -> str:
    """``message`` as text Postgres can store (it may quote hostile input), at most ``limit``."""
    clean = message.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def check_admin(request: Request) -> JSONResponse | None:
    """None when the request carries an admin key; else the 401/403 to answer (receiver.auth)."""
    return auth.require(request, "admin")


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
        await fast(request).client.ping()
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


def api_id(raw: str) -> str:
    """The stable id of a pushed document as both push and delete read it: surrounding
    whitespace and one ``api:`` prefix (the document id's) dropped, so every id the push
    accepted can be deleted by the id or by the document id."""
    raw = raw.strip()
    return raw[len("api:"):].strip() if raw.startswith("api:") else raw


def check_updated_at(value: Any, now: float) -> str | None:
    """None when ``value`` is epoch seconds we can order by; else the message saying why not."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "'updated_at' must be epoch seconds (a number)"
    if not math.isfinite(value):
        return "'updated_at' must be a finite number of epoch seconds"
    latest = now + FUTURE_TOLERANCE_S
    if value > latest:
        if EARLIEST_UPDATED_AT <= value / 1000 <= latest:
            return "'updated_at' looks like milliseconds; send seconds"
        if EARLIEST_UPDATED_AT <= value / 1_000_000 <= latest:
            return "'updated_at' looks like microseconds; send seconds"
        return "'updated_at' lies more than a day in the future; send epoch seconds"
    if value < EARLIEST_UPDATED_AT:
        return "'updated_at' is before 1990; send epoch seconds"
    return None


def _check_metadata(metadata: Mapping[str, Any]) -> str | None:
    if len(metadata) > MAX_METADATA_KEYS:
        return f"'metadata' may have at most {MAX_METADATA_KEYS} keys"
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            return f"metadata keys must be 1 to {MAX_METADATA_KEY_CHARS} characters"
        if isinstance(value, list):
            if len(value) > MAX_METADATA_LIST or not all(isinstance(v, str) for v in value):
                return f"metadata '{key[:40]}': lists must hold at most {MAX_METADATA_LIST} strings only"
        elif isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
            return f"metadata '{key[:40]}': whole numbers must fit in 64 bits"
        elif not isinstance(value, str | int | float | bool):
            return f"metadata '{key[:40]}': values must be strings, numbers, booleans or lists of strings"
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        return f"'metadata' is over {MAX_METADATA_BYTES} bytes as JSON"
    return None


def parse_document(body: Any, now: float) -> Document | str:
    """A pushed document, or the message saying what is wrong with it.

    Everything accepted here can be stored: the body was read by ``jsonsafe.loads`` (no NUL,
    no lone surrogate, no NaN or infinity anywhere in it) and each field is checked below.
    """
    if not isinstance(body, Mapping):
        return "body must be a JSON object"
    doc_id, title, text = body.get("id"), body.get("title"), body.get("text")
    if not isinstance(doc_id, str) or not api_id(doc_id):
        return "'id' must be a non-empty string"
    if len(api_id(doc_id)) > MAX_ID_LENGTH:
        return f"'id' must be at most {MAX_ID_LENGTH} characters"
    if any(part in (".", "..") for part in api_id(doc_id).split("/")):
        # URL clients resolve dot segments, so DELETE /api/documents/{id} could never name it.
        return "'id' must not have '.' or '..' as a '/'-separated part"
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
    if problem := _check_metadata(metadata):
        return problem
    scope = metadata.get("scope", "")
    if not isinstance(scope, str) or len(scope) > MAX_ID_LENGTH:
        return f"metadata 'scope' must be a string of at most {MAX_ID_LENGTH} characters"
    updated_at = body.get("updated_at", now)
    if problem := check_updated_at(updated_at, now):
        return problem
    author = body.get("author", "")
    if author is None:
        author = ""
    if not isinstance(author, str):
        return "'author' must be a string"
    return Document(
        source="api", id=api_id(doc_id), scope=scope, title=title,
        text=text, updated_at=float(updated_at), url=url, author=author, metadata=dict(metadata),
    )


async def push_document(request: Request) -> Response:
    if denied := check_admin(request):
        return denied
    raw = await read_body(request, settings_of(request).webhook_max_bytes * 8)
    if isinstance(raw, Response):
        return raw
    try:
        body = jsonsafe.loads(raw)
    except jsonsafe.BadJSON as exc:
        return error(400, str(exc))
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
    doc_id = api_id(request.path_params["id"])
    if not doc_id or len(doc_id) > MAX_ID_LENGTH or jsonsafe.storable(doc_id):
        return error(400, "invalid document id")
    ref = Ref(source="api", id=doc_id, op="delete")
    # The delete orders after every version pushed before it, even one whose updated_at is
    # ahead of our clock (the push accepts up to a day ahead): an API delete always deletes.
    rows = await run_in_threadpool(state.get_documents, services(request).pool, [ref.document_id])
    stored = rows[ref.document_id].source_updated_at if ref.document_id in rows else None
    ref = Ref(source="api", id=doc_id, op="delete", event_at=max(time.time(), stored or 0.0))
    if failed := await enqueue(request, [ref]):
        return failed
    return JSONResponse({"document_id": ref.document_id, "status": "delete enqueued"}, 202)


# --- webhooks -------------------------------------------------------------------------------


async def webhook(request: Request) -> Response:
    name = request.path_params["source"]
    arrived = time.time()  # the start of vector_sync_webhook_to_indexed_seconds (core.metrics)
    if name not in SOURCE_NAMES:
        return error(404, f"no webhook route for {name!r}")
    raw = await read_body(request, settings_of(request).webhook_max_bytes)
    if isinstance(raw, Response):
        return raw
    # Before any parser (Notion's unsigned handshake included) sees the body.
    if jsonsafe.depth(raw) > jsonsafe.MAX_DEPTH:
        return await refuse(request, name, MalformedWebhook(f"body nests deeper than {jsonsafe.MAX_DEPTH} levels"))
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        source = request.app.state.sources.get(name)
        handshake = getattr(source, "handshake", None)
        token = handshake(headers, raw) if handshake is not None else None
        if token:
            return await record_handshake(request, name, token)
        source.verify(headers, raw)
        result = check_result(source.parse(headers, raw), name)
    except NotConfigured as exc:
        return await refuse(request, name, exc, 403)
    except InvalidWebhook as exc:
        return await refuse(request, name, exc)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # A parser bug on some shape nobody foresaw: still the sender's input, so a 400.
        log.warning("%s webhook parser failed on a verified body: %s: %s", name, type(exc).__name__, exc)
        return await refuse(request, name, MalformedWebhook(f"{name}: malformed payload ({type(exc).__name__})"))
    if result.reply is not None:
        status, body, content_type = result.reply
        return Response(body, status, media_type=content_type)
    refs = list(result.refs)
    claim = queue.delivery_key(name, result.delivery_id) if result.delivery_id else None
    if result.scope_events:
        return await scope_webhook(request, name, result, refs, claim, arrived)
    if claim is not None:
        # The hot path: the claim and the enqueue in one Redis round trip, atomically.
        first = await claim_and_enqueue(request, claim, refs, webhook_at=arrived)
        if isinstance(first, Response):
            return first
        if not first:
            return JSONResponse({"status": "duplicate", "delivery_id": result.delivery_id})
    elif refs and (failed := await enqueue(request, refs, webhook_at=arrived)):
        return failed
    counters(request).received(name)
    return accepted(refs, result.note)


def accepted(refs: list[Ref], note: str | None) -> Response:
    # A note may quote the sender's input (an event type): made encodable, as a rejection is.
    return JSONResponse({"status": "accepted", "enqueued": len(refs), "note": loggable(note) if note else None})


async def scope_webhook(request: Request, name: str, result: Any, refs: list[Ref],
                        claim: str | None, arrived: float) -> Response:
    """A delivery with scope lifecycle events (rare): claim it first, so a duplicate never
    applies its events twice, then apply them (Postgres), then enqueue; a failure after the
    claim releases it, so the sender's retry is not taken for a duplicate."""
    if claim is not None:
        first = await claim_and_enqueue(request, claim, [])
        if isinstance(first, Response):
            return first
        if not first:
            return JSONResponse({"status": "duplicate", "delivery_id": result.delivery_id})
    try:
        refs += await run_in_threadpool(admin.apply_scope_events, services(request), name, result.scope_events)
        if refs and (failed := await enqueue(request, refs, webhook_at=arrived)):
            await release(request, claim)  # let the sender's retry through
            return failed
    except BaseException:
        await release(request, claim)
        raise
    counters(request).received(name)
    return accepted(refs, result.note)


async def release(request: Request, claim: str | None) -> None:
    """Forget a claimed delivery whose handling failed, so the sender's retry is not taken for
    a duplicate. Best effort: with Redis down too, the claim stays (and the reconciler catches
    the change)."""
    if not claim:
        return
    try:
        await fast(request).release(claim)
    except Exception as exc:
        log.error("could not release delivery %s: %s", claim, exc)


async def refuse(request: Request, name: str, exc: Exception, status: int | None = None) -> Response:
    """Count the rejection (its message quotes the sender's input, so it is made storable)."""
    message = loggable(str(exc))
    counters(request).rejected(name, message)
    code = status or getattr(exc, "status", 400)
    return error(code, f"refused: {message}" if code == 403 else message)


async def record_handshake(request: Request, name: str, token: str) -> Response:
    svc = services(request)
    stored = await run_in_threadpool(
        state.kv_set, svc.pool, f"{name}.verification_token", token, only_if_absent=True
    )
    if not stored:
        return error(409, f"{name} verification token already recorded; configure it and restart, "
                          f"or clear it with 'vector-sync {name}-token clear' to record a new one")
    log.warning(
        "%s webhook verification token received: paste it into %s and set %s_WEBHOOK_TOKEN; "
        "it is shown by 'vector-sync status' and GET /api/admin/verification-token/%s",
        name, name, name.upper(), name,
    )
    counters(request).received(name)
    return JSONResponse({"status": "verification token recorded"})


# --- status ---------------------------------------------------------------------------------


def cached_status(request: Request) -> dict[str, Any]:
    """The status report through the receiver's cache (``STATUS_CACHE_TTL``): what every status
    surface of this receiver reads. Shared: never change it."""
    cache: StatusCache = request.app.state.status_cache
    return cache.get(services(request), settings_of(request))


async def status(request: Request) -> Response:
    body = await run_in_threadpool(cached_status, request)
    # The state cannot be read (Postgres down): say so, as JSON, with 503 rather than a 500.
    code = 200 if body["postgres"]["up"] else 503
    return JSONResponse(body, code, headers={"Retry-After": "10"} if code == 503 else None)


async def metrics(request: Request) -> Response:
    # Always 200 while the receiver runs: vector_sync_healthy and vector_sync_up say what is down.
    # The deployment's gauges from the shared report, then this process's own histograms and
    # counters (core.metrics); workers and reconcilers serve theirs on METRICS_PORT.
    body = await run_in_threadpool(cached_status, request)
    return PlainTextResponse(render_metrics(body) + metrics_module.render(),
                             media_type="text/plain; version=0.0.4")


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
