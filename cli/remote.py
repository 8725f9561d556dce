"""``vector-sync --url URL --key KEY ...``: drive a running deployment through its HTTP API
(docs/api.md) instead of opening its database and Redis. The key is an admin key for the admin
routes (scopes, runs, backfills, dead letters) or a search key for ``search``.
"""

from __future__ import annotations

from typing import Any

import httpx

from core.process import fail

#: Seconds to wait for one API answer (a synchronous audit of one scope can take a while).
TIMEOUT_S = 60.0


class Remote:
    """One deployment's API, with one-line failures: exit 1 when it cannot be reached or fails,
    exit 2 when it refuses the request (bad input, unknown source or scope, wrong key)."""

    def __init__(self, url: str, key: str | None, transport: httpx.BaseTransport | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            fail(f"--url must start with http:// or https://, not {url!r}")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT_S, transport=transport)

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 202), **kwargs: Any) -> tuple[int, Any]:
        """``(status, JSON body)``; fails with one line unless the status is in ``ok``."""
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach {self.url}: {type(exc).__name__}: {exc}", 1)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code in ok:
            return response.status_code, body
        message = body.get("error") if isinstance(body, dict) else None
        message = message or f"{response.status_code} {response.reason_phrase}"
        if response.status_code == 401:
            fail(f"{self.url} refused the key (401): {message}; pass an admin key with --key or VECTOR_SYNC_KEY")
        if response.status_code == 403:
            fail(f"{self.url} refused the key (403): {message}")
        if response.status_code in (400, 404, 409, 413, 422):
            fail(message, 2 if response.status_code != 409 else 1)
        fail(f"{method} {path} failed: {message}", 1)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs)[1]

    def post(self, path: str, body: dict[str, Any], **kwargs: Any) -> Any:
        return self.call("POST", path, json=body, **kwargs)[1]

    def close(self) -> None:
        self.client.close()
