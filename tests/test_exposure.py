"""Exposure: with ``PUBLIC_ROUTES=webhooks`` (or ``STATUS_API_KEY`` set) only ``/webhooks/*``,
``/healthz`` and ``/readyz`` answer without credentials (issue 14: the dashboard, ``/api/status``
and ``/metrics`` used to publish host names, pids and error messages to whoever could reach the
webhooks).

The check walks the receiver's real route table, so a route added later is covered without
touching this file; the gate itself protects by default (anything not on the public list).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from core import apikeys
from core.errors import SettingsError
from core.runtime import open_services
from core.settings import Settings
from receiver.app import is_public
from tests.conftest import ADMIN_KEY, ReceiverHandle, make_settings, reset_state

STATUS_KEY = "status-key-for-tests"


@pytest.fixture(scope="module")
def guarded(infra: dict[str, str]) -> Iterator[dict[str, Any]]:
    settings = make_settings(infra, STATUS_API_KEY=STATUS_KEY)
    svc = open_services(settings)
    reset_state(svc)
    _, search_token = apikeys.create_key(svc.pool, "search", "ann@example.com", name="exposure test")
    handle = ReceiverHandle(settings)
    try:
        yield {"url": handle.url, "app": handle.server.config.app, "search": search_token}
    finally:
        handle.stop()
        svc.close()


def concrete(path: str) -> str:
    """A request path for a route's template: every ``{param}`` (or ``{param:conv}``) → ``x``."""
    return re.sub(r"\{[^}]+\}", "x", path)


def route_requests(app: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for route in app.routes:
        # Every route kind the app has today is a Route; a Mount or other kind added later must
        # be taught here (the test fails rather than skipping it).
        assert isinstance(route, Route), f"unhandled route kind {type(route).__name__}: {route!r}"
        for method in sorted(route.methods or {"GET"}):
            out.append((method, concrete(route.path_format)))
    return out


def test_the_setting_defaults_and_refuses_bad_values() -> None:
    # make run (no STATUS_API_KEY): as convenient as before; a status key turns the gate on.
    assert Settings.from_environ({}).public_routes == "all"
    assert Settings.from_environ({"STATUS_API_KEY": "k"}).public_routes == "webhooks"
    assert Settings.from_environ({"PUBLIC_ROUTES": "webhooks"}).public_routes == "webhooks"
    assert Settings.from_environ({"STATUS_API_KEY": "k", "PUBLIC_ROUTES": "all"}).public_routes == "all"
    with pytest.raises(SettingsError, match="^PUBLIC_ROUTES must be all or webhooks"):
        Settings.from_environ({"PUBLIC_ROUTES": "some"})


def test_only_webhooks_and_health_answer_without_credentials(guarded: dict[str, Any]) -> None:
    requests = route_requests(guarded["app"])
    assert len(requests) > 30  # the whole table, not a few hand-picked routes
    public, protected = [], []
    with httpx.Client(base_url=guarded["url"], timeout=30) as client:
        for method, path in requests:
            response = client.request(method, path)
            assert response.status_code < 500, (method, path, response.status_code, response.text)
            if is_public(path):
                public.append(path)
                assert response.status_code != 401, (method, path)
                assert "credentials required" not in response.text
            else:
                protected.append(path)
                assert response.status_code == 401, (method, path, response.status_code, response.text)
                assert response.headers["www-authenticate"].startswith("Basic")
        # Paths that match no route are refused the same way (no route discovery).
        assert client.get("/no/such/route").status_code == 401
    assert {p for p in public} == {"/healthz", "/readyz", "/webhooks/x"}
    assert {"/", "/api/status", "/metrics", "/openapi.json"} <= set(protected)


def test_status_key_admin_key_and_basic_auth_open_the_status(guarded: dict[str, Any]) -> None:
    basic = base64.b64encode(f"ops:{STATUS_KEY}".encode()).decode()
    with httpx.Client(base_url=guarded["url"], timeout=30) as client:
        for headers in ({"Authorization": f"Bearer {STATUS_KEY}"}, {"X-Admin-Key": STATUS_KEY},
                        {"Authorization": f"Bearer {ADMIN_KEY}"}, {"Authorization": f"Basic {basic}"}):
            for path in ("/", "/api/status", "/metrics", "/openapi.json"):
                response = client.get(path, headers=headers)
                assert response.status_code == 200, (headers, path, response.text)
        assert "vector_sync_healthy" in client.get("/metrics", headers={"X-Admin-Key": STATUS_KEY}).text
        # A wrong key is refused like none at all.
        wrong = client.get("/api/status", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]


def test_status_key_opens_nothing_else_and_search_keys_not_the_status(guarded: dict[str, Any]) -> None:
    status_key = {"Authorization": f"Bearer {STATUS_KEY}"}
    search_key = {"Authorization": f"Bearer {guarded['search']}"}
    with httpx.Client(base_url=guarded["url"], timeout=30) as client:
        # Past the gate each route checks its own role: the status key is no admin or search key.
        assert client.get("/api/keys", headers=status_key).status_code in (401, 403)
        assert client.get("/api/runs", headers=status_key).status_code in (401, 403)
        assert client.post("/api/search", headers=status_key, json={"q": "x"}).status_code in (401, 403)
        # A search key searches, and opens the search page, but does not read the status.
        assert client.post("/api/search", headers=search_key, json={"q": "billing"}).status_code == 200
        assert client.get("/search", headers=search_key).status_code == 200
        refused = client.get("/api/status", headers=search_key)
        assert refused.status_code == 403 and "search key" in refused.json()["error"]
        assert client.get("/metrics", headers=search_key).status_code == 403


def test_webhooks_still_reach_their_own_checks(guarded: dict[str, Any]) -> None:
    with httpx.Client(base_url=guarded["url"], timeout=30) as client:
        # No GitHub secret configured: the webhook route itself refuses (fail closed), not the gate.
        response = client.post("/webhooks/github", content=b"{}", headers={"X-GitHub-Event": "ping"})
        assert response.status_code == 403 and response.json()["error"].startswith("refused")
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json()["status"] == "ready"

