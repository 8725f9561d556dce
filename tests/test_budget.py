"""Does each source's budget allow its schedule? (core/budget.py, issue 15)

The arithmetic on the issue's own figures (Fireflies 50/day, Slack non-Marketplace 1 history
call a minute over 200 channels, GitHub 5,000/h), then the same report through the real status
(Postgres rows, ``build_status``, the CLI's text): a configured interval the budget cannot pay
is a reason in status, not "All fresh".
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from core import budget
from core.settings import Rate
from core.status import build_status, render_metrics
from core.statusview import render_text
from tests.conftest import make_settings

DAY, HOUR = 86400.0, 3600.0
NOW = datetime(2026, 12, 5, tzinfo=timezone.utc)


def row(source: str, key: str, *, backfilling: bool = False, spent: int = 0, first: int | None = None,
        last: int | None = None, passes: int = 0, paused_until: datetime | None = None) -> tuple:
    return (source, key, backfilling, spent, first, last, passes, paused_until)


def test_fireflies_on_50_a_day_cannot_poll_hourly() -> None:
    # One scope whose incremental pass lists 3 pages (150 meetings in the recheck window).
    report = budget.assess("fireflies", Rate(50, DAY), HOUR,
                           [row("fireflies", "all", first=3, last=3, passes=2)], NOW)
    # 3 requests at 80% of 50/day: one pass per 6,480 s at best.
    assert report["pass_cost_requests"] == 3
    assert report["achievable_interval_s"] == pytest.approx(3 / (50 / DAY * 0.8), abs=0.1)
    assert report["stretched"] is True
    assert report["effective_interval_s"] == report["achievable_interval_s"]
    assert "FIREFLIES_POLL_INTERVAL 1.0h" in report["warning"]
    assert "every 1.8h" in report["warning"]
    assert report["backfill"]["scopes_remaining"] == 0 and report["backfill"]["eta_s"] == 0


def test_slack_non_marketplace_over_200_channels() -> None:
    # 150 channels measured at 1 history call a pass, 50 at 3 (busy); none measured yet would
    # count as the mean.
    rows = ([row("slack", f"C{i}", first=4, last=1, passes=3) for i in range(150)]
            + [row("slack", f"B{i}", first=9, last=3, passes=3) for i in range(50)])
    report = budget.assess("slack", Rate(1, 60), 15 * 60, rows, NOW)
    assert report["pass_cost_requests"] == 300
    # 300 calls at 1/min (80% for passes): 22,500 s, far beyond 15 minutes.
    assert report["achievable_interval_s"] == pytest.approx(22500, abs=0.1)
    assert report["stretched"] and "SLACK_POLL_INTERVAL 15.0m" in report["warning"]
    assert "6.2h" in budget.summary(report)


def test_github_5000_an_hour_fits_its_half_hour_schedule() -> None:
    rows = [row("github", f"org/r{i}", first=120, last=4, passes=5) for i in range(40)]
    report = budget.assess("github", Rate(5000, HOUR), 30 * 60, rows, NOW)
    assert report["achievable_interval_s"] == pytest.approx(160 / (5000 / HOUR * 0.8), abs=0.1)
    assert report["stretched"] is False and report["warning"] is None
    assert report["effective_interval_s"] == 30 * 60


def test_unmeasured_scopes_count_as_the_mean_or_one_request() -> None:
    rows = [row("jira", "A", last=10, passes=2), row("jira", "B", last=20, passes=2), row("jira", "C")]
    assert budget.assess("jira", Rate(10, 1), 60, rows, NOW)["pass_cost_requests"] == 45
    fresh = [row("jira", k) for k in "ABC"]
    assert budget.assess("jira", Rate(10, 1), 60, fresh, NOW)["pass_cost_requests"] == 3


def test_backfill_eta_from_the_first_passes_finished_so_far() -> None:
    rows = [row("github", "done1", first=100, last=2, passes=2), row("github", "done2", first=300, last=2, passes=2),
            row("github", "half", backfilling=True, spent=150), row("github", "new", backfilling=True),
            row("github", "over", backfilling=True, spent=900)]
    report = budget.assess("github", Rate(5000, HOUR), 30 * 60, rows, NOW)
    bf = report["backfill"]
    # Mean first pass 200: 50 left for "half", 200 for "new", at least 1 for "over".
    assert bf["scopes_remaining"] == 3 and bf["requests_remaining"] == 251
    assert bf["eta_s"] == pytest.approx(251 / (5000 / HOUR * 0.8), abs=0.1)
    assert bf["eta_lower_bound"] is False
    assert "backfill 3 scopes, ETA" in budget.summary(report)


def test_backfill_eta_is_a_lower_bound_until_a_first_pass_finishes() -> None:
    paused = NOW + timedelta(hours=20)
    rows = [row("fireflies", "all", backfilling=True, spent=50, paused_until=paused)]
    report = budget.assess("fireflies", Rate(50, DAY), HOUR, rows, NOW)
    bf = report["backfill"]
    assert bf["eta_lower_bound"] is True and bf["paused_scopes"] == 1
    assert bf["resumes_at"] == paused.isoformat()
    assert "ETA ≥ " in budget.summary(report)


def test_other_sources_rows_are_ignored() -> None:
    rows = [row("slack", "C1", last=1000, passes=2)]
    report = budget.assess("fireflies", Rate(50, DAY), HOUR, rows, NOW)
    assert report["scopes"] == 0 and report["achievable_interval_s"] == 0 and not report["stretched"]


@pytest.fixture
def fireflies_settings(infra):
    return make_settings(infra, FIREFLIES_API_KEY="key", FIREFLIES_API_URL="http://127.0.0.1:9/graphql",
                         FIREFLIES_RATE_LIMIT="50/day", FIREFLIES_POLL_INTERVAL="1h")


def seed_costs(services, *, last: int) -> None:
    with services.pool.connection() as conn:
        conn.execute("""INSERT INTO scopes (source, key, name, cursor, last_success_at, next_due_at)
                        VALUES ('fireflies', 'all', 'All meetings', 1.0, now(), now() + interval '1 hour')""")
        conn.execute("""INSERT INTO scope_costs (source, key, first_pass_requests, last_pass_requests, passes)
                        VALUES ('fireflies', 'all', 3, %s, 2)""", (last,))


def test_status_warns_when_the_configured_interval_cannot_be_met(services, fireflies_settings) -> None:
    seed_costs(services, last=3)
    report = build_status(services, fireflies_settings)
    b = report["sources"]["fireflies"]["budget"]
    assert b["stretched"] and b["achievable_interval_s"] == pytest.approx(6480, abs=0.1)
    assert b["configured_interval_s"] == HOUR and b["effective_interval_s"] == b["achievable_interval_s"]
    # A reason (the report is not healthy: amber), not a silent lag behind "All fresh".
    assert b["warning"] in report["reasons"]
    assert report["healthy"] is False
    # The CLI's text (``vector-sync status``) says it on the source's line.
    text = render_text(report)
    assert "BUDGET WARNING: budget: every 1.8h (achievable 1.8h at 50/86400s)" in text
    # Other sources without credentials carry no budget.
    assert "budget" not in report["sources"]["slack"]
    # /metrics carries the intervals and the ETA.
    metrics = render_metrics(report)
    assert 'vector_sync_source_poll_interval_seconds{source="fireflies",kind="configured"} 3600' in metrics
    assert 'vector_sync_source_poll_interval_seconds{source="fireflies",kind="effective"} 6480' in metrics
    assert 'vector_sync_source_backfill_eta_seconds{source="fireflies"} 0' in metrics


def test_status_is_quiet_when_the_budget_fits(services, fireflies_settings) -> None:
    seed_costs(services, last=1)  # 2,160 s achievable: within the hour
    report = build_status(services, fireflies_settings)
    b = report["sources"]["fireflies"]["budget"]
    assert not b["stretched"] and b["warning"] is None
    assert not any("budget" in r for r in report["reasons"])
    assert "BUDGET WARNING" not in render_text(report)
    assert "budget: every 1.0h (achievable 36.0m at 50/86400s)" in render_text(report)


def test_dashboard_shows_the_schedule_and_the_warning(services, infra, receiver_factory, tmp_path) -> None:
    """The page paints what the report says: the stretched schedule on the source's card, in
    amber, and the warning among the reasons (the verdict amber, not "Healthy")."""
    from core import state
    from tests.test_dashboard import parse_dom, run_chromium

    settings = make_settings(infra, FIREFLIES_API_KEY="key", FIREFLIES_API_URL="http://127.0.0.1:9/graphql",
                             FIREFLIES_RATE_LIMIT="50/day", FIREFLIES_POLL_INTERVAL="1h", HEARTBEAT_TIMEOUT="600")
    seed_costs(services, last=3)
    with services.pool.connection() as conn:  # a second scope still sweeping its history
        conn.execute("INSERT INTO scopes (source, key, name) VALUES ('fireflies', 'more', 'More')")
    for kind in ("worker", "reconciler"):
        state.beat(services.pool, kind, f"{kind}@test:1")
    receiver = receiver_factory(settings)
    dom = parse_dom(run_chromium(f"{receiver.url}/", tmp_path, "--dump-dom"))
    card = dom.find("article", data_source="fireflies")
    assert card.attrs["data-budget"] == "stretched"
    text = card.text()
    # The unmeasured scope counts as the measured one's 3 requests: 6 a round, every 3.6 h; its
    # history is estimated at the finished first pass's 3 requests: 1.8 h.
    assert "every 3.6h (achievable 3.6h at 50/86400s; the configured 1h cannot be met)" in text
    assert "Backfill 1 scope left, ETA 1.8h" in text
    reasons = dom.find("ul", id="reasons").text()
    assert "budget too small for FIREFLIES_POLL_INTERVAL" in reasons
    assert dom.find(id="verdict").attrs["class"] == "verdict warn"
