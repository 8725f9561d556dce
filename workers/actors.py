"""The sync actor, a thin shell around ``Pipeline.run`` (workers/sync.py).

Retry policy: transient failures retry with exponential backoff (1 s → 5 min) up to
``MAX_RETRIES``; a source's rate limit retries after the wait it named and never counts
against that budget (a source at its budget waits, it does not fail its jobs); permanent
failures (revoked credentials, a source no longer configured) go straight to the dead-letter
queue, where status counts them and ``vector-sync dead-letters replay`` brings them back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from core.documents import Ref
from core.errors import RateLimited
from core.queue import ACTOR, BULK_ACTOR, BULK_QUEUE, QUEUE
from workers.sync import Outcome, Pipeline

log = logging.getLogger("vector_sync.worker")

#: Milliseconds.
MIN_BACKOFF = 1_000
MAX_BACKOFF = 300_000
#: A job that runs longer than this (ms) is interrupted and retried.
TIME_LIMIT = 15 * 60 * 1000
#: Dramatiq actor priorities: lower runs sooner among a worker's prefetched messages.
LIVE_PRIORITY = 0
BULK_PRIORITY = 100


class JobFailed(Exception):
    """Raised when some documents of a job failed in a way worth retrying."""


class PermanentJobFailure(Exception):
    """Raised when every failure in a job is permanent: retrying will not help."""


class RateLimitedRetry(dramatiq.Retry):
    """Raised when a source's budget asks us to come back later; not counted as a failure."""


def make_retry_when(max_retries: int) -> Any:
    def retry_when(retries: int, exc: BaseException) -> bool:
        if isinstance(exc, PermanentJobFailure):
            return False
        if isinstance(exc, RateLimitedRetry):
            return True
        return retries < max_retries

    return retry_when


def raise_for(outcome: Outcome) -> None:
    if not outcome.failures:
        return
    summary = "; ".join(f"{doc}: {exc}" for doc, (exc, _) in list(outcome.failures.items())[:5])
    if outcome.all_permanent:
        raise PermanentJobFailure(summary)
    wait = outcome.retry_after
    if wait is not None and all(isinstance(e, RateLimited) for e, _ in outcome.failures.values()):
        raise RateLimitedRetry(message=summary, delay=int(wait * 1000) + 250)
    raise JobFailed(f"{len(outcome.failures)} document(s) failed: {summary}")


def register(broker: RedisBroker, pipeline_factory: Any, *, max_retries: int = 8) -> Any:
    """Declare the sync actor on ``broker``. ``pipeline_factory()`` returns the Pipeline to use
    (built lazily, inside the worker's event loop)."""

    async def sync_refs(refs: list[dict[str, Any]]) -> None:
        started = time.monotonic()
        pipeline: Pipeline = pipeline_factory()
        outcome = await pipeline.run([Ref.from_dict(r) for r in refs])
        log.info(
            "job done",
            extra={
                "refs": len(refs),
                **dict(outcome.counts),
                "failed": len(outcome.failures),
                "duration_ms": int((time.monotonic() - started) * 1000),
            },
        )
        raise_for(outcome)
        # Nothing is returned: there is no results backend, and the counts are in the log line
        # above and in source_stats.

    options = dict(broker=broker, max_retries=max_retries, retry_when=make_retry_when(max_retries),
                   min_backoff=MIN_BACKOFF, max_backoff=MAX_BACKOFF, time_limit=TIME_LIMIT)
    live = dramatiq.actor(sync_refs, actor_name=ACTOR, queue_name=QUEUE, priority=LIVE_PRIORITY, **options)
    # The same job for bulk work; a worker runs prefetched live messages first (lower = sooner).
    dramatiq.actor(sync_refs, actor_name=BULK_ACTOR, queue_name=BULK_QUEUE, priority=BULK_PRIORITY, **options)
    return live
