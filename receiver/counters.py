"""Webhook counters, aggregated in memory and written to ``source_stats`` once a second.

A webhook costs no Postgres write: the handler bumps a tally here, and a task in the receiver's
lifespan writes every source's tally in one transaction each ``FLUSH_INTERVAL_S`` and once more
at shutdown (``kill -TERM``: uvicorn runs the lifespan's exit). Rejections are aggregated the
same way: a flood of forged webhooks must not turn into a flood of writes. What a crash
(``kill -9``) or an unreachable Postgres costs: at most the last interval's counts are lost on a
crash; while Postgres is down the tallies keep adding up and are written when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator

from psycopg_pool import ConnectionPool

from core import state
from core.state import WebhookTally

log = logging.getLogger("vector_sync.receiver")

#: Seconds between two writes of the counters.
FLUSH_INTERVAL_S = 1.0


class WebhookCounters:
    """Per-source tallies since the last flush. ``received``/``rejected`` run on the event loop;
    ``flush`` may run in any thread (a lock guards the swap)."""

    def __init__(self) -> None:
        self._tallies: dict[str, WebhookTally] = {}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time, so counts are written in order

    def received(self, source: str) -> None:
        now = time.time()
        with self._lock:
            tally = self._tallies.get(source)
            if tally is None:
                tally = self._tallies[source] = WebhookTally()
            tally.received += 1
            tally.last_at = now

    def rejected(self, source: str, message: str) -> None:
        now = time.time()
        with self._lock:
            tally = self._tallies.get(source)
            if tally is None:
                tally = self._tallies[source] = WebhookTally()
            tally.rejected += 1
            tally.last_rejection = message
            tally.last_rejection_at = now

    def pending(self) -> int:
        with self._lock:
            return sum(t.received + t.rejected for t in self._tallies.values())

    def flush(self, pool: ConnectionPool) -> None:
        """Write what accumulated; on failure put it back (merged with what came since) and
        raise, so the next flush writes it."""
        with self._flushing:
            with self._lock:
                taken, self._tallies = self._tallies, {}
            if not taken:
                return
            try:
                state.record_webhooks(pool, taken)
            except BaseException:
                with self._lock:
                    for source, tally in taken.items():
                        if source in self._tallies:
                            tally.merge(self._tallies[source])
                        self._tallies[source] = tally
                raise


@contextlib.asynccontextmanager
async def flushing(counters: WebhookCounters, pool: ConnectionPool,
                   interval: float = FLUSH_INTERVAL_S) -> AsyncIterator[None]:
    """Flush ``counters`` every ``interval`` seconds while the block runs, and once at its end."""
    stop = asyncio.Event()

    async def loop() -> None:
        failing = False
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            try:
                await asyncio.to_thread(counters.flush, pool)
            except Exception as exc:
                if not failing:  # one line per outage, not one a second
                    log.error("webhook counters not written (kept, retried every %gs): %s: %s",
                              interval, type(exc).__name__, exc)
                failing = True
            else:
                if failing:
                    log.info("webhook counters written again")
                failing = False

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task  # its last round is the shutdown flush
        if counters.pending():
            log.error("webhook counters lost at shutdown (Postgres unreachable): %d", counters.pending())
