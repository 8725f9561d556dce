"""The sliding-window request budget (core/ratelimit.py, issue 12) on a real Redis.

Hourly budgets may burst within the window's allowance, yet no window of the budget's length,
wherever it starts, may ever hold more than the quota. The limiter takes a controllable clock
(epoch seconds passed to the Lua script), so these run in milliseconds whatever the window.
"""

from __future__ import annotations

import asyncio
import itertools
from bisect import bisect_right

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from core.errors import RateLimited
from core.ratelimit import NoLimit, RedisRateLimiter, burst_for, count_requests, window_of
from core.settings import Rate

_names = itertools.count()


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def most_in_any_window(stamps: list[float], window: float) -> int:
    """The largest number of ``stamps`` inside any half-open window ``(s - window, s]``; the
    busiest window always ends at one of the stamps."""
    ordered = sorted(stamps)
    best = 0
    for end in ordered:
        best = max(best, bisect_right(ordered, end) - bisect_right(ordered, end - window))
    return best


steps = st.lists(
    st.tuples(st.floats(0, 2.5), st.integers(0, 12)),  # (advance, in windows; requests then)
    min_size=1, max_size=15,
)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(1, 9), window=st.sampled_from([1.0, 60.0, 3600.0, 86400.0]), plan=steps)
def test_no_window_ever_holds_more_than_the_quota(infra, limit, window, plan) -> None:
    """Two limiter objects on two connections (two processes) share one budget; whatever the
    pattern of arrivals, every window of the budget's length holds at most ``limit`` requests,
    and a request never waits longer than the quota requires (an idle budget bursts)."""
    clock = Clock()
    rate = Rate(limit, window)
    name = f"prop-{next(_names)}"

    async def main() -> list[float]:
        one = aioredis.from_url(infra["REDIS_URL"])
        two = aioredis.from_url(infra["REDIS_URL"])
        limiters = [RedisRateLimiter(c, name, rate, max_wait=1e9, clock=clock) for c in (one, two)]
        granted: list[float] = []
        try:
            for n, (advance, count) in enumerate(plan):
                clock.now += advance * window
                for k in range(count):
                    before = list(granted)
                    wait = await limiters[(n + k) % 2].reserve()
                    at = clock.now + wait
                    # Never later than needed: either it goes now, or right after the request
                    # that held the quota leaves the window (or after the previous reservation).
                    if wait > 1e-3:
                        recent = sorted(before)
                        blocker = recent[-limit] + window if len(recent) >= limit else clock.now
                        assert at <= max(blocker, recent[-1] if recent else 0) + 1e-3
                    granted.append(at)
        finally:
            await one.aclose()
            await two.aclose()
        return granted

    granted = asyncio.run(main())
    assert most_in_any_window(granted, window) <= limit


def test_github_hour_bursts_instead_of_being_spaced(infra) -> None:
    """An hourly budget (GitHub's shape, 300/h here to keep the test cheap): the whole hour's
    quota goes without waiting; the next waits for the first to leave the hour, not 3.6 s."""
    clock = Clock()

    async def main() -> tuple[list[float], float]:
        client = aioredis.from_url(infra["REDIS_URL"])
        limiter = RedisRateLimiter(client, f"gh-{next(_names)}", Rate(300, 3600), max_wait=7200, clock=clock)
        try:
            waits = []
            for _ in range(300):
                waits.append(await limiter.reserve())
                clock.now += 0.1  # 30 s for all 300
            return waits, await limiter.reserve()
        finally:
            await client.aclose()

    waits, next_wait = asyncio.run(main())
    assert max(waits) == 0.0
    # The first went at t=0; now it is t=30 s: the 301st waits the rest of the hour.
    assert next_wait == pytest.approx(3600 - 30, abs=0.01)


def test_source_headers_hold_every_process_until_the_reset(infra) -> None:
    """GitHub says remaining 0 (another user of the token spent it): the next slot waits for
    ``X-RateLimit-Reset`` although our own log has room; past the reset it goes at once."""
    clock = Clock()

    async def main() -> tuple[float, float, float]:
        one, two = aioredis.from_url(infra["REDIS_URL"]), aioredis.from_url(infra["REDIS_URL"])
        name = f"hdr-{next(_names)}"
        a = RedisRateLimiter(one, name, Rate(5000, 3600), max_wait=7200, clock=clock)
        b = RedisRateLimiter(two, name, Rate(5000, 3600), max_wait=7200, clock=clock)
        try:
            await a.observe({"x-ratelimit-remaining": "7", "x-ratelimit-reset": str(clock.now + 900)})
            free = await b.reserve()  # remaining > 0: nothing held
            await a.observe({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(clock.now) + 900)})
            held = await b.reserve()
            await a.observe({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "2026-12-05T10:00Z"})
            clock.now += 901
            after = await b.reserve()
            return free, held, after
        finally:
            await one.aclose()
            await two.aclose()

    free, held, after = asyncio.run(main())
    assert free == 0.0
    assert held == pytest.approx(900, abs=1)
    assert after == 0.0


def test_over_max_wait_reserves_nothing(infra) -> None:
    clock = Clock()

    async def main() -> list[float]:
        client = aioredis.from_url(infra["REDIS_URL"])
        limiter = RedisRateLimiter(client, f"daily-{next(_names)}", Rate(50, 86400), max_wait=30, clock=clock)
        try:
            assert [await limiter.reserve() for _ in range(50)] == [0.0] * 50
            refused = []
            for _ in range(2):
                with pytest.raises(RateLimited) as err:
                    await limiter.reserve()
                refused.append(err.value.retry_after)
            clock.now += 86400
            refused.append(await limiter.reserve())
            return refused
        finally:
            await client.aclose()

    first, second, after_a_day = asyncio.run(main())
    assert first == pytest.approx(86400, abs=0.01) and second == pytest.approx(86400, abs=0.01)
    assert after_a_day == 0.0


def test_quota_shapes() -> None:
    assert window_of(Rate(50, 86400)) == (50, 86400)
    assert window_of(Rate(0.5, 1)) == (1, 2.0)
    assert window_of(Rate(2.7, 60)) == (2, 60)
    assert burst_for(Rate(5000, 3600)) == 5000


def test_count_requests_counts_per_context() -> None:
    limiter = NoLimit()

    async def one(n: int) -> int:
        with count_requests() as counter:
            for _ in range(n):
                await limiter.acquire()
                await asyncio.sleep(0)
            return counter[0]

    async def main() -> list[int]:
        return list(await asyncio.gather(one(3), one(5), one(0)))

    assert asyncio.run(main()) == [3, 5, 0]
