"""listing-requests: what listing the seed-scale Jira profile costs in Jira requests, and how
often a first install lists a scope twice (issue 12, "fewer source requests").

The Jira simulator (``--profile scale``: 72 projects, 7,556 issues, own process) counts every
API request it serves (``GET /_sandbox/jira/calls``).

1. The backfill's listing, as ``Backfill`` runs it with the product's Jira budget: project pages,
   id-only searches and bulkfetches, against the issue's target of at most 90 (it was 290).
2. A first install: the scopes are discovered, a backfill of every project runs, and meanwhile a
   reconciler ticks as its loop does. Every reconcile pass that lists a scope from the start
   while the backfill lists it is a duplicate listing (there were 72; the target is 0). After the
   backfill, one more tick with every scope due shows the passes continuing from the backfill's
   cursors (window listings, one search each).

No worker runs: this is about listing, not indexing.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import httpx

from benchmarks.harness import Infra, Sandbox
from core import scopes
from core.runtime import Services, SourceSet, open_services
from core.settings import Settings
from reconciler.backfill import Backfill, create_run, finish_run, owner_name
from reconciler.reconcile import Reconciler

PROJECTS, ISSUES = 72, 7556
TARGET_REQUESTS = 90
BEFORE_REQUESTS = 290  # issue 12: search pages of 100 ids + one bulkfetch each, project by project


def _calls(env: dict[str, str]) -> dict[str, int]:
    url = env["JIRA_URL"].rstrip("/") + "/_sandbox/jira/calls"
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return {k: int(v) for k, v in response.json().items()}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0)}


def _backfill(services: Services, settings: Settings, run_id: int | None = None) -> dict[str, Any]:
    owner = owner_name()
    run_id = run_id or create_run(services.pool, "jira", [], None, owner=owner)

    async def go() -> dict[str, Any]:
        sources = SourceSet(settings, services.pool)
        try:
            return await Backfill(services, sources, run_id, owner).run()
        finally:
            await sources.aclose()

    counters = asyncio.run(go())
    finish_run(services.pool, run_id, counters)
    return counters


def _tick(settings: Settings, services: Services, reconciler_owner: str) -> int:
    async def go() -> int:
        sources = SourceSet(settings, services.pool)
        try:
            return await Reconciler(settings, services, sources, reconciler_owner).tick()
        finally:
            await sources.aclose()

    return asyncio.run(go())


def _reconcile_runs(services: Services) -> list[tuple[Any, Any]]:
    with services.pool.connection() as conn:
        return conn.execute("SELECT params, counters FROM runs WHERE kind = 'reconcile' ORDER BY id").fetchall()


def _full_listings_started(services: Services) -> list[float]:
    """Start times (epoch s) of the reconcile passes that listed a scope from the start."""
    with services.pool.connection() as conn:
        rows = conn.execute("SELECT extract(epoch FROM started_at) FROM runs WHERE kind = 'reconcile' "
                            "AND params->>'since' IS NULL ORDER BY id").fetchall()
    return [float(r[0]) for r in rows]


def run(infra: Infra, quick: bool) -> dict[str, Any]:
    infra.reset()
    sandbox = Sandbox(["jira"], profile="scale")
    services = None
    try:
        settings = infra.settings(**sandbox.env)
        services = open_services(settings, pool_size=4)

        # 1. The backfill's listing alone (scopes discovered by the backfill itself).
        before = _calls(sandbox.env)
        started = time.monotonic()
        counters = _backfill(services, settings)
        listing_s = time.monotonic() - started
        calls = _delta(_calls(sandbox.env), before)
        requests = sum(calls.values())

        # 2. First install: discovery, then a backfill with a reconciler ticking beside it.
        infra.reset()
        owner = "bench-reconciler"
        asyncio.run(_discover(settings, services, owner))
        stop = threading.Event()
        ticks = [0]

        def reconcile_loop() -> None:
            while not stop.is_set():
                _tick(settings, services, owner)
                ticks[0] += 1
                stop.wait(0.2)

        # The run exists before the reconciler's first tick, as a backfill requested through the
        # admin API (queued) or the command line (running) does by the time it lists.
        run_id = create_run(services.pool, "jira", [], None, owner=owner_name())
        loop = threading.Thread(target=reconcile_loop, daemon=True)
        loop.start()
        begun = time.time()
        second = _backfill(services, settings, run_id)
        ended = time.time()
        stop.set()
        loop.join(120)
        during = _reconcile_runs(services)
        duplicates = sum(1 for params, _ in during if params.get("since") is None)
        starts = _full_listings_started(services)
        relisted = sum(int(c.get("refs", 0)) for params, c in during if params.get("since") is None)

        # After it: every scope due at once lists only its window.
        scopes.make_due(services.pool, "jira", [r["key"] for r in scopes.list_scopes(services.pool, "jira")])
        before = _calls(sandbox.env)
        passes = _tick(settings, services, owner)
        after_calls = _delta(_calls(sandbox.env), before)
        after_runs = _reconcile_runs(services)[len(during):]
        return {
            "params": {"profile": f"scale ({PROJECTS} projects, {ISSUES} issues)",
                       "jira_rate_limit": str(settings.source("jira").rate),
                       "reconcile_tick_s": 0.2, "worker": "none"},
            "figures": {
                "backfill_jira_requests": requests,
                "backfill_jira_requests_by_kind": calls,
                "backfill_jira_requests_formula": (f"ceil({PROJECTS}/50) + ceil({ISSUES}/5000) + ceil({ISSUES}/100)"
                                                   f" = {math.ceil(PROJECTS / 50) + math.ceil(ISSUES / 5000) + math.ceil(ISSUES / 100)}"),
                "backfill_jira_requests_target": TARGET_REQUESTS,
                "backfill_jira_requests_vs_target": round(requests / TARGET_REQUESTS, 2),
                "backfill_jira_requests_before": BEFORE_REQUESTS,
                "backfill_documents_listed": int(counters.get("listed", 0)),
                "backfill_listing_wall_s": round(listing_s, 2),
                "first_install_reconcile_ticks_during_backfill": ticks[0],
                "first_install_duplicate_listings": duplicates,
                "first_install_duplicate_listings_target": 0,
                "first_install_refs_relisted": relisted,
                "first_install_duplicates_started_s_after_backfill_began": [round(t - begun, 2) for t in starts][:5],
                "first_install_backfill_listing_s": round(ended - begun, 2),
                "first_install_backfill_listed": int(second.get("listed", 0)),
                "after_backfill_passes": passes,
                "after_backfill_full_listings": sum(1 for params, _ in after_runs if params.get("since") is None),
                "after_backfill_jira_requests": sum(after_calls.values()),
                "after_backfill_jira_requests_by_kind": after_calls,
            },
        }
    finally:
        if services is not None:
            services.close()
        sandbox.stop()


async def _discover(settings: Settings, services: Services, owner: str) -> None:
    sources = SourceSet(settings, services.pool)
    try:
        await Reconciler(settings, services, sources, owner).discover(["jira"], force=True)
    finally:
        await sources.aclose()
