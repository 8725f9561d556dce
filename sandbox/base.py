"""What every simulator shares: knobs, fault injection, the control API, and webhook sending.

Conventions (one module per API under sandbox/):

- A simulator is a subclass of :class:`Simulator` with a ``name``, in-memory state, and
  ``routes()`` returning the API's Starlette routes. ``Simulator.app`` wraps them with the
  knobs middleware and mounts the shared control API under ``/_sandbox/``; a simulator adds its
  own control routes (create/edit/delete items, read ground truth) with ``control_routes()``.
- Each simulator is served on its own loopback port (real APIs have distinct hosts), and
  ``env(base_url)`` returns the ``NAME=value`` settings vector-sync needs to use it.
- ``seed(profile, rng, world)`` fills state deterministically; ``world`` is a dict the
  simulators share (Tempo and Fireflies read the Jira issues from it).
- Changes made through the control API fire the provider's webhooks through
  ``self.webhooks.send(...)``, which applies the drop-rate knob and records every attempt.
"""

from __future__ import annotations

import asyncio
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass
class Knobs:
    """Realism dials, changed at run time through ``PUT /_sandbox/knobs``.

    ``latency`` seconds added to each API call; ``fault_rate`` share of API calls answered 500
    (or 503 with Retry-After, alternately); ``timeout_rate`` share that hang for
    ``timeout_seconds`` before answering; ``rate_limit`` requests per second before the
    simulator's own 429 (None = the API's documented default, 0 = unlimited);
    ``webhook_drop_rate`` share of webhooks never sent; ``consistency_delay`` seconds before a
    write becomes visible to reads (Pinecone); ``seed`` drives all randomness here.
    """

    latency: float = 0.0
    fault_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_seconds: float = 30.0
    rate_limit: float | None = None
    webhook_drop_rate: float = 0.0
    consistency_delay: float = 0.0
    seed: int = 1

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown knobs: {', '.join(sorted(unknown))}")
        for key, value in changes.items():
            setattr(self, key, value)


class KnobsMiddleware:
    """Applies latency, faults and hangs to API calls; never to the control API."""

    def __init__(self, app: ASGIApp, knobs: Knobs, rng: random.Random) -> None:
        self.app = app
        self.knobs = knobs
        self.rng = rng
        self._flip = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        knobs = self.knobs
        if knobs.latency:
            await asyncio.sleep(knobs.latency)
        if knobs.timeout_rate and self.rng.random() < knobs.timeout_rate:
            await asyncio.sleep(knobs.timeout_seconds)
        if knobs.fault_rate and self.rng.random() < knobs.fault_rate:
            self._flip = not self._flip
            if self._flip:
                response: Response = JSONResponse({"message": "sandbox fault"}, 500)
            else:
                response = JSONResponse(
                    {"message": "sandbox overload"}, 503, headers={"Retry-After": "1"}
                )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


@dataclass
class Delivery:
    """One webhook the simulator sent (or dropped)."""

    url: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    dropped: bool = False
    error: str = ""
    sent_at: float = field(default_factory=time.time)


class WebhookSender:
    """Sends signed webhooks to the configured receiver URL, recording every attempt.

    ``target`` is None until configured (``PUT /_sandbox/webhook {"url": ...}`` or the
    ``--webhook-url`` flag); with no target, webhooks are recorded as dropped.
    """

    def __init__(self, knobs: Knobs, rng: random.Random) -> None:
        self.knobs = knobs
        self.rng = rng
        self.target: str | None = None
        self.deliveries: list[Delivery] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(
        self,
        body: bytes,
        headers: dict[str, str],
        *,
        timeout: float = 10.0,
        retry: Callable[[Delivery], Awaitable[None]] | None = None,
    ) -> Delivery:
        """POST ``body`` now; ``retry`` (if given) is the provider's retry policy, run after."""
        delivery = Delivery(url=self.target or "", headers=headers, body=body)
        self.deliveries.append(delivery)
        if not self.target or (
            self.knobs.webhook_drop_rate and self.rng.random() < self.knobs.webhook_drop_rate
        ):
            delivery.dropped = True
            return delivery
        await self._post(delivery, timeout)
        if retry is not None:
            await retry(delivery)
        return delivery

    def send_soon(self, body: bytes, headers: dict[str, str], **kwargs: Any) -> None:
        """Fire and forget from a request handler: the control API answers at once."""
        task = asyncio.get_running_loop().create_task(self._send_quiet(body, headers, **kwargs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every webhook sent with ``send_soon`` has been delivered or failed."""
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=deadline - time.monotonic())

    async def _send_quiet(self, body: bytes, headers: dict[str, str], **kwargs: Any) -> None:
        await self.send(body, headers, **kwargs)

    async def _post(self, delivery: Delivery, timeout: float) -> None:
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.post(delivery.url, content=delivery.body, headers=delivery.headers)
            delivery.status = response.status_code
        except httpx.HTTPError as exc:
            delivery.status = None
            delivery.error = f"{type(exc).__name__}: {exc}"


class Simulator(ABC):
    """Base class of one simulated API. Subclasses set ``name`` and implement ``routes``."""

    name = "base"

    def __init__(self, knobs: Knobs | None = None) -> None:
        self.knobs = knobs or Knobs()
        self.rng = random.Random(self.knobs.seed)
        self.webhooks = WebhookSender(self.knobs, self.rng)
        self.base_url = ""
        self._app: ASGIApp | None = None

    # --- to implement -------------------------------------------------------------------
    @abstractmethod
    def routes(self) -> list[BaseRoute]:
        """The API's routes (a simulator without them cannot be created)."""

    def control_routes(self) -> list[BaseRoute]:
        """Extra routes under /_sandbox/ (create, edit, delete, ground truth)."""
        return []

    def env(self, base_url: str) -> dict[str, str]:
        """Settings vector-sync needs to use this simulator at ``base_url``."""
        return {}

    def seed(self, profile: str, rng: random.Random, world: dict[str, Any]) -> None:
        """Fill state for ``profile`` ("empty", "small", "scale")."""

    async def trickle(self, rng: random.Random) -> None:
        """Make one realistic live edit (firing webhooks), for sandbox mode's trickle."""

    # --- shared -------------------------------------------------------------------------
    @property
    def app(self) -> ASGIApp:
        if self._app is None:
            control = [
                Route("/knobs", self._get_knobs, methods=["GET"]),
                Route("/knobs", self._put_knobs, methods=["PUT"]),
                Route("/webhook", self._put_webhook, methods=["PUT"]),
                Route("/deliveries", self._get_deliveries, methods=["GET"]),
                *self.control_routes(),
            ]
            inner = Starlette(routes=[Mount("/_sandbox", routes=control), *self.routes()])
            self._app = KnobsMiddleware(inner, self.knobs, self.rng)
        return self._app

    async def _get_knobs(self, request: Request) -> Response:
        return JSONResponse(asdict(self.knobs))

    async def _put_knobs(self, request: Request) -> Response:
        try:
            self.knobs.update(await request.json())
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(asdict(self.knobs))

    async def _put_webhook(self, request: Request) -> Response:
        body = await request.json()
        self.webhooks.target = body.get("url") or None
        return JSONResponse({"url": self.webhooks.target})

    async def _get_deliveries(self, request: Request) -> Response:
        return JSONResponse(
            [
                {"url": d.url, "status": d.status, "dropped": d.dropped, "error": d.error,
                 "headers": d.headers, "sent_at": d.sent_at}
                for d in self.webhooks.deliveries
            ]
        )


class TokenBucket:
    """An in-memory rate limit for a simulator: ``rate`` per second with ``burst``.

    ``take()`` returns 0 when a request may proceed, else the seconds until one may.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
