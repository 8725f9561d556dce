"""Outbound HTTP for connectors: timeouts, the shared request budget, Retry-After, backoff.

``SourceHTTP.request`` is the one place a connector's call goes through:

- every request waits for a slot in the source's budget (core/ratelimit.py);
- 429 waits ``Retry-After`` (or the source's reset header, read by the connector's
  ``reset_after`` hook) and tries again, up to ``max_wait`` in total, then raises
  ``RateLimited`` so the job waits for the budget rather than failing;
- 502, 503, 504 (and 529, "overloaded") are an *outage*, not a rate limit: they wait
  ``Retry-After`` when given (within ``max_wait``), else back off, and finally raise
  ``SourceUnavailable``; so does a connection that cannot be made. The job then waits for
  the source without using up its retries (workers/actors.py);
- other 5xx and timeouts back off exponentially with full jitter, then raise
  ``TransientSourceError`` (a real failure, counted against ``MAX_RETRIES``);
- 401 and 403 (unless the hook says it is a rate limit) raise ``PermanentSourceError``;
- 404 and 410 are returned, because only the connector knows whether that means "deleted";
- other 4xx raise ``PermanentSourceError`` with the body's first 300 characters.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from core import metrics
from core.errors import PermanentSourceError, RateLimited, SourceUnavailable, TransientSourceError

#: Seconds; the first backoff, doubled each attempt up to MAX_BACKOFF.
MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: Statuses that mean the service is down or overloaded (an outage), not that we asked too often.
OUTAGE_STATUSES = frozenset({502, 503, 504, 529})


class Limiter(Protocol):
    async def acquire(self) -> float: ...


def compute_backoff(attempt: int, *, base: float = MIN_BACKOFF, cap: float = MAX_BACKOFF) -> float:
    """Full-jitter exponential backoff in seconds for the given attempt (0-based)."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def retry_after(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or an HTTP date), else None."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


#: At most this many rate-limited answers to one request before ``RateLimited`` (a safety net
#: for a source that keeps answering 429 with a zero wait; ``max_wait`` is the real bound).
RATE_LIMIT_ROUNDS = 50


class SourceHTTP:
    """An ``httpx.AsyncClient`` bound to one source's base URL, auth, budget and retry rules.

    ``reset_after(response)`` lets a connector name a rate limit the generic rules miss
    (GitHub's 403 with ``x-ratelimit-remaining: 0``): return seconds to wait, or None.
    """

    def __init__(
        self,
        source: str,
        client: httpx.AsyncClient,
        *,
        base_url: str = "",
        headers: dict[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        limiter: Limiter | None = None,
        attempts: int = 5,
        max_wait: float = 120.0,
        reset_after: Callable[[httpx.Response], float | None] | None = None,
    ) -> None:
        self.source = source
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.headers = headers or {}
        self.auth = auth
        self.limiter = limiter
        self.attempts = attempts
        self.max_wait = max_wait
        self.reset_after = reset_after
        #: Requests sent (including retries); benchmarks and tests read it.
        self.requests = 0
        #: ``time.monotonic()`` until which a request waits out a 429 (0: none waits).
        self.waiting_until = 0.0

    def budget_wait(self) -> float:
        """Seconds until a request waiting for the request budget (the shared limiter's slot or
        a 429's Retry-After) may go; 0 when nothing waits."""
        until = max(self.waiting_until, float(getattr(self.limiter, "waiting_until", 0.0) or 0.0))
        return max(0.0, until - time.monotonic())

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.url(path)
        headers = {**self.headers, **kwargs.pop("headers", {})}
        waited = 0.0
        # Waits for a rate limit are bounded by ``max_wait`` (and ``RATE_LIMIT_ROUNDS``), not
        # by ``attempts``: requests that share a quota and are told the same retry time wake up
        # together and only some get a slot, so how many rounds one needs depends on timing.
        attempt = rounds = 0
        while True:
            if self.limiter is not None:
                await self.limiter.acquire()
            self.requests += 1
            try:
                response = await self.client.request(
                    method, url, headers=headers, auth=self.auth or httpx.USE_CLIENT_DEFAULT, **kwargs
                )
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                metrics.upstream(self.source, None)
                if attempt + 1 == self.attempts:
                    detail = f"{method} {_path(url)} failed: {type(exc).__name__}: {exc}"
                    if isinstance(exc, httpx.ConnectError):  # nobody answers: an outage
                        raise SourceUnavailable(self.source, f"{detail} (unreachable)") from exc
                    raise TransientSourceError(self.source, detail) from exc
                await asyncio.sleep(compute_backoff(attempt))
                attempt += 1
                continue
            metrics.upstream(self.source, response.status_code)
            observe = getattr(self.limiter, "observe", None)
            if observe is not None:  # the source's own count of the budget (core/ratelimit.py)
                await observe(response.headers)
            wait = self._rate_limit_wait(response)
            if wait is not None:
                rounds += 1
                if waited + wait > self.max_wait or rounds >= RATE_LIMIT_ROUNDS:
                    raise RateLimited(
                        self.source,
                        f"{method} {_path(url)} rate limited ({response.status_code})",
                        wait,
                        response.status_code,
                    )
                waited += wait
                self.waiting_until = time.monotonic() + wait
                try:
                    await asyncio.sleep(wait)
                finally:
                    self.waiting_until = 0.0
                continue
            if response.status_code in OUTAGE_STATUSES:
                hint = retry_after(response)
                pause = hint if hint is not None else compute_backoff(attempt)
                if attempt + 1 == self.attempts or waited + pause > self.max_wait:
                    raise SourceUnavailable(
                        self.source,
                        f"{method} {_path(url)} unavailable: {response.status_code} "
                        f"{response.reason_phrase} (outage)",
                        response.status_code,
                        hint,
                    )
                waited += pause
                await asyncio.sleep(pause)
                continue
            if response.status_code >= 500:
                if attempt + 1 == self.attempts:
                    raise TransientSourceError(
                        self.source,
                        f"{method} {_path(url)} failed: {response.status_code} {response.reason_phrase}",
                        response.status_code,
                    )
                await asyncio.sleep(compute_backoff(attempt))
                attempt += 1
                continue
            if response.status_code in (401, 403):
                raise PermanentSourceError(
                    self.source,
                    f"{method} {_path(url)} refused: {response.status_code} {_snippet(response)}",
                    response.status_code,
                )
            if response.status_code >= 400 and response.status_code not in (404, 410):
                raise PermanentSourceError(
                    self.source,
                    f"{method} {_path(url)} failed: {response.status_code} {_snippet(response)}",
                    response.status_code,
                )
            return response

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", path, **kwargs)

    def _rate_limit_wait(self, response: httpx.Response) -> float | None:
        if self.reset_after is not None:
            hooked = self.reset_after(response)
            if hooked is not None:
                return hooked
        if response.status_code == 429:
            return retry_after(response) or 1.0
        return None


def _path(url: str) -> str:
    return httpx.URL(url).path


def _snippet(response: httpx.Response) -> str:
    return response.text[:300].replace("\n", " ")
