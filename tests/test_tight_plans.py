"""Tight plans (issue 15): Fireflies at 50 requests a day, Slack's non-Marketplace limits
(``conversations.history`` and ``.replies`` at 1 request a minute, 15 messages per call).

The simulators enforce the plans; ``BUDGET_TIME_SCALE`` compresses the product's budgets by the
same factor as the simulators' windows (a day's 50 requests in 3 s, Slack's minute in 0.1 s), and
the poll intervals are the production defaults compressed alike, so the arithmetic is the real
one. Each test shows: status gives the achievable interval and a backfill ETA, warns when the
configured interval cannot be met (and the reconciler stretches it), a history sweep that runs
out of budget pauses at its checkpoint and resumes without listing anything twice, and the index
converges: webhooks first, then the slow sweep.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from core import state
from core.ratelimit import RedisRateLimiter
from core.runtime import SourceSet
from core.status import build_status
from core.statusview import render_text
from reconciler.reconcile import ClaimedScope, Reconciler
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import make_settings, reconcile_tick, wait_for

DAY, MINUTE = 86400.0, 60.0


def tick(settings: Any, services: Any, max_wait: float) -> int:
    """One reconciler pass, its limiter waiting at most ``max_wait`` for a slot (the production
    30 s, compressed like the budgets)."""
    return reconcile_tick(settings, services, "tight", max_wait=max_wait)


def scope_rows(services: Any, source: str) -> list[dict[str, Any]]:
    with state.dict_cursor(services.pool) as cur:
        cur.execute("""SELECT s.*, c.first_pass_requests, c.first_pass_pages, c.last_pass_requests
                       FROM scopes s LEFT JOIN scope_costs c USING (source, key)
                       WHERE s.active AND s.source = %s ORDER BY s.key""", (source,))
        return list(cur.fetchall())


def indexed(services: Any, source: str) -> set[str]:
    with services.pool.connection() as conn:
        rows = conn.execute("""SELECT document_id FROM documents WHERE source = %s
                               AND deleted_at IS NULL AND chunk_count > 0""", (source,)).fetchall()
    return {r[0] for r in rows}


def runs(services: Any, source: str) -> list[tuple[str, str | None, bool]]:
    with services.pool.connection() as conn:
        rows = conn.execute("""SELECT status, error, coalesce((counters->>'resumed')::boolean, false)
                               FROM runs WHERE kind = 'reconcile' AND source = %s ORDER BY id""",
                            (source,)).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


@pytest.fixture
def fireflies_sandbox():
    server = SandboxServer(create_simulators(["fireflies"], profile="small", seed=15)).start()
    yield server
    server.stop()


@pytest.fixture
def slack_sandbox():
    server = SandboxServer(create_simulators(["slack"], profile="small", seed=15)).start()
    yield server
    server.stop()


def test_fireflies_50_a_day_sweeps_slowly_resumes_and_converges(
        infra, services, fireflies_sandbox, worker_factory, receiver_factory) -> None:
    scale = 3 / DAY  # the plan's day in 3 s
    sim = fireflies_sandbox.sims["fireflies"]
    base = fireflies_sandbox.url("fireflies")
    # Given a Free/Pro plan (50 requests a day) and 52 meetings (two listing pages of 50):
    assert httpx.put(f"{base}/_sandbox/plan", json={"limit": 50, "period": DAY * scale}).status_code == 200
    rng = random.Random(15)
    now_ms = int(time.time() * 1000)
    while len(sim.transcripts) < 52:
        t = sim.new_transcript(rng, date=now_ms - rng.randint(1, 240) * 3600 * 1000)
        sim.fill(t, rng, 12)
        sim.transcripts[t.id] = t
    settings = make_settings(
        infra, **fireflies_sandbox.env(), BUDGET_TIME_SCALE=repr(scale),
        FIREFLIES_RATE_LIMIT="50/day", FIREFLIES_POLL_INTERVAL=repr(3600 * scale),  # the default 1 h
        FIREFLIES_RECHECK_WINDOW="100d")
    rate = settings.source("fireflies").rate
    assert rate.limit == 50 and rate.period == pytest.approx(3.0)
    max_wait = 30 * scale * 20  # the reconciler's 30 s wait, compressed (and then some)
    # The worker fetches what the sweep finds while the sweep goes on: both share the budget.
    receiver = receiver_factory(settings)
    worker_factory(settings)

    # And most of the day's budget already spent (webhook fetches, as on a busy day):
    async def spend(n: int) -> None:
        client = aioredis.from_url(infra["REDIS_URL"])
        try:
            limiter = RedisRateLimiter(client, "fireflies", rate, max_wait=60)
            for _ in range(n):
                await limiter.reserve()
        finally:
            await client.aclose()

    asyncio.run(spend(49))

    # When the first pass runs, it lists one page, then the budget is gone for longer than a pass
    # may wait: it pauses at its checkpoint instead of failing.
    tick(settings, services, max_wait)
    (row,) = scope_rows(services, "fireflies")
    assert row["cursor"] is None and row["checkpoint"] is not None and row["last_error"] is None
    assert [(s, (e or "")[:7]) for s, e, _ in runs(services, "fireflies")] == [("abandoned", "paused:")]
    report = build_status(services, settings)
    b = report["sources"]["fireflies"]["budget"]
    # Status shows the sweep: one scope left, paused for the budget, an ETA that is a lower
    # bound until a first pass has finished.
    assert b["backfill"]["scopes_remaining"] == 1 and b["backfill"]["paused_scopes"] == 1
    assert b["backfill"]["eta_lower_bound"] is True and b["backfill"]["eta_s"] > 0
    assert "budget: every" in render_text(report) and "ETA ≥" in render_text(report)

    # Then it resumes when the window frees a slot, from its checkpoint: two listing requests in
    # all, counted across the pause (page 1 is never listed again).
    wait_for(lambda: tick(settings, services, max_wait) >= 0 and scope_rows(services, "fireflies")[0]["cursor"],
             timeout=60, interval=0.2)
    (row,) = scope_rows(services, "fireflies")
    assert row["first_pass_requests"] == 2 and row["first_pass_pages"] == 2
    assert runs(services, "fireflies")[-1][0] == "succeeded" and runs(services, "fireflies")[-1][2] is True

    # An incremental pass (the 100-day recheck re-lists both pages) is measured; two requests a pass
    # at 80% of 50/day need 4,320 s: the hourly schedule cannot be met. Status warns, and the
    # reconciler stretches the schedule rather than falling behind.
    wait_for(lambda: tick(settings, services, max_wait) >= 0
             and scope_rows(services, "fireflies")[0]["last_pass_requests"], timeout=60, interval=0.2)
    report = build_status(services, settings)
    b = report["sources"]["fireflies"]["budget"]
    assert b["pass_cost_requests"] == 2
    assert b["achievable_interval_s"] == pytest.approx(2 / (50 / 3 * 0.8), abs=0.1)
    assert b["stretched"] and b["warning"] in report["reasons"] and not report["healthy"]
    assert "FIREFLIES_POLL_INTERVAL" in b["warning"]
    assert "BUDGET WARNING" in render_text(report)
    (row,) = scope_rows(services, "fireflies")
    gap = (row["next_due_at"] - row["last_success_at"]).total_seconds()
    assert gap >= b["achievable_interval_s"] - 0.05 > settings.source("fireflies").poll_interval

    # Webhook first: a meeting transcribed now is indexed from its webhook, whatever the sweep.
    fireflies_sandbox.set_webhook_target(receiver.url)
    created = httpx.post(f"{base}/_sandbox/transcripts", json={"title": "Budget review"}).json()
    assert httpx.post(f"{base}/_sandbox/transcripts/{created['id']}/process", json={}).status_code == 200
    wait_for(lambda: f"fireflies:{created['id']}" in indexed(services, "fireflies"), timeout=60, interval=0.2)

    # And the whole history converges within the plan: every processed meeting is indexed.
    expected = {f"fireflies:{tid}" for tid, t in sim.transcripts.items() if t.sentences}
    wait_for(lambda: expected <= indexed(services, "fireflies"), timeout=90, interval=0.3)
    assert indexed(services, "fireflies") == expected


def test_slack_non_marketplace_limits_show_eta_warn_and_converge(
        infra, services, slack_sandbox, worker_factory, receiver_factory) -> None:
    scale = 0.05 / MINUTE  # Slack's minute in 0.05 s
    sim = slack_sandbox.sims["slack"]
    base = slack_sandbox.url("slack")
    assert httpx.put(f"{base}/_sandbox/config", json={"app_distribution": "non_marketplace",
                                                       "limited_window": MINUTE * scale}).status_code == 200
    general = next(c for c in sim.channels.values() if c.name == "general")
    for n in range(16):  # 24 messages in #general: two history calls at 15 per call
        assert httpx.post(f"{base}/_sandbox/messages",
                          json={"channel": general.id, "text": f"history message {n}"}).status_code == 201
    settings = make_settings(
        infra, **slack_sandbox.env(), BUDGET_TIME_SCALE=repr(scale),
        SLACK_RATE_LIMIT="1/min", SLACK_POLL_INTERVAL=repr(15 * MINUTE * scale))  # the default 15 min
    max_wait = 30 * scale * 10
    # The worker fetches what the sweep finds while the sweep goes on: both share the budget.
    receiver = receiver_factory(settings)
    worker_factory(settings)

    async def first_scope_alone() -> None:
        # Discover, then sweep #general's history alone, so status can be read mid-backfill.
        sources = SourceSet(settings, services.pool, max_wait=max_wait)
        try:
            reconciler = Reconciler(settings, services, sources, "tight")
            await reconciler.discover(["slack"], force=True)
            await reconciler.reconcile_scope(ClaimedScope("slack", general.id, "general", None, None, None, None, False))
        finally:
            await sources.aclose()

    asyncio.run(first_scope_alone())
    rows = {r["key"]: r for r in scope_rows(services, "slack")}
    assert len(rows) > 1 and rows[general.id]["cursor"] is not None
    assert rows[general.id]["first_pass_pages"] == 2  # 24 parents at 15 per call
    report = build_status(services, settings)
    b = report["sources"]["slack"]["budget"]
    left = len(rows) - 1
    assert b["backfill"]["scopes_remaining"] == left and b["backfill"]["eta_lower_bound"] is False
    # Each remaining channel is estimated at #general's first-pass cost, at 80% of 1 per 0.05 s.
    first = rows[general.id]["first_pass_requests"]
    assert b["backfill"]["eta_s"] == pytest.approx(left * first / (20 * 0.8), abs=0.1)
    assert f"backfill {left} scopes, ETA" in render_text(report)

    # The rest of the history sweep, then one measured incremental pass over every channel.
    def swept() -> bool:
        tick(settings, services, max_wait)
        return all(r["cursor"] is not None and r["last_pass_requests"] is not None
                   for r in scope_rows(services, "slack"))

    wait_for(swept, timeout=60, interval=0.2)
    report = build_status(services, settings)
    b = report["sources"]["slack"]["budget"]
    cost = sum(r["last_pass_requests"] for r in scope_rows(services, "slack"))
    assert b["pass_cost_requests"] == cost and b["backfill"]["scopes_remaining"] == 0
    assert b["achievable_interval_s"] == pytest.approx(cost / (20 * 0.8), abs=0.1)
    # The 15-minute schedule (0.75 s here) cannot be met: 13 or more calls a pass at 1 a minute.
    assert b["achievable_interval_s"] > settings.source("slack").poll_interval
    assert b["stretched"] and b["warning"] in report["reasons"]
    assert "SLACK_POLL_INTERVAL" in b["warning"] and "BUDGET WARNING" in render_text(report)

    # Webhook first, then everything: a new message is indexed from its event, and every thread
    # of every synced channel is indexed.
    slack_sandbox.set_webhook_target(receiver.url)
    posted = httpx.post(f"{base}/_sandbox/messages", json={"channel": general.id, "text": "from a webhook"}).json()
    ts = posted.get("ts") or posted.get("message", {}).get("ts")
    assert ts, posted
    wait_for(lambda: f"slack:{general.id}:{ts}" in indexed(services, "slack"), timeout=60, interval=0.2)
    truth = httpx.get(f"{base}/_sandbox/truth").json()
    expected = {f"slack:{key}:{root}" for key in rows for root in truth[key]["threads"]}
    wait_for(lambda: expected <= indexed(services, "slack"), timeout=90, interval=0.3)
    assert indexed(services, "slack") == expected
