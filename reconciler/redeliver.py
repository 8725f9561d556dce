"""GitHub gap repair: redeliver the hook's failed deliveries on a short cadence.

GitHub never sends a failed webhook again by itself, so a delivery our receiver missed (it was
down, answered 503 while Redis was, or the request never reached it) would wait for the next
poll (``GITHUB_POLL_INTERVAL``, 30 minutes by default). With ``GITHUB_HOOK`` set, every
``GITHUB_REDELIVERY_INTERVAL`` (60 s) one reconciler lists the hook's recent deliveries (one
request per 100, read back to where the last run looked, less ``OVERLAP``) and, for each
delivery of which no attempt succeeded, asks GitHub to send it again: same bytes, same
``X-GitHub-Delivery``, so the receiver verifies and de-duplicates it as any other. When GitHub
refuses (a 4xx: the delivery is past its retention, say), the repair reads the delivery's stored
payload and enqueues the documents it named instead.

- **Never twice:** each delivery GUID is claimed (``deliveries`` table, under the name
  ``CLAIMS``, for ``CLAIM_TTL``) before anything is done for it; a claimed one is skipped by
  every later run and every other reconciler. A repair that raises before it finished with a
  delivery gives its claim back.
- **One at a time:** the run is leased, like a scope (``kv`` row ``KEY``): a reconciler takes it
  when it is due and nobody holds it (or the holder's lease ran out, or its heartbeat went
  silent), and gives it back with the next due time.
- **Counted:** the same row keeps the totals (redelivered, enqueued instead), the last run, its
  error if any; ``core.webhookhealth`` shows them in status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from psycopg_pool import ConnectionPool

from core import queue, state, webhookhealth
from core.runtime import Services, SourceSet
from core.settings import Settings

log = logging.getLogger("vector_sync.reconciler")

SOURCE = "github"
#: The kv row holding the lease, the schedule and the counters.
KEY = webhookhealth.REDELIVERY_KEY
#: The ``deliveries`` name under which redelivered GUIDs are claimed.
CLAIMS = "github.redelivered"
#: Seconds a claimed GUID is remembered: longer than GitHub keeps deliveries (3 days).
CLAIM_TTL = 4 * 86400.0
#: Seconds a run stays leased to its reconciler without finishing.
LEASE = 120.0
#: Seconds each run also looks back before where the last successful run started (a delivery
#: finishing while the last one listed, clocks that disagree a little).
OVERLAP = 300.0
#: Seconds the first run looks back; and the furthest any run looks back (GitHub's retention).
FIRST_LOOKBACK = 3600.0
MAX_LOOKBACK = 3 * 86400.0


def interval(settings: Settings) -> float:
    return float(settings.source(SOURCE).get("GITHUB_REDELIVERY_INTERVAL") or 60.0)


def enabled(settings: Settings) -> bool:
    github = settings.source(SOURCE)
    return github.configured and bool(github.get("GITHUB_HOOK"))


def claim_run(pool: ConnectionPool, owner: str, heartbeat_timeout: float = 60.0) -> dict[str, Any] | None:
    """Lease the repair to ``owner`` when it is due and free; its recorded state (plus ``now``,
    the database's clock in epoch seconds), or None."""
    with pool.connection() as conn, conn.transaction():
        conn.execute("INSERT INTO kv (key, value) VALUES (%s, '{}'::jsonb) ON CONFLICT DO NOTHING", (KEY,))
        row = conn.execute("SELECT value, extract(epoch FROM now())::float8 FROM kv WHERE key = %s FOR UPDATE",
                           (KEY,)).fetchone()
        assert row is not None
        value, now = dict(row[0] or {}), float(row[1])
        if float(value.get("next_due_at") or 0) > now:
            return None
        holder = value.get("lease_owner")
        if holder and holder != owner and float(value.get("lease_until") or 0) > now:
            silent = conn.execute(
                """SELECT 1 FROM heartbeats WHERE process = %s
                   AND beat_at < now() - make_interval(secs => %s)""", (holder, heartbeat_timeout),
            ).fetchone()
            if silent is None:
                return None
        value |= {"lease_owner": owner, "lease_until": now + LEASE}
        conn.execute("UPDATE kv SET value = %s::jsonb, updated_at = now() WHERE key = %s", (json.dumps(value), KEY))
    return value | {"now": now}


def finish_run(pool: ConnectionPool, owner: str, started: float, every: float, *, redelivered: int = 0,
               enqueued: int = 0, failed_seen: int = 0, error: str | None = None) -> dict[str, Any]:
    """Record a run that started at ``started`` (database clock): add its counts, set the next
    due time, give the lease back (if ``owner`` still holds it). Returns the new state."""
    with pool.connection() as conn, conn.transaction():
        row = conn.execute("SELECT value, extract(epoch FROM now())::float8 FROM kv WHERE key = %s FOR UPDATE",
                           (KEY,)).fetchone()
        value, now = (dict(row[0] or {}), float(row[1])) if row else ({}, time.time())
        value["redelivered"] = int(value.get("redelivered") or 0) + redelivered
        value["enqueued"] = int(value.get("enqueued") or 0) + enqueued
        value["runs"] = int(value.get("runs") or 0) + 1
        value["last_run_at"] = now
        value["last_run"] = {"redelivered": redelivered, "enqueued": enqueued, "failed_deliveries": failed_seen,
                             "error": error}
        if error is None:
            value["checked_from"] = started  # the next run lists back to here (less OVERLAP)
            value["last_ok_at"] = now
        else:
            value["last_error"], value["last_error_at"] = error[:500], now
        value["next_due_at"] = now + every
        if value.get("lease_owner") == owner:
            value["lease_owner"], value["lease_until"] = None, None
        conn.execute(
            """INSERT INTO kv (key, value) VALUES (%s, %s::jsonb)
               ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()""",
            (KEY, json.dumps(value)),
        )
    return value


async def repair(source: Any, hook: str, since: float, pool: ConnectionPool, broker: Any,
                 counts: dict[str, int] | None = None) -> dict[str, int]:
    """Redeliver (or enqueue what they named) every failed delivery of ``hook`` since ``since``
    that no run has handled yet; the counts (added to ``counts`` as it goes, so a run that
    fails part-way still counts what it did)."""
    counts = counts if counts is not None else {}
    for key in ("redelivered", "enqueued", "failed_seen"):
        counts.setdefault(key, 0)
    for delivery in await source.failed_deliveries(hook, since):
        counts["failed_seen"] += 1
        guid = str(delivery["guid"])
        if not await asyncio.to_thread(state.claim_delivery, pool, CLAIMS, guid, CLAIM_TTL):
            continue  # handled before, here or by another reconciler
        try:
            if await source.redeliver(hook, delivery):
                counts["redelivered"] += 1
                log.info("github delivery redelivered", extra={"delivery_id": guid, "event": delivery.get("event")})
                continue
            refs = await source.delivery_refs(hook, delivery)
            if refs:
                await asyncio.to_thread(queue.enqueue, broker, refs)
            counts["enqueued"] += 1
            log.warning("github refused to redeliver %s; enqueued the %d documents it named instead",
                        guid, len(refs))
        except BaseException:
            await asyncio.to_thread(state.release_delivery, pool, CLAIMS, guid)
            raise
    return counts


async def redelivery_tick(settings: Settings, services: Services, sources: SourceSet, owner: str) -> dict[str, Any] | None:
    """Run the repair when it is due and this reconciler gets its lease; the recorded state
    after the run, or None when nothing ran. Errors are recorded on the row, never raised
    (a database outage aside: the loop reports those)."""
    if not enabled(settings):
        return None
    claimed = await asyncio.to_thread(claim_run, services.pool, owner, settings.heartbeat_timeout)
    if claimed is None:
        return None
    now = claimed["now"]
    since = max(now - MAX_LOOKBACK, float(claimed.get("checked_from") or now - FIRST_LOOKBACK) - OVERLAP)
    hook = settings.source(SOURCE).get("GITHUB_HOOK")
    every = interval(settings)
    counts: dict[str, int] = {}
    try:
        await repair(sources.get(SOURCE), hook, since, services.pool, services.broker, counts)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("github gap repair failed: %s: %s", type(exc).__name__, exc)
        return await asyncio.to_thread(finish_run, services.pool, owner, now, every, **counts,
                                       error=f"{type(exc).__name__}: {exc}")
    return await asyncio.to_thread(finish_run, services.pool, owner, now, every, **counts)
