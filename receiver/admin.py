"""Admin API: scopes, backfills, runs, and the webhook verification token (X-Admin-Key)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from core import scopes, state
from core.documents import Ref
from core.runtime import Services
from core.settings import SOURCE_NAMES


def apply_scope_events(services: Services, source: str, events: list[tuple[str, str]]) -> list[Ref]:
    return scopes.apply_events(services.pool, source, events)


async def verification_token(request: Request) -> Response:
    from receiver.routes import check_admin, error, services

    if denied := check_admin(request):
        return denied
    source = request.path_params["source"]
    if source not in SOURCE_NAMES:
        return error(404, f"unknown source {source!r}")
    token = await run_in_threadpool(state.kv_get, services(request).pool, f"{source}.verification_token")
    if token is None:
        return error(404, f"no {source} verification token has been received")
    return JSONResponse({"source": source, "verification_token": token})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/admin/verification-token/{source}", verification_token),
    ]
