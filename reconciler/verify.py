"""The reconciler's drift audits: scheduled ones (every ``VERIFY_INTERVAL``, per scope) and the
admin API's queued requests. The audit itself is core/verify.py.

``verify_tick`` is called once per loop turn. It never blocks the loop: audits run as one
background task per reconciler process (a daily audit of a big source takes minutes). A scope
is due when its newest verify run is older than ``VERIFY_INTERVAL``, or older than
``RECHECK_AFTER`` when that run failed or found (and repaired) drift, so a repaired scope is
confirmed clean soon after. A scope is audited only once it has been reconciled successfully and
was discovered more than one interval ago (a fresh scope's first pass is still being indexed:
its documents are not drift). Scheduled audits repair what they find. Claims go through
``core.verify.claim`` (one claimer at a time, never a scope another process audits or a
backfill lists), so several reconcilers share the work.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from core import verify
from core.runs import finish_run
from core.runtime import Services, SourceSet
from core.settings import Settings
from core.sources import Scope

log = logging.getLogger("vector_sync.reconciler")

#: Seconds before a scope whose last audit failed or found drift is audited again.
RECHECK_AFTER = 900.0
#: Scopes claimed per background task.
BATCH = 20

#: Seconds between looks for due scopes while idle (the loop turns every RECONCILE_TICK), or
#: VERIFY_INTERVAL if shorter.
CHECK_EVERY = 30.0

_tasks: dict[str, asyncio.Task[None]] = {}
_checked: dict[str, float] = {}


def due_scopes(services: Services, sources: list[str], interval: float) -> list[tuple[str, Scope | None]]:
    """(source, Scope) pairs due for an audit, and (INDEX, None) when the orphan check is due."""
    drifted = " + ".join(f"coalesce((r.counters ->> '{c}')::int, 0)" for c in verify.CATEGORIES)
    recent = f"""SELECT 1 FROM runs r WHERE r.kind = 'verify' AND r.source = {{source}}
                   AND r.scope IS NOT DISTINCT FROM {{scope}}
                   AND (r.status IN ('running', 'queued')
                        OR r.started_at > now() - make_interval(secs => %(interval)s)
                           AND r.status = 'succeeded' AND ({drifted}) = 0
                        OR r.started_at > now() - make_interval(secs => %(recheck)s))"""
    params = {"sources": sources, "interval": interval, "recheck": min(interval, RECHECK_AFTER),
              "index": verify.INDEX}
    with services.pool.connection() as conn:
        rows = conn.execute(
            f"""SELECT s.source, s.key, s.name FROM scopes s
                WHERE s.active AND s.source = ANY(%(sources)s) AND s.last_success_at IS NOT NULL
                  AND s.discovered_at < now() - make_interval(secs => %(interval)s)
                  AND NOT EXISTS ({recent.format(source="s.source", scope="s.key")})
                ORDER BY s.source, s.key""",  # type: ignore[arg-type]
            params,
        ).fetchall()
        index_due = conn.execute(
            f"SELECT NOT EXISTS ({recent.format(source='%(index)s', scope='NULL::text')})",  # type: ignore[arg-type]
            params,
        ).fetchone()
    out: list[tuple[str, Scope | None]] = [(source, Scope(source, key, name)) for source, key, name in rows]
    if index_due and index_due[0]:
        out.append((verify.INDEX, None))
    return out


def _queued(services: Services) -> bool:
    with services.pool.connection() as conn:
        row = conn.execute("SELECT 1 FROM runs WHERE kind = 'verify' AND status = 'queued' LIMIT 1").fetchone()
    return row is not None


def claim_request(services: Services, owner: str) -> dict[str, Any] | None:
    """Take one queued verify run (the admin API's), marking it running."""
    with services.pool.connection() as conn, conn.transaction():
        row = conn.execute(
            """SELECT id, source, params FROM runs WHERE kind = 'verify' AND status = 'queued'
               ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1"""
        ).fetchone()
        if row is None:
            return None
        conn.execute("UPDATE runs SET status = 'running', owner = %s, progress_at = now() WHERE id = %s",
                     (owner, row[0]))
    return {"id": int(row[0]), "source": row[1], "params": row[2] or {}}


async def run_request(services: Services, sources: SourceSet, owner: str, request: dict[str, Any],
                      stop: threading.Event | None = None) -> list[verify.Report]:
    """Execute a queued run: for ``index``, the orphan check in that run; for a source, an audit
    of each of its active scopes (one run each), then the queued run becomes the source's summary
    (its counters fold theirs; their ids in ``params.runs``)."""
    run_id, source = request["id"], request["source"]
    auditor = verify.Auditor(services, sources, owner, repair=bool(request["params"].get("repair")), stop=stop)
    try:
        if source == verify.INDEX:
            return [await auditor.execute(run_id, verify.INDEX, None)]
        targets = await asyncio.to_thread(auditor.targets, source)
        reports = await auditor.run_all(targets, summarize=False)
        if len(reports) < len(targets):  # stopped first: the request is not done
            await asyncio.to_thread(auditor.abandon, run_id)
        else:
            await asyncio.to_thread(verify.write_summaries, services.pool, owner, [source], {source: run_id})
        return reports
    except Exception as exc:  # never leave the request running
        await asyncio.to_thread(finish_run, services.pool, run_id, verify.empty_counters(),
                                f"audit failed: {type(exc).__name__}: {exc}")
        raise


async def _background(settings: Settings, services: Services, sources: SourceSet, owner: str,
                      stop: threading.Event | None) -> None:
    requested = False
    while stop is None or not stop.is_set():
        request = await asyncio.to_thread(claim_request, services, owner)
        if request is None:
            break
        requested = True
        await run_request(services, sources, owner, request, stop)
    if requested or settings.verify_interval <= 0:
        return
    due = await asyncio.to_thread(due_scopes, services, sources.configured(), settings.verify_interval)
    if due:
        auditor = verify.Auditor(services, sources, owner, repair=True, stop=stop)
        await auditor.run_all(due[:BATCH])


async def verify_tick(settings: Settings, services: Services, sources: SourceSet, owner: str,
                      stop: threading.Event | None = None) -> None:
    """Start the next audit in the background unless this process already runs one."""
    task = _tasks.get(owner)
    if task is not None and not task.done():
        return
    now = time.monotonic()
    looked = _checked.get(owner)
    every = min(CHECK_EVERY, settings.verify_interval) if settings.verify_interval > 0 else CHECK_EVERY
    if looked is not None and now - looked < every and not await asyncio.to_thread(_queued, services):
        return
    _checked[owner] = now

    async def go() -> None:
        try:
            await _background(settings, services, sources, owner, stop)
        except asyncio.CancelledError:
            raise
        except Exception:  # recorded on the runs; the loop must go on
            log.exception("drift audit failed")

    _tasks[owner] = asyncio.create_task(go())
