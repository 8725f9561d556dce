"""Admin API (every route needs an admin key: ``Authorization: Bearer`` or ``X-Admin-Key``): scopes,
backfills, runs, dead letters, the webhook verification token, and the drift audit
(``POST /api/admin/verify``).

Backfills requested here are queued as ``runs`` rows and executed by the reconciler process
(the receiver only answers), so a receiver restart never loses one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from core import queue, runs, scopes, state
from core.documents import Ref, split_doc_id
from core.runtime import Services
from core.settings import SOURCE_NAMES
from core.runs import Conflict, create_run, load_run, verification
from receiver import auth, bodies, common

#: Bounds on admin request bodies: scope keys are short ids; a run id is a Postgres bigint.
MAX_KEYS = 1000
MAX_KEY_CHARS = 512
MAX_DAYS = 36500
MAX_RUN_ID = 2**63 - 1


def apply_scope_events(services: Services, source: str, events: list[tuple[str, str]]) -> list[Ref]:
    return scopes.apply_events(services.pool, source, events)


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


async def _json_body(request: Request) -> dict[str, Any] | Response:
    return await bodies.json_object(request)


def _source_or_error(request: Request) -> str | Response:
    source = request.path_params["source"]
    if source not in SOURCE_NAMES:
        return common.error(404, f"unknown source {source!r}; one of {', '.join(SOURCE_NAMES)}")
    return source


async def list_scopes(request: Request) -> Response:
    source = request.query_params.get("source") or None
    if source is not None and source not in SOURCE_NAMES:
        return common.error(400, f"unknown source {source!r}")
    rows = await run_in_threadpool(scopes.list_scopes, common.services(request).pool, source)
    return JSONResponse({"scopes": [_jsonable(r) for r in rows]})


async def change_scopes(request: Request, source: str) -> Response:
    body = await _json_body(request)
    if isinstance(body, Response):
        return body
    keys = body.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        return common.error(400, "'keys' must be a non-empty list of scope keys")
    if problem := _check_keys(keys, "keys"):
        return common.error(400, problem)
    action = request.path_params["action"]
    if action == "sync":
        return await sync_scopes(request, source, keys)
    if action not in ("activate", "deactivate"):
        return common.error(404, f"no scope action {action[:40]!r}; activate, deactivate or sync")
    activate = action == "activate"
    svc = common.services(request)
    done = await run_in_threadpool(scopes.set_active, svc.pool, source, keys, activate)
    purged = 0
    if not activate and body.get("purge") is True and done:
        refs = [r for key in done for r in await run_in_threadpool(scopes.purge_refs, svc.pool, source, key)]
        if refs and (failed := await common.enqueue(request, refs)):
            return failed
        purged = len(refs)
    unknown = sorted(set(keys) - set(done))
    status = 200 if not unknown else 404
    body_out: dict[str, Any] = {"source": source, "changed": done, "active": activate, "purged": purged}
    if unknown:
        body_out["error"] = f"unknown scope(s): {', '.join(unknown)}"
    return JSONResponse(body_out, status)


async def sync_scopes(request: Request, source: str, keys: list[str]) -> Response:
    """``POST /api/scopes/{source}/sync``: make active scopes due now, so the reconciler runs
    their pass on its next tick (a failing or never-synced scope retried without waiting for its
    schedule). A deactivated scope is refused (409): activate it instead."""
    if not common.settings_of(request).source(source).configured:
        return common.error(400, f"{source} is not configured: set its credentials")
    found = await run_in_threadpool(scopes.make_due, common.services(request).pool, source, keys)
    unknown = sorted(set(keys) - set(found))
    if unknown:
        return common.error(404, f"unknown scope(s): {', '.join(unknown)}")
    inactive = sorted(k for k, active in found.items() if not active)
    if inactive:
        return common.error(409, f"deactivated scope(s): {', '.join(inactive)}; activate them to sync")
    return JSONResponse({"source": source, "due_now": sorted(found)}, 202)


async def resync_documents(request: Request) -> Response:
    """``POST /api/admin/resync`` with ``{"document_ids": [...]}``: enqueue a sync of each
    document (its current truth is fetched from its source), all or none: unknown ids are a
    404, pushed documents (no source to fetch from) and sources without credentials a 400."""
    body = await _json_body(request)
    if isinstance(body, Response):
        return body
    ids = body.get("document_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        return common.error(400, "'document_ids' must be a non-empty list of document ids")
    if problem := _check_keys(ids, "document_ids"):
        return common.error(400, problem)
    if unknown_fields := sorted(set(body) - {"document_ids"}):
        return common.error(400, f"unknown field(s): {', '.join(unknown_fields)}; use document_ids")
    known = await run_in_threadpool(state.document_scopes, common.services(request).pool, ids)
    if missing := [i for i in dict.fromkeys(ids) if i not in known]:
        return common.error(404, f"unknown document(s): {', '.join(missing[:20])}")
    settings = common.settings_of(request)
    refs = []
    for document_id, (source, scope) in known.items():
        if source not in SOURCE_NAMES:
            return common.error(400, f"{document_id} was pushed through the API: there is no source "
                                     "to fetch it from; push it again")
        if not settings.source(source).configured:
            return common.error(400, f"{source} is not configured: set its credentials")
        refs.append(Ref(source=source, id=split_doc_id(document_id)[1], scope=scope))
    if failed := await common.enqueue(request, refs):
        return failed
    return JSONResponse({"enqueued": len(refs), "document_ids": list(known)}, 202)


async def start_backfill(request: Request, source: str) -> Response:
    settings = common.settings_of(request)
    if not settings.source(source).configured:
        return common.error(400, f"{source} is not configured: set its credentials")
    body = await _json_body(request)
    if isinstance(body, Response):
        return body
    keys = body.get("scopes", [])
    days = body.get("days")
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        return common.error(400, "'scopes' must be a list of scope keys")
    if problem := _check_keys(keys, "scopes"):
        return common.error(400, problem)
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS):
        return common.error(400, f"'days' must be a whole number of days, 1 to {MAX_DAYS}")
    try:
        run_id = await run_in_threadpool(
            create_run, common.services(request).pool, source, keys, days, status="queued"
        )
    except Conflict as exc:
        return common.error(409, str(exc))
    return JSONResponse({"run_id": run_id, "status": "queued", "url": f"/api/runs/{run_id}"}, 202)


async def get_run(request: Request) -> Response:
    try:
        run_id = int(request.path_params["id"])
    except ValueError:
        return common.error(400, "run id must be a number")
    if not 1 <= run_id <= MAX_RUN_ID:
        return common.error(404, f"no run {run_id}")
    pool = common.services(request).pool
    run = await run_in_threadpool(load_run, pool, run_id)
    if run is None:
        return common.error(404, f"no run {run_id}")
    out = _jsonable(run)
    if run["kind"] == "backfill":
        out["verification"] = await run_in_threadpool(verification, pool, run_id)
    return JSONResponse(out)


async def list_runs(request: Request) -> Response:
    source = request.query_params.get("source") or None
    kind = request.query_params.get("kind") or None
    if source is not None and source not in SOURCE_NAMES:
        return common.error(400, f"unknown source {source[:40]!r}; one of {', '.join(SOURCE_NAMES)}")
    if kind is not None and len(kind) > 64:
        return common.error(400, "'kind' is at most 64 characters")
    rows = await run_in_threadpool(runs.list_runs, common.services(request).pool, source, kind)
    return JSONResponse({"runs": [_jsonable(r) for r in rows]})


async def dead_letters(request: Request) -> Response:
    letters = await run_in_threadpool(queue.dead_letters, common.services(request).broker)
    return JSONResponse({"dead_letters": letters, "count": len(letters)})


async def replay_dead_letters(request: Request) -> Response:
    body = await _json_body(request)
    if isinstance(body, Response):
        return body
    ids = body.get("message_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        return common.error(400, "'message_ids' must be a list of strings")
    if ids is not None and (problem := _check_keys(ids, "message_ids")):
        return common.error(400, problem)
    count = await run_in_threadpool(queue.replay_dead_letters, common.services(request).broker, ids)
    return JSONResponse({"replayed": count})


async def verification_token(request: Request, source: str) -> Response:
    token = await run_in_threadpool(state.kv_get, common.services(request).pool, f"{source}.verification_token")
    if token is None:
        return common.error(404, f"no {source} verification token has been received")
    return JSONResponse({"source": source, "verification_token": token})


async def start_verify(request: Request) -> Response:
    """``{"source"?, "scope"?, "repair"?}``: one scope is audited now (200, the report); anything
    wider is queued for the reconciler as one run per source (plus ``index`` for everything):
    202 with their ids; ``GET /api/admin/runs/{id}`` shows each result."""
    from core import verify
    from core.errors import VectorSyncError

    body = await _json_body(request)
    if isinstance(body, Response):
        return body
    unknown = sorted(set(body) - {"source", "scope", "repair"})
    if unknown:
        return common.error(400, f"unknown field(s): {', '.join(unknown)}; use source, scope, repair")
    source, scope, repair = body.get("source"), body.get("scope"), body.get("repair", False)
    if source is not None and source not in SOURCE_NAMES:
        return common.error(400, f"unknown source {source!r}; one of {', '.join(SOURCE_NAMES)}")
    if scope is not None and (not isinstance(scope, str) or not scope):
        return common.error(400, "'scope' must be a scope key")
    if scope is not None and source is None:
        return common.error(400, "'scope' needs 'source'")
    if not isinstance(repair, bool):
        return common.error(400, "'repair' must be true or false")
    settings = common.settings_of(request)
    if source is not None and not settings.source(source).configured:
        return common.error(400, f"{source} is not configured: set its credentials")
    svc = common.services(request)
    if scope is None:
        names = [source] if source else [*settings.configured_sources(), verify.INDEX]
        queued = await run_in_threadpool(verify.queue_requests, svc.pool, names, repair)
        answer: dict[str, Any] = {"status": "queued", "run_ids": queued,
                                  "urls": {n: f"/api/admin/runs/{i}" for n, i in queued.items()}}
        if len(queued) == 1:
            answer["run_id"] = next(iter(queued.values()))
        return JSONResponse(answer, 202)
    auditor = verify.Auditor(svc, request.app.state.sources, verify.owner_name(), repair=repair)
    try:
        targets = await run_in_threadpool(auditor.targets, source, scope)
    except VectorSyncError as exc:
        return common.error(404, str(exc))
    reports = await auditor.run_all(targets)
    if any(r.status == "skipped" for r in reports):
        return common.error(409, "; ".join(r.error or "" for r in reports if r.status == "skipped"))
    return JSONResponse(verify.summary(reports))


async def clear_verification_token(request: Request, source: str) -> Response:
    """Forget a recorded verification token (one planted by an unsigned request, or one for an
    old subscription), so that the next verification request is recorded. Once the source's
    token is configured, unsigned verification requests are refused whatever is recorded."""
    cleared = await run_in_threadpool(state.kv_delete, common.services(request).pool, f"{source}.verification_token")
    return JSONResponse({"source": source, "cleared": cleared,
                         "note": "the next verification request will be recorded" if cleared
                         else f"no {source} verification token was recorded"})


def _check_keys(keys: list[str], name: str) -> str | None:
    if len(keys) > MAX_KEYS:
        return f"'{name}' may hold at most {MAX_KEYS} entries"
    if any(len(k) > MAX_KEY_CHARS for k in keys):
        return f"each of '{name}' is at most {MAX_KEY_CHARS} characters"
    return None


def admin_only(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Refuse the request unless it carries an admin key: 401 without a live key, 403 for a
    search key or when no key can exist (receiver.auth; the lookup runs off the event loop)."""

    async def guarded(request: Request) -> Response:
        if denied := await run_in_threadpool(auth.require, request, "admin"):
            return denied
        return await handler(request)

    return guarded


def per_source(handler: Callable[[Request, str], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Pass the ``{source}`` path parameter on, once it names a known source (404 otherwise)."""

    async def checked(request: Request) -> Response:
        source = _source_or_error(request)
        if isinstance(source, Response):
            return source
        return await handler(request, source)

    return checked


def routes() -> list[BaseRoute]:
    return [
        Route("/api/scopes", admin_only(list_scopes)),
        Route("/api/scopes/{source}/{action:str}", admin_only(per_source(change_scopes)), methods=["POST"]),
        Route("/api/backfill/{source}", admin_only(per_source(start_backfill)), methods=["POST"]),
        Route("/api/runs", admin_only(list_runs)),
        Route("/api/runs/{id}", admin_only(get_run)),
        Route("/api/dead-letters", admin_only(dead_letters)),
        Route("/api/dead-letters/replay", admin_only(replay_dead_letters), methods=["POST"]),
        Route("/api/admin/verification-token/{source}", admin_only(per_source(verification_token)), methods=["GET"]),
        Route("/api/admin/verification-token/{source}", admin_only(per_source(clear_verification_token)),
              methods=["DELETE"]),
        Route("/api/admin/verify", admin_only(start_verify), methods=["POST"]),
        Route("/api/admin/runs/{id}", admin_only(get_run)),
        Route("/api/admin/resync", admin_only(resync_documents), methods=["POST"]),
    ]
