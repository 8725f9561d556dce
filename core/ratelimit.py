"""A request budget per source, shared by every process through Redis.

A sliding-window log with reservations: each caller reserves the earliest moment at which its
request keeps *every* window of the budget's length within the quota, and sleeps until then.
So a source may burst (GitHub's 5,000/h can go at once in the first minutes of the hour instead
of one every 0.72 s) while no window of ``rate.period`` seconds, wherever it starts, ever holds
more than ``rate.limit`` requests: what rolling-window quotas (Fireflies, Tempo's gateway) count,
and stricter than a fixed hourly reset (GitHub), which it therefore also respects.

The log is a sorted set in Redis (score: the reserved moment), trimmed to the last ``limit``
reservations: the new request's moment is ``max(now, last reserved, E[n - limit] + period)``,
so the ``limit`` newest reservations always span more than one window. The clock is Redis's
(``TIME``), shared by every process.

When the source itself says the budget is spent (``X-RateLimit-Remaining: 0`` with an epoch
``X-RateLimit-Reset``, GitHub's headers), ``observe`` holds every process's next reservation
until that reset, whatever the local log says (another token user may have spent it).

A source that reaches its budget *waits* instead of failing its jobs. When the wait would exceed
``max_wait`` the caller is told how long instead (``RateLimited``), so a worker can give its
thread back and retry the message later rather than sleep for half a day on a 50/day plan.

``count_requests()`` counts the slots taken inside a block (the reconciler's pass cost,
core/budget.py): a context variable, so concurrent passes of one source count apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import Iterator
from typing import Any

from core.errors import RateLimited
from core.settings import Rate

# KEYS[1] = log (sorted set), KEYS[2] = its sequence counter, KEYS[3] = hold-until (epoch).
# ARGV = limit, window seconds, max wait seconds, now ('' = Redis TIME; tests pass a clock).
# Returns the wait in seconds as a string; a wait above max_wait reserves nothing.
_WINDOW = """
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
local at = now
local hold = tonumber(redis.call('GET', KEYS[3]) or '0')
if hold > at then at = hold end
if n > 0 then
  local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  if last > at then at = last end
  if n >= limit then
    local kth = tonumber(redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')[2])
    -- a microsecond past the window, so float rounding never puts kth back inside it
    if kth + window + 0.000001 > at then at = kth + window + 0.000001 end
  end
end
local wait = at - now
if wait > max_wait then return tostring(wait) end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], at, tostring(seq))
if n + 1 > limit then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - limit) end
local ttl = math.ceil((wait + window) * 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return tostring(wait)
"""

#: The requests counted by ``count_requests`` in this context (None: nobody counts).
_COUNTER: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("vector_sync_requests", default=None)


@contextlib.contextmanager
def count_requests() -> Iterator[list[int]]:
    """Count the slots taken (requests sent, retries included) in this block; ``counter[0]``."""
    counter = [0]
    token = _COUNTER.set(counter)
    try:
        yield counter
    finally:
        _COUNTER.reset(token)


def _count() -> None:
    counter = _COUNTER.get()
    if counter is not None:
        counter[0] += 1


def window_of(rate: Rate) -> tuple[int, float]:
    """The quota as (requests, window seconds): ``50/day`` → (50, 86400); a fractional limit is
    rounded down, and one below 1 (``0.5/s``) becomes 1 per a longer window (1 per 2 s)."""
    if rate.limit < 1:
        return 1, rate.period / rate.limit
    return int(math.floor(rate.limit)), rate.period


def burst_for(rate: Rate) -> int:
    """How many requests may go at once: the whole window's quota. The sliding window keeps
    every window of the budget's period within the budget all the same."""
    return window_of(rate)[0]


class RedisRateLimiter:
    """Reserve request slots for one source against a budget shared through Redis."""

    def __init__(self, redis: Any, source: str, rate: Rate, *, max_wait: float = 30.0,
                 clock: Any = None) -> None:
        self.redis = redis  # a redis.asyncio.Redis
        self.source = source
        self.rate = rate
        self.max_wait = max_wait
        self.limit, self.window = window_of(rate)
        base = f"vector-sync:window:{source}"
        self.keys = [base, f"{base}:seq", f"{base}:hold"]
        self.key = base  # the log: deleting it frees the budget (tests)
        #: None: Redis's clock (production); a callable returning epoch seconds (tests).
        self.clock = clock
        self._script = redis.register_script(_WINDOW)
        #: ``time.monotonic()`` until which a caller sleeps for its slot (0: nobody waits); the
        #: CLI's backfill view reads it to say "waiting for the rate budget".
        self.waiting_until = 0.0

    async def reserve(self) -> float:
        """Reserve the next slot without sleeping; returns its wait in seconds, or raises
        RateLimited past ``max_wait`` (nothing reserved then)."""
        now = "" if self.clock is None else repr(float(self.clock()))
        wait = float(await self._script(keys=self.keys, args=[self.limit, self.window, self.max_wait, now]))
        if wait > self.max_wait:
            raise RateLimited(
                self.source, f"request budget {self.rate} used up; next slot in {wait:.0f}s", wait
            )
        return wait

    async def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited. Raises RateLimited past ``max_wait``."""
        wait = await self.reserve()
        _count()
        if wait > 0:
            until = time.monotonic() + wait
            self.waiting_until = max(self.waiting_until, until)
            try:
                await asyncio.sleep(wait)
            finally:
                if self.waiting_until <= until:
                    self.waiting_until = 0.0
        return wait

    async def observe(self, headers: Any) -> None:
        """Honour the source's own account: ``X-RateLimit-Remaining: 0`` with an epoch
        ``X-RateLimit-Reset`` holds every process's next slot until that reset."""
        remaining, reset = headers.get("x-ratelimit-remaining"), headers.get("x-ratelimit-reset")
        if remaining is None or reset is None:
            return
        try:
            left, until = int(str(remaining).strip()), float(str(reset).strip())
        except ValueError:
            return
        now = time.time() if self.clock is None else float(self.clock())
        # An epoch within a window or two from now (Jira's reset is a date; OpenAI's a duration).
        if left > 0 or not now < until <= now + 2 * self.window + 60:
            return
        await self.redis.set(self.keys[2], repr(until), px=math.ceil((until - now) * 1000) + 1000)


class NoLimit:
    """A limiter that never waits (for tests of code that is not about budgets)."""

    async def acquire(self) -> float:
        _count()
        return 0.0
