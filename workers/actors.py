"""The sync actor, a thin shell around ``Pipeline.run`` (workers/sync.py), and its retry policy.

A job is a list of refs. The pipeline handles each document on its own and reports which ones
failed and why; the job is then *done* for every other ref, and **only the failed refs go
round again**, as a new message of their own on the same queue, so a job of 100 refs with one
failure refetches one document, not 100. How each failed ref goes round depends on its error:

- **a real failure** (a 500, a timeout, an index or database error): retried with exponential
  backoff (1 s → 5 min, jittered), counted: after ``MAX_RETRIES`` retries it is dead-lettered;
- **a wait** (a rate limit, 429, or an outage: 502/503/504 or no connection, at the source, the
  embedder or the index): retried after the ``Retry-After`` the service named (else backing off
  1 s → 10 min), **not counted** against ``MAX_RETRIES``. Waiting has its own bound in time:
  refs that have been waiting for longer than ``MAX_WAIT`` (default 3 days) since their first
  wait are dead-lettered, so a months-long outage still ends in a dead letter. Deletes are the
  exception: a delete waits for its confirming fetch however long the outage lasts (waiting is
  not failing; a failed fetch is never taken for a deletion, and a lost delete is a ghost);
- **a permanent failure** (revoked credentials, a source no longer configured, an input the
  embedder refuses, an id the stores cannot hold): dead-lettered at once.

The retry count, the time waiting and the last real error travel in the message's options
(``retries``, ``waiting_since``, ``waits``, ``last_error``). A dead letter holds exactly the refs
that failed, and its error is the real last error (a wait is named as a rate limit or an outage,
never the other way round); ``vector-sync dead-letters list`` shows it and ``replay`` sends the
refs again with fresh counts. An exception that escapes the pipeline itself (a bug, Redis gone
mid-job) is retried whole by Dramatiq's own Retries middleware, with the same ``MAX_RETRIES``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import dramatiq
from dramatiq import Message
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import compute_backoff, q_name
from dramatiq.middleware import CurrentMessage

from core import coalesce, metrics, queue
from core.documents import Ref
from core.errors import is_permanent, wait_of
from core.queue import ACTOR, BULK_ACTOR, BULK_QUEUE, QUEUE
from workers.sync import Failure, Outcome, Pipeline

log = logging.getLogger("vector_sync.worker")

#: Milliseconds.
MIN_BACKOFF = 1_000
MAX_BACKOFF = 300_000
#: Longest pause between two tries of an outage that named no Retry-After (ms).
MAX_WAIT_BACKOFF = 600_000
#: A job that runs longer than this (ms) is interrupted and retried.
TIME_LIMIT = 15 * 60 * 1000
#: Dramatiq actor priorities: lower runs sooner among a worker's prefetched messages.
LIVE_PRIORITY = 0
BULK_PRIORITY = 100
#: Documents named in a dead letter's or a log line's error summary.
SUMMARY_DOCS = 5


def summary(failures: Iterable[Failure]) -> str:
    items = list(failures)
    text = "; ".join(f"{f.ref.document_id} ({f.stage}): {f.error}" for f in items[:SUMMARY_DOCS])
    if len(items) > SUMMARY_DOCS:
        text += f"; and {len(items) - SUMMARY_DOCS} more"
    return f"{len(items)} document(s) failed: {text}"


class RetryPolicy:
    """Decides, per failed ref, whether it goes round again (and when) or to the dead letters."""

    def __init__(self, broker: RedisBroker, *, max_retries: int, max_wait: float) -> None:
        self.broker = broker
        self.max_retries = max_retries
        self.max_wait = max_wait

    def handle(self, outcome: Outcome, message: Message[Any] | None, now: float | None = None) -> dict[str, int]:
        """Send the failed refs of ``outcome`` on their way; returns refs per fate (for the log)."""
        now = time.time() if now is None else now
        options = dict(message.options) if message is not None else {}
        permanent: list[Failure] = []
        waiting: list[Failure] = []
        failing: list[Failure] = []
        for failure in outcome.failures.values():
            if is_permanent(failure.error):
                permanent.append(failure)
            elif wait_of(failure.error) is not None:
                waiting.append(failure)
            else:
                failing.append(failure)
        fates = {"buried": 0, "retried": 0, "waiting": 0}
        if permanent:
            self._bury(message, permanent, options, f"permanent failure: {summary(permanent)}", now)
            fates["buried"] += len(permanent)
        if failing:
            retries = int(options.get("retries", 0))
            error = summary(failing)
            if retries >= self.max_retries:
                self._bury(message, failing, options, f"retries exhausted ({retries}): {error}", now)
                fates["buried"] += len(failing)
            else:
                _, delay = compute_backoff(retries, factor=MIN_BACKOFF, max_backoff=MAX_BACKOFF)
                self._send(message, failing, {**options, "retries": retries + 1, "last_error": error,
                                              "waiting_since": None, "waits": 0}, delay)
                fates["retried"] += len(failing)
        if waiting:
            since = float(options.get("waiting_since") or now)
            waited = now - since
            deletes = [f for f in waiting if f.ref.op == "delete"]
            others = [f for f in waiting if f.ref.op != "delete"]
            if others and waited > self.max_wait:
                last = options.get("last_error")
                error = (f"gave up waiting after {_duration(waited)} (MAX_WAIT {_duration(self.max_wait)}): "
                         f"{summary(others)}" + (f"; the last real failure before that: {last}" if last else ""))
                self._bury(message, others, {**options, "waited_s": round(waited)}, error, now)
                fates["buried"] += len(others)
                waiting = deletes
            if waiting:
                waits = int(options.get("waits", 0))
                hints = [w.retry_after for f in waiting if (w := wait_of(f.error)) and w.retry_after is not None]
                if hints:
                    delay = int(max(hints) * 1000) + 250
                else:
                    _, delay = compute_backoff(waits, factor=MIN_BACKOFF, max_backoff=MAX_WAIT_BACKOFF)
                # The retry count and the last real error are kept as they were: a wait is not
                # a failure, and must not become the error a dead letter shows.
                self._send(message, waiting, {**options, "waiting_since": since, "waits": waits + 1,
                                              "waited_s": round(waited)}, delay)
                fates["waiting"] += len(waiting)
        return fates

    def _send(self, message: Message[Any] | None, failures: list[Failure], options: dict[str, Any],
              delay: int) -> None:
        for source, refs in Counter(f.ref.source for f in failures).items():
            metrics.sent_round(source, "wait" if options.get("waiting_since") else "retry", refs)
        self.broker.enqueue(_message(message, failures, options), delay=delay)

    def _bury(self, message: Message[Any] | None, failures: list[Failure], options: dict[str, Any],
              error: str, now: float) -> None:
        log.warning("dead-lettered", extra={"refs": len(failures), "error": error[:500]})
        for source, refs in Counter(f.ref.source for f in failures).items():
            metrics.dead_lettered(source, refs)
        queue.bury(self.broker, _message(message, failures, options), error)


def _message(current: Message[Any] | None, failures: list[Failure], options: dict[str, Any]) -> Message[Any]:
    queue_name = q_name(current.queue_name) if current is not None else QUEUE
    actor_name = current.actor_name if current is not None else ACTOR
    keep = {k: v for k, v in options.items()
            if k in ("retries", "waiting_since", "waits", "waited_s", "last_error", "requeue_timestamp",
                     "webhook_at")}
    return Message(queue_name=queue_name, actor_name=actor_name,
                   args=([f.ref.to_dict() for f in failures],), kwargs={}, options=keep)


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds:.0f}s"


def register(broker: RedisBroker, pipeline_factory: Any, *, max_retries: int = 8,
             max_wait: float | None = None) -> Any:
    """Declare the sync actor on ``broker``. ``pipeline_factory()`` returns the Pipeline to use
    (built lazily, inside the worker's event loop). ``max_wait`` defaults to the pipeline's
    ``settings.max_wait``."""
    if not any(isinstance(m, CurrentMessage) for m in broker.middleware):
        broker.add_middleware(CurrentMessage())
    policies: dict[str, RetryPolicy] = {}

    def policy() -> RetryPolicy:
        if "policy" not in policies:
            bound = max_wait if max_wait is not None else pipeline_factory().settings.max_wait
            policies["policy"] = RetryPolicy(broker, max_retries=max_retries, max_wait=bound)
        return policies["policy"]

    async def run_job(refs: list[dict[str, Any]], message: Message[Any] | None) -> None:
        started = time.monotonic()
        queue_name = message.queue_name if message is not None else QUEUE
        pipeline: Pipeline = pipeline_factory()
        try:
            # A ref whose document has a newer event queued is left to that event (core/coalesce.py).
            screened = coalesce.screen(broker.client, [Ref.from_dict(r) for r in refs])
            outcome = await pipeline.run(screened.refs)
            fates = policy().handle(outcome, message) if outcome.failures else {}
        except BaseException:
            metrics.job_done(queue_name, time.monotonic() - started, "error")
            raise
        metrics.job_done(
            queue_name, time.monotonic() - started, "partial" if outcome.failures else "ok",
            message.options.get("webhook_at") if message is not None else None,
            {source: counts["synced"] + counts["metadata_only"] + counts["deleted"]
             for source, counts in outcome.per_source.items()})
        log.info(
            "job done",
            extra={
                "refs": len(refs),
                **dict(outcome.counts),
                "failed": len(outcome.failures),
                "superseded": screened.superseded,
                **fates,
                "retries": (message.options.get("retries", 0) if message is not None else 0),
                "duration_ms": int((time.monotonic() - started) * 1000),
            },
        )
        # Nothing is returned: there is no results backend, and the counts are in the log line
        # above and in source_stats.

    def sync_refs(refs: list[dict[str, Any]]) -> None:
        # Synchronous on purpose: the current message lives in this worker thread's context,
        # which a coroutine scheduled on the shared event loop would not see.
        message = CurrentMessage.get_current_message()
        get_event_loop_thread().run_coroutine(run_job(refs, message))  # type: ignore[union-attr]

    options = dict(broker=broker, max_retries=max_retries, min_backoff=MIN_BACKOFF,
                   max_backoff=MAX_BACKOFF, time_limit=TIME_LIMIT)
    live = dramatiq.actor(sync_refs, actor_name=ACTOR, queue_name=QUEUE, priority=LIVE_PRIORITY, **options)
    # The same job for bulk work; a worker runs prefetched live messages first (lower = sooner).
    dramatiq.actor(sync_refs, actor_name=BULK_ACTOR, queue_name=BULK_QUEUE, priority=BULK_PRIORITY, **options)
    return live
