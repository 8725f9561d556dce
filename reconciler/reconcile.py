"""One reconciler pass: discover scopes, claim the due ones, list changes, enqueue, advance.

Claiming is a lease owned by the process: inside one short transaction the due rows are locked
with ``FOR UPDATE SKIP LOCKED`` and leased (``lease_owner`` = this process's heartbeat name,
``lease_until`` = now + ``LEASE``). The lease is renewed every ``LEASE_RENEW`` seconds while the
pass runs (and on every saved page), and released when the pass ends. Another replica skips a
leased scope, and takes it once the lease runs out or the owner's heartbeat goes silent
(``HEARTBEAT_TIMEOUT``): a reconciler killed mid-pass holds its scopes for about a minute.

Budgets (issue 15): every pass counts the requests it makes (``core.ratelimit.count_requests``)
into ``scope_costs``, saved with each checkpoint, so an interrupted pass still adds up to its whole
cost. A finished scope is next due after ``max(POLL_INTERVAL, achievable interval)``
(core/budget.py): when the budget cannot pay for the configured schedule, the reconciler stretches
it, logs it once, and status says so. A pass that runs out of budget (the limiter's wait exceeds
its ``max_wait``) is *paused*, not failed: it keeps its checkpoint and pays nothing twice, and
the scope falls due again when the budget has a slot, so a whole history on a 50/day plan is
swept slowly, page by page, never from scratch.

A scope's cursor is the newest source ``updated_at`` a *finished* pass enqueued; the next pass
lists from ``cursor - RECONCILE_OVERLAP`` (source clocks, minute-precision queries and
eventually consistent search all blur the edge). Within a pass, every page is enqueued before its
checkpoint is saved, so a crash resumes after the last enqueued page and never skips one.

Pruning (``PRUNE_INTERVAL``, daily by default) lists a scope's live ids and enqueues deletes for
the documents we hold that the source no longer lists — only those indexed before the listing
began (a document indexed during the crawl may be missing from it), and each delete is still
confirmed by a fetch in the worker, so a failed fetch never deletes anything. A listing that
fails part-way prunes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from psycopg_pool import ConnectionPool

from core import access, budget, queue, scopes, state
from core.runs import finish_run, progress_run, start_run
from core.documents import Ref, doc_id
from core.errors import RateLimited, VectorSyncError
from core.ratelimit import count_requests
from core.heartbeat import Outages
from core.runtime import Services, SourceSet
from core.settings import Settings
from core.sources import Scope

log = logging.getLogger("vector_sync.reconciler")

#: Seconds a claimed scope stays leased to this replica without a renewal.
LEASE = 60.0
#: Seconds between two renewals of the leases a running pass holds.
LEASE_RENEW = LEASE / 4
#: Scopes of one source reconciled at once (each source's request budget still applies).
SCOPE_CONCURRENCY = 4
#: Seconds between scope discoveries per source (at most; also on start).
DISCOVERY_INTERVAL = 600.0
#: Seconds before a failed prune listing is first tried again (less when PRUNE_INTERVAL is
#: shorter); each further failure in a row doubles it, up to PRUNE_INTERVAL.
PRUNE_RETRY = 300.0


@dataclass(frozen=True)
class ClaimedScope:
    source: str
    key: str
    name: str
    cursor: float | None
    checkpoint: str | None
    pass_since: float | None
    pass_high_water: float | None
    prune_due: bool


def claim_due(pool: ConnectionPool, sources: list[str], limit: int = 32, *, owner: str = "",
              heartbeat_timeout: float = 60.0) -> list[ClaimedScope]:
    """Lease up to ``limit`` due scopes to ``owner``: those nobody holds, whose lease ran out,
    or whose owner's heartbeat is older than ``heartbeat_timeout``."""
    if not sources:
        return []
    with pool.connection() as conn, conn.transaction():
        rows = conn.execute(
            """SELECT source, key, name, cursor, checkpoint, pass_since, pass_high_water,
                      (next_prune_at IS NOT NULL AND next_prune_at <= now())
               FROM scopes
               WHERE active AND source = ANY(%(sources)s) AND next_due_at <= now()
                 AND NOT """ + scopes.BACKFILL_LISTING + """
                 AND (lease_until IS NULL OR lease_until <= now()
                      OR lease_owner IN (SELECT process FROM heartbeats
                                         WHERE beat_at < now() - make_interval(secs => %(timeout)s)))
               ORDER BY next_due_at
               LIMIT %(limit)s
               FOR UPDATE SKIP LOCKED""",
            {"sources": sources, "limit": limit, "timeout": heartbeat_timeout},
        ).fetchall()
        for row in rows:
            conn.execute(
                """UPDATE scopes SET lease_owner = %s, lease_until = now() + make_interval(secs => %s),
                       last_attempt_at = now()
                   WHERE source = %s AND key = %s""",
                (owner, LEASE, row[0], row[1]),
            )
    return [ClaimedScope(*row) for row in rows]


def renew_leases(pool: ConnectionPool, owner: str, scopes: list[tuple[str, str]]) -> int:
    """Extend ``owner``'s leases on ``scopes`` (source, key) by ``LEASE``; returns how many."""
    if not scopes:
        return 0
    with pool.connection() as conn:
        cur = conn.execute(
            """UPDATE scopes SET lease_until = now() + make_interval(secs => %s)
               WHERE lease_owner = %s AND (source, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
            (LEASE, owner, [s for s, _ in scopes], [k for _, k in scopes]),
        )
        return cur.rowcount


def release_leases(pool: ConnectionPool, owner: str, scopes: list[tuple[str, str]]) -> int:
    """Give back whatever of ``scopes`` ``owner`` still holds (a pass that ended in an error)."""
    if not scopes:
        return 0
    with pool.connection() as conn:
        cur = conn.execute(
            """UPDATE scopes SET lease_owner = NULL, lease_until = NULL
               WHERE lease_owner = %s AND (source, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
            (owner, [s for s, _ in scopes], [k for _, k in scopes]),
        )
        return cur.rowcount


class Reconciler:
    def __init__(self, settings: Settings, services: Services, sources: SourceSet, owner: str) -> None:
        self.settings = settings
        self.services = services
        self.pool = services.pool
        self.sources = sources
        self.owner = owner
        #: Where database and broker outages are reported (the loop sets the heartbeat's).
        self.outages: Outages | None = None
        self._discovered_at: dict[str, float] = {}
        #: source → the interval its schedule was last stretched to (0: not stretched), so the
        #: change is logged once, not after every scope's pass.
        self._stretched: dict[str, float] = {}

    async def tick(self) -> int:
        """Discover, then reconcile every due scope; returns how many scopes were processed."""
        configured = self.sources.configured()
        await self.discover(configured)
        claimed = await asyncio.to_thread(claim_due, self.pool, configured, owner=self.owner,
                                          heartbeat_timeout=self.settings.heartbeat_timeout)
        if not claimed:
            return 0
        by_source: dict[str, list[ClaimedScope]] = {}
        for scope in claimed:
            by_source.setdefault(scope.source, []).append(scope)
        held = [(c.source, c.key) for c in claimed]
        renewer = asyncio.ensure_future(self._renew(held))
        try:
            await asyncio.gather(*(self._reconcile_source(items) for items in by_source.values()))
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            # A pass that finished released its scope; one that failed part-way (the database
            # went away under it) may still hold it: give it back so it is due again at once.
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.to_thread(release_leases, self.pool, self.owner, held))
        return len(claimed)

    async def _renew(self, held: list[tuple[str, str]]) -> None:
        """Renew this pass's leases until cancelled; a failed renewal is retried next time
        (the loop reports the outage that caused it)."""
        while True:
            await asyncio.sleep(LEASE_RENEW)
            try:
                await asyncio.to_thread(renew_leases, self.pool, self.owner, held)
            except Exception as exc:
                log.debug("lease renewal failed: %s", exc)

    async def discover(self, sources: list[str], *, force: bool = False) -> None:
        loop = asyncio.get_running_loop()
        for name in sources:
            last = self._discovered_at.get(name)
            if not force and last is not None and loop.time() - last < DISCOVERY_INTERVAL:
                continue
            self._discovered_at[name] = loop.time()
            try:
                found = await self.sources.get(name).scopes()
            except VectorSyncError as exc:
                log.warning("scope discovery failed", extra={"source": name, "error": str(exc)})
                await asyncio.to_thread(state.bump_source_stats, self.pool, name, {}, f"discovery: {exc}")
                continue
            new = await asyncio.to_thread(
                scopes.upsert_discovered, self.pool, self.settings.source(name), found
            )
            if new:
                log.info("scopes discovered", extra={"source": name, "new": new})

    async def _reconcile_source(self, items: list[ClaimedScope]) -> None:
        semaphore = asyncio.Semaphore(SCOPE_CONCURRENCY)

        async def one(item: ClaimedScope) -> None:
            async with semaphore:
                done = await self.reconcile_scope(item)
                if item.prune_due and not done.get("deferred_to_backfill"):  # a backfill lists it
                    await self.prune_scope(item)

        await asyncio.gather(*(one(item) for item in items))
        await self.retry_deferred(items[0].source)

    async def retry_deferred(self, source: str) -> int:
        """Ask again for documents that were not ready (however long they take to be)."""
        waiting = await asyncio.to_thread(state.deferred_ids, self.pool, source)
        refs = [Ref(source=source, id=d.split(":", 1)[1], scope=scope) for d, scope in waiting]
        if refs:
            await asyncio.to_thread(queue.enqueue, self.services.broker, refs)
            log.info("deferred documents asked again", extra={"source": source, "count": len(refs)})
        return len(refs)

    async def reconcile_scope(self, item: ClaimedScope) -> dict[str, Any]:
        source = self.sources.get(item.source)
        if await asyncio.to_thread(scopes.backfill_listing, self.pool, item.source, item.key):
            # Claimed before a backfill of it began: the backfill lists it (never two at once).
            await asyncio.to_thread(scopes.defer_to_backfill, self.pool, item.source, item.key)
            return {"deferred_to_backfill": True}
        resuming = item.checkpoint is not None
        since = item.pass_since if resuming else (
            None if item.cursor is None else item.cursor - self.settings.reconcile_overlap
        )
        high = item.pass_high_water if resuming else None
        counters: dict[str, Any] = {"pages": 0, "refs": 0, "resumed": resuming, "since": since}
        run_id = await asyncio.to_thread(start_run, self.pool, "reconcile", item.source, item.key, self.owner,
                                         {"since": since, "resumed": resuming})
        scope = Scope(item.source, item.key, item.name)
        with count_requests() as spent:
            return await self._run_pass(item, source, scope, since, high, counters, run_id, spent)

    async def _run_pass(self, item: ClaimedScope, source: Any, scope: Scope, since: float | None,
                        high: float | None, counters: dict[str, Any], run_id: int,
                        spent: list[int]) -> dict[str, Any]:
        saved = [0]  # requests already added to scope_costs

        def unsaved() -> int:
            delta = spent[0] - saved[0]
            saved[0] = spent[0]
            return delta

        try:
            async for page in source.changes(scope, since, item.checkpoint):
                refs = [_with_scope(ref, item.key) for ref in page.refs]
                # A first full pass is bulk work: it must not delay the webhooks behind it.
                await asyncio.to_thread(queue.enqueue, self.services.broker, refs, bulk=since is None)
                if page.high_water is not None:
                    high = page.high_water if high is None else max(high, page.high_water)
                counters["pages"] += 1
                counters["refs"] += len(refs)
                await asyncio.to_thread(self._save_checkpoint, item, page.checkpoint, since, high, unsaved())
                await asyncio.to_thread(progress_run, self.pool, run_id, counters)
                if await asyncio.to_thread(scopes.backfill_listing, self.pool, item.source, item.key):
                    # A backfill of this scope began meanwhile: stop here (checkpoint kept); the
                    # backfill's end moves the cursor past what it listed.
                    await asyncio.to_thread(scopes.defer_to_backfill, self.pool, item.source, item.key)
                    counters["deferred_to_backfill"] = True
                    await asyncio.to_thread(finish_run, self.pool, run_id, counters)
                    return counters
            await self._refresh_access(source, scope, counters)
        except asyncio.CancelledError:
            # Stopping: hand the scope back at once (its checkpoint is kept) instead of holding
            # the lease, and close the run as abandoned. Synchronous: the task is being cancelled.
            self._release(item)
            budget.add_progress(self.pool, item.source, item.key, unsaved(), 0)
            with self.pool.connection() as conn:
                conn.execute("UPDATE runs SET status = 'abandoned', finished_at = now(), "
                             "error = 'stopped before it finished' WHERE id = %s", (run_id,))
            raise
        except RateLimited as exc:
            # The budget is used up for longer than a pass waits: pause here, keeping the
            # checkpoint, and come back when a slot is free. Not a failure: nothing is wrong.
            wait = max(exc.retry_after or 0.0, 1.0)
            counters["paused_for_s"] = round(wait, 1)
            await asyncio.to_thread(budget.pause, self.pool, item.source, item.key, unsaved(),
                                    0, wait)
            await asyncio.to_thread(self._pause, item, wait, run_id, counters)
            log.info("reconcile paused for the request budget",
                     extra={"source": item.source, "scope": item.key, "resumes_in_s": round(wait)})
            return counters
        except Exception as exc:  # any failure: record, keep the checkpoint, retry with backoff
            message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, VectorSyncError) else str(exc)
            # Redis or Postgres down: one outage line for the process, not one per scope.
            if self.outages is None or self.outages.report(exc) is None:
                log.warning("reconcile failed", extra={"source": item.source, "scope": item.key, "error": message})
            await asyncio.to_thread(budget.add_progress, self.pool, item.source, item.key, unsaved(), 0)
            await asyncio.to_thread(self._fail, item, message)
            await asyncio.to_thread(finish_run, self.pool, run_id, counters, message)
            return counters
        cursor = item.cursor if high is None else max(high, item.cursor or high)
        counters["cursor"] = cursor
        counters["requests"] = await asyncio.to_thread(
            budget.finish_pass, self.pool, item.source, item.key, unsaved(), 0, first=item.cursor is None)
        await asyncio.to_thread(self._succeed, item, cursor)
        await asyncio.to_thread(finish_run, self.pool, run_id, counters)
        log.info("reconciled", extra={"source": item.source, "scope": item.key,
                                      "pages": counters["pages"], "refs": counters["refs"]})
        return counters

    async def _refresh_access(self, source: Any, scope: Scope, counters: dict[str, Any]) -> None:
        """Membership refresh (issue 11): a source that reports a scope's own access (a private
        Slack channel's members) has it compared with what was recorded; a change re-syncs the
        scope's documents, so a missed membership event is repaired each pass."""
        current = getattr(source, "scope_access", None)
        if current is None:
            return
        members = await current(scope)
        if members is None:
            return
        refs = await asyncio.to_thread(access.source_access_refs, self.pool, scope.source, scope.key, members)
        if refs is None:
            return
        if refs:
            await asyncio.to_thread(queue.enqueue, self.services.broker, refs)
            counters["access_resync"] = len(refs)
            log.info("scope access changed: re-syncing its documents",
                     extra={"source": scope.source, "scope": scope.key, "count": len(refs)})
        await asyncio.to_thread(access.record_source_access, self.pool, scope.source, scope.key, members)

    async def prune_scope(self, item: ClaimedScope) -> dict[str, Any]:
        source = self.sources.get(item.source)
        run_id = await asyncio.to_thread(start_run, self.pool, "prune", item.source, item.key, self.owner)
        started = datetime.now(timezone.utc)
        counters: dict[str, Any] = {"live": 0, "held": 0, "missing": 0, "spared": 0}
        try:
            live = {doc_id(item.source, i) async for i in source.live_ids(Scope(item.source, item.key, item.name))}
        except Exception as exc:  # a partial listing must never prune
            message = f"listing failed, nothing pruned: {exc}"
            await asyncio.to_thread(finish_run, self.pool, run_id, counters, message)
            await asyncio.to_thread(self._schedule_prune, item, retry=True)
            return counters
        held = await asyncio.to_thread(state.live_document_ids, self.pool, item.source, item.key)
        missing = [d for d in held if d not in live]
        stale = await asyncio.to_thread(state.indexed_before, self.pool, missing, started)
        refs = [Ref(source=item.source, id=d.split(":", 1)[1], scope=item.key, op="delete") for d in stale]
        if refs:
            await asyncio.to_thread(queue.enqueue, self.services.broker, refs)
        counters.update(live=len(live), held=len(held), missing=len(missing), spared=len(missing) - len(stale),
                        deletes_enqueued=len(refs))
        await asyncio.to_thread(finish_run, self.pool, run_id, counters)
        await asyncio.to_thread(self._schedule_prune, item)
        log.info("pruned", extra={"source": item.source, "scope": item.key, **counters})
        return counters

    # --- scope row updates ------------------------------------------------------------------

    def _save_checkpoint(self, item: ClaimedScope, checkpoint: str | None, since: float | None,
                         high: float | None, requests: int = 0) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                """INSERT INTO scope_costs (source, key, pass_requests, pass_pages) VALUES (%s, %s, %s, 1)
                   ON CONFLICT (source, key) DO UPDATE SET
                       pass_requests = scope_costs.pass_requests + excluded.pass_requests,
                       pass_pages = scope_costs.pass_pages + 1, paused_until = NULL, updated_at = now()""",
                (item.source, item.key, requests),
            )
            conn.execute(
                """UPDATE scopes SET checkpoint = %s, pass_since = %s, pass_high_water = %s,
                       lease_until = CASE WHEN lease_owner = %s
                                     THEN now() + make_interval(secs => %s) ELSE lease_until END
                   WHERE source = %s AND key = %s""",
                (checkpoint, since, high, self.owner, LEASE, item.source, item.key),
            )

    def _succeed(self, item: ClaimedScope, cursor: float | None) -> None:
        poll = self.interval(item.source)
        with self.pool.connection() as conn:
            conn.execute(
                """UPDATE scopes SET cursor = %s, checkpoint = NULL, pass_since = NULL,
                       pass_high_water = NULL, last_success_at = now(), last_error = NULL,
                       next_due_at = now() + make_interval(secs => %s),
                       next_prune_at = coalesce(next_prune_at, now() + make_interval(secs => %s)),
                       lease_owner = NULL, lease_until = NULL
                   WHERE source = %s AND key = %s""",
                (cursor, poll, self.settings.prune_interval, item.source, item.key),
            )

    def interval(self, source: str) -> float:
        """The source's poll interval, stretched to what its budget can pay (core/budget.py)."""
        report = budget.source_report(self.pool, self.settings, source)
        effective = float(report["effective_interval_s"])
        stretched = effective if report["stretched"] else 0.0
        if self._stretched.get(source, 0.0) != stretched:
            self._stretched[source] = stretched
            if stretched:
                log.warning("schedule stretched to fit the request budget",
                            extra={"source": source, "interval_s": effective, "reason": report["warning"]})
            else:
                log.info("schedule back to its configured interval",
                         extra={"source": source, "interval_s": effective})
        return effective

    def _pause(self, item: ClaimedScope, wait: float, run_id: int, counters: dict[str, Any]) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("""UPDATE scopes SET next_due_at = now() + make_interval(secs => %s),
                                lease_owner = NULL, lease_until = NULL
                            WHERE source = %s AND key = %s""", (wait, item.source, item.key))
            conn.execute("""UPDATE runs SET status = 'abandoned', finished_at = now(), progress_at = now(),
                                counters = %s::jsonb, error = %s WHERE id = %s""",
                         (json.dumps(counters), f"paused: request budget used up; resumes in {wait:.0f}s",
                          run_id))

    def _release(self, item: ClaimedScope) -> None:
        with self.pool.connection() as conn:
            conn.execute("UPDATE scopes SET next_due_at = now(), lease_owner = NULL, lease_until = NULL "
                         "WHERE source = %s AND key = %s", (item.source, item.key))

    def _fail(self, item: ClaimedScope, message: str) -> None:
        poll = self.settings.source(item.source).poll_interval
        # Retry sooner than the next poll, with jitter, but not in a tight loop.
        retry = min(poll, 60.0) * random.uniform(0.8, 1.2)
        with self.pool.connection() as conn:
            conn.execute(
                """UPDATE scopes SET last_error = %s, last_error_at = now(),
                       next_due_at = now() + make_interval(secs => %s),
                       lease_owner = NULL, lease_until = NULL
                   WHERE source = %s AND key = %s""",
                (message[:2000], retry, item.source, item.key),
            )

    def _schedule_prune(self, item: ClaimedScope, *, retry: bool = False) -> None:
        """Set the scope's next prune: ``PRUNE_INTERVAL`` after a success; after a failed
        listing, a retry that follows ``PRUNE_INTERVAL`` too: the first after
        ``min(PRUNE_INTERVAL, PRUNE_RETRY)``, doubling with each failure in a row (counted from
        the scope's prune runs since its last success), never later than ``PRUNE_INTERVAL``."""
        interval = self.settings.prune_interval
        with self.pool.connection() as conn:
            delay = interval
            if retry:
                row = conn.execute(
                    """SELECT count(*) FROM runs
                       WHERE kind = 'prune' AND source = %(source)s AND scope = %(scope)s
                         AND status = 'failed'
                         AND id > coalesce((SELECT max(id) FROM runs
                                            WHERE kind = 'prune' AND source = %(source)s
                                              AND scope = %(scope)s AND status = 'succeeded'), 0)""",
                    {"source": item.source, "scope": item.key},
                ).fetchone()
                delay = prune_retry_delay(interval, int(row[0]) if row else 1)
            conn.execute(
                """UPDATE scopes SET next_prune_at = now() + make_interval(secs => %s),
                       last_pruned_at = CASE WHEN %s THEN last_pruned_at ELSE now() END
                   WHERE source = %s AND key = %s""",
                (delay, retry, item.source, item.key),
            )


def prune_retry_delay(interval: float, failures: int) -> float:
    """Seconds until a failed prune listing is tried again, after ``failures`` in a row:
    ``min(interval, PRUNE_RETRY) * 2**(failures - 1)``, at most ``interval``, with jitter
    downwards (so replicas spread out and the bound holds)."""
    base = min(interval, PRUNE_RETRY) * 2 ** min(max(failures, 1) - 1, 30)
    return min(interval, base) * random.uniform(0.8, 1.0)


def _with_scope(ref: Ref, scope: str) -> Ref:
    if ref.scope:
        return ref
    return Ref(source=ref.source, id=ref.id, scope=scope, op=ref.op, event_at=ref.event_at, document=ref.document)


def due_in(pool: ConnectionPool, sources: list[str]) -> float | None:
    """Seconds until the next scope falls due (None when there is none). A scope leased to a
    live pass falls due when its lease runs out at the earliest."""
    if not sources:
        return None
    with pool.connection() as conn:
        row = conn.execute(
            """SELECT min(CASE WHEN lease_until > now() THEN greatest(next_due_at, lease_until)
                               ELSE next_due_at END)
               FROM scopes WHERE active AND source = ANY(%s)""", (sources,)
        ).fetchone()
    if not row or row[0] is None:
        return None
    return max(0.0, (row[0] - datetime.now(timezone.utc)).total_seconds())


def abandon_dead_runs(pool: ConnectionPool, heartbeat_timeout: float) -> int:
    """Mark running runs whose owner's heartbeat is gone as abandoned (resumable)."""
    with pool.connection() as conn:
        cur = conn.execute(
            """UPDATE runs SET status = 'abandoned', finished_at = now(),
                   error = coalesce(error, 'its process stopped before it finished')
               WHERE status = 'running' AND kind <> 'backfill'
                 AND progress_at < now() - make_interval(secs => %s)
                 AND (owner IS NULL OR owner NOT IN (
                      SELECT process FROM heartbeats
                      WHERE beat_at > now() - make_interval(secs => %s)))""",
            (heartbeat_timeout, heartbeat_timeout),
        )
        return cur.rowcount

