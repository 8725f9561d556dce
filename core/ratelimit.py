"""A request budget per source, shared by every process through Redis.

GCRA with reservations: each caller reserves the next free slot and sleeps until it, so a
source that reaches its budget *waits* instead of failing its jobs. When the wait would exceed
``max_wait`` the caller is told how long instead (``RateLimited``), so a worker can give its
thread back and retry the message later rather than sleep for half an hour on a 50/day plan.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from core.errors import RateLimited
from core.settings import Rate

# KEYS[1] = bucket key; ARGV = interval seconds, burst, max wait seconds.
# Returns the wait in seconds as a string; a wait above max_wait reserves nothing.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - burst * interval - now
if wait < 0 then wait = 0 end
if wait > max_wait then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return tostring(wait)
"""


def burst_for(rate: Rate) -> int:
    """How many requests may go at once before spacing starts: one.

    Strict spacing keeps every window of the budget's period within the budget, which is what
    rolling-window quotas (Fireflies, Tempo's gateway) count; a burst allowance would let the
    first period overrun by the burst size. Throughput is the same.
    """
    return 1


class RedisRateLimiter:
    """Reserve request slots for one source against a budget shared through Redis."""

    def __init__(self, redis: Any, source: str, rate: Rate, *, max_wait: float = 30.0) -> None:
        self.redis = redis  # a redis.asyncio.Redis
        self.source = source
        self.rate = rate
        self.max_wait = max_wait
        self.key = f"vector-sync:rate:{source}"
        self._script = redis.register_script(_GCRA)
        #: ``time.monotonic()`` until which a caller sleeps for its slot (0: nobody waits); the
        #: CLI's backfill view reads it to say "waiting for the rate budget".
        self.waiting_until = 0.0

    async def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited. Raises RateLimited past ``max_wait``."""
        interval = 1.0 / self.rate.per_second
        wait = float(
            await self._script(keys=[self.key], args=[interval, burst_for(self.rate), self.max_wait])
        )
        if wait > self.max_wait:
            raise RateLimited(
                self.source, f"request budget {self.rate} used up; next slot in {wait:.0f}s", wait
            )
        if wait > 0:
            until = time.monotonic() + wait
            self.waiting_until = max(self.waiting_until, until)
            try:
                await asyncio.sleep(wait)
            finally:
                if self.waiting_until <= until:
                    self.waiting_until = 0.0
        return wait


class NoLimit:
    """A limiter that never waits (for tests of code that is not about budgets)."""

    async def acquire(self) -> float:
        return 0.0
