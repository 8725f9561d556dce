"""The reconciler process: heartbeat, then reconcile due scopes until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine
from typing import Any

from core import alerts, metrics, state
from core.heartbeat import POSTGRES, Backoff, Heartbeat, Outages
from core.runtime import Services, SourceSet, open_services_patiently
from core.settings import Settings
from reconciler.backfill import run_queued_backfills
from reconciler.reconcile import Reconciler, abandon_dead_runs, due_in
from reconciler.redeliver import redelivery_tick
from reconciler.verify import verify_tick

log = logging.getLogger("vector_sync.reconciler")

#: Seconds between alert checks (each builds a full status report), and before the first one.
ALERT_INTERVAL = 60.0
ALERT_GRACE = 120.0
#: Longest wait between two attempts while Postgres or Redis is unreachable.
OUTAGE_BACKOFF_CAP = 15.0


async def until_stopped(work: Coroutine[Any, Any, Any], stop: threading.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first; then cancel it (a pass may be waiting for a
    request budget slot) and return False. A cancelled pass keeps its checkpoint and lease."""
    task = asyncio.ensure_future(work)
    while not task.done():
        if stop.is_set():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        await asyncio.wait({task}, timeout=0.2)
    task.result()
    return True


async def reconcile_forever(settings: Settings, services: Services, stop: threading.Event, owner: str,
                            outages: Outages | None = None) -> None:
    """Pass after pass until ``stop``. Nothing in here ends the loop: a database or broker
    outage is reported to ``outages`` (one log line, the heartbeat's info) and waited out with a
    capped backoff; any other error is logged and the next pass comes after the usual tick."""
    outages = outages or Outages(owner)
    sources = SourceSet(settings, services.pool)
    reconciler = Reconciler(settings, services, sources, owner)
    reconciler.outages = outages
    backfills: set[asyncio.Task[None]] = set()
    backoff = Backoff(cap=OUTAGE_BACKOFF_CAP)
    # The first alert check waits for a first pass and the other processes' first heartbeats,
    # so a fresh start does not announce every source as stale.
    next_alert = time.monotonic() + ALERT_GRACE
    try:
        while not stop.is_set():
            try:
                await asyncio.to_thread(abandon_dead_runs, services.pool, settings.heartbeat_timeout)
                await asyncio.to_thread(state.expire_deliveries, services.pool)
                if not await until_stopped(reconciler.tick(), stop):
                    break
                # GitHub's failed webhooks, on their own short cadence (GITHUB_REDELIVERY_INTERVAL).
                if not await until_stopped(redelivery_tick(settings, services, sources, owner), stop):
                    break
                await run_queued_backfills(settings, services, sources, owner, backfills)
                await verify_tick(settings, services, sources, owner, stop)
                if settings.alert_slack_webhook_url and time.monotonic() >= next_alert:
                    await asyncio.to_thread(alerts.check_and_notify, services, settings)
                    next_alert = time.monotonic() + ALERT_INTERVAL
                due = await asyncio.to_thread(due_in, services.pool, sources.configured())
            except Exception as exc:
                if outages.report(exc) is None:  # one bad pass must not end the loop either
                    log.exception("reconciler pass failed")
                    wait = settings.reconcile_tick
                else:
                    wait = backoff.next()
            else:
                outages.up(POSTGRES)
                backoff.reset()
                wait = settings.reconcile_tick if due is None else min(max(due, 0.2), settings.reconcile_tick)
            await asyncio.to_thread(stop.wait, wait)
        for task in backfills:
            task.cancel()
    finally:
        await sources.aclose()


def run_reconciler(settings: Settings, stop: threading.Event) -> None:
    metrics.serve(settings.metrics_port, settings.metrics_host, "reconciler")  # METRICS_PORT, if set
    services = open_services_patiently(settings, stop, pool_size=6)
    if services is None:
        return
    heartbeat = Heartbeat(services.pool, "reconciler", settings.heartbeat_interval,
                          redis=services.broker.client).start()
    log.info("reconciler started", extra={"sources": ",".join(settings.configured_sources()) or "none"})
    try:
        asyncio.run(reconcile_forever(settings, services, stop, heartbeat.name, heartbeat.outages))
    finally:
        log.info("reconciler stopping")
        heartbeat.stop()
        services.close()
