"""Does each source's request budget allow its schedule? (issue 15)

The reconciler counts the requests every pass makes, per scope (``core.ratelimit.count_requests``,
kept in ``scope_costs``, migration 0013; a pass interrupted and resumed adds up to its whole
cost). From those counts and the source's budget (``{SOURCE}_RATE_LIMIT``):

- **pass cost**: the requests one round over every active scope costs: each scope's last
  finished incremental pass (after its first); a scope without one counts as the mean of those
  that have one, or ``1`` (a listing is at least one request) when none has.
- **achievable interval**: ``pass cost / (budget per second * PASS_SHARE)``: the shortest poll
  interval the budget can keep up with, leaving ``1 - PASS_SHARE`` of it to the fetches that
  webhooks and changed documents need.
- **effective interval**: ``max(configured, achievable)``: what the reconciler schedules. When the
  configured ``{SOURCE}_POLL_INTERVAL`` is shorter than the achievable one, the schedule is
  stretched and ``warning`` says so (status turns amber: a reason, not "All fresh").
- **backfill ETA**: for scopes whose first (whole-history) pass has not finished: their
  remaining requests (the mean cost of the first passes finished so far, less what each has
  spent; at least one request each) over the same share of the budget. Until a first pass of the
  source has finished the ETA is a lower bound (``eta_lower_bound``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from psycopg_pool import ConnectionPool

from core.settings import SOURCE_NAMES, Rate, Settings, duration_text

#: The share of a source's budget that reconcile passes may plan to use; the rest is left to
#: webhook-driven fetches and to the fetches of the documents passes find changed.
PASS_SHARE = 0.8

_COSTS_SQL = """
    SELECT s.source, s.key, s.cursor IS NULL AS backfilling, coalesce(c.pass_requests, 0),
           c.first_pass_requests, c.last_pass_requests, coalesce(c.passes, 0), c.paused_until
    FROM scopes s LEFT JOIN scope_costs c ON c.source = s.source AND c.key = s.key
    WHERE s.active"""


def read_costs(conn: Any) -> list[tuple[Any, ...]]:
    """The cost rows of every active scope (a connection, so status reads them in its own)."""
    return list(conn.execute(_COSTS_SQL).fetchall())


def _tenths(seconds: float) -> float:
    """Rounded up to a tenth of a second (compressed budgets in tests are that short)."""
    return math.ceil(round(seconds * 10, 6)) / 10


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def assess(source: str, rate: Rate, configured: float, rows: Iterable[tuple[Any, ...]],
           now: datetime | None = None) -> dict[str, Any]:
    """The budget report of one source from its active scopes' cost rows (``read_costs``)."""
    now = now or datetime.now(timezone.utc)
    rows = [r for r in rows if r[0] == source]
    per_second = rate.per_second * PASS_SHARE
    incremental = [int(r[5]) for r in rows if r[5] is not None]
    firsts = [int(r[4]) for r in rows if r[4] is not None]
    steady_each = _mean(incremental) or 1.0
    pass_cost = sum(float(r[5]) if r[5] is not None else steady_each for r in rows)
    achievable = _tenths(pass_cost / per_second) if rows else 0.0
    effective = max(configured, achievable)
    backfilling = [r for r in rows if r[2]]
    first_each = _mean(firsts)
    remaining = 0.0
    for r in backfilling:
        spent = int(r[3])
        remaining += max((first_each or 0.0) - spent, 1.0)
    eta = _tenths(remaining / per_second) if backfilling else 0.0
    paused = [r[7] for r in rows if r[7] is not None and r[7] > now]
    report: dict[str, Any] = {
        "rate": str(rate),
        "requests_per_hour": round(rate.per_second * 3600, 2),
        "pass_share": PASS_SHARE,
        "scopes": len(rows),
        "scopes_measured": len(incremental),
        "pass_cost_requests": round(pass_cost, 1),
        "configured_interval_s": configured,
        "achievable_interval_s": achievable,
        "effective_interval_s": effective,
        "stretched": achievable > configured,
        "backfill": {
            "scopes_remaining": len(backfilling),
            "requests_remaining": math.ceil(remaining),
            "eta_s": eta,
            "eta_lower_bound": bool(backfilling) and first_each is None,
            "first_pass_requests": None if first_each is None else round(first_each, 1),
            "paused_scopes": len(paused),
            "resumes_at": min(paused).astimezone(timezone.utc).isoformat() if paused else None,
        },
        "warning": None,
    }
    if report["stretched"]:
        upper = source.upper()
        report["warning"] = (
            f"{source}: budget too small for {upper}_POLL_INTERVAL {duration_text(configured)}: a pass over "
            f"{len(rows)} scope{'' if len(rows) == 1 else 's'} costs ~{pass_cost:.0f} requests, which "
            f"{rate} ({PASS_SHARE:.0%} for passes) allows every {duration_text(achievable)} at best; "
            f"polling every {duration_text(achievable)} instead")
    return report


def source_report(pool: ConnectionPool, settings: Settings, source: str) -> dict[str, Any]:
    with pool.connection() as conn:
        rows = conn.execute(_COSTS_SQL + " AND s.source = %s", (source,)).fetchall()
    src = settings.source(source)
    return assess(source, src.rate, src.poll_interval, rows)


def reports(settings: Settings, rows: list[tuple[Any, ...]], now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Every configured source's report from ``read_costs`` rows."""
    out = {}
    for name in SOURCE_NAMES:
        src = settings.source(name)
        if src.configured:
            out[name] = assess(name, src.rate, src.poll_interval, rows, now)
    return out


def summary(report: dict[str, Any]) -> str:
    """One line for the CLI and the dashboard: ``every 15.0m (achievable 2m); backfill 3 scopes, ETA 1.2h``."""
    text = (f"every {duration_text(report['effective_interval_s'])} "
            f"(achievable {duration_text(report['achievable_interval_s'])} at {report['rate']})")
    backfill = report["backfill"]
    if backfill["scopes_remaining"]:
        bound = "≥ " if backfill["eta_lower_bound"] else ""
        text += (f"; backfill {backfill['scopes_remaining']} scope"
                 f"{'' if backfill['scopes_remaining'] == 1 else 's'}, ETA {bound}{duration_text(backfill['eta_s'])}")
    return text


# --- what the reconciler writes -----------------------------------------------------------------


def add_progress(pool: ConnectionPool, source: str, key: str, requests: int, pages: int) -> None:
    """Add what a pass spent since its last save (kept across interruptions)."""
    with pool.connection() as conn:
        conn.execute(
            """INSERT INTO scope_costs (source, key, pass_requests, pass_pages) VALUES (%s, %s, %s, %s)
               ON CONFLICT (source, key) DO UPDATE SET
                   pass_requests = scope_costs.pass_requests + excluded.pass_requests,
                   pass_pages = scope_costs.pass_pages + excluded.pass_pages,
                   paused_until = NULL, updated_at = now()""",
            (source, key, requests, pages),
        )


def finish_pass(pool: ConnectionPool, source: str, key: str, requests: int, pages: int, *, first: bool) -> int:
    """Close a finished pass (adding its last ``requests``); returns its whole cost."""
    with pool.connection() as conn:
        row = conn.execute(
            """INSERT INTO scope_costs (source, key, pass_requests, pass_pages) VALUES (%s, %s, %s, %s)
               ON CONFLICT (source, key) DO UPDATE SET
                   pass_requests = scope_costs.pass_requests + excluded.pass_requests,
                   pass_pages = scope_costs.pass_pages + excluded.pass_pages
               RETURNING pass_requests, pass_pages""",
            (source, key, requests, pages),
        ).fetchone()
        total, total_pages = (int(row[0]), int(row[1])) if row else (requests, pages)
        if first:
            conn.execute(
                """UPDATE scope_costs SET first_pass_requests = %s, first_pass_pages = %s
                   WHERE source = %s AND key = %s""", (total, total_pages, source, key))
        else:
            conn.execute("UPDATE scope_costs SET last_pass_requests = %s WHERE source = %s AND key = %s",
                         (total, source, key))
        conn.execute(
            """UPDATE scope_costs SET pass_requests = 0, pass_pages = 0, passes = passes + 1,
                   paused_until = NULL, updated_at = now() WHERE source = %s AND key = %s""", (source, key))
    return total


def pause(pool: ConnectionPool, source: str, key: str, requests: int, pages: int, wait: float) -> None:
    """A pass that ran out of budget: keep what it spent, note when it resumes."""
    add_progress(pool, source, key, requests, pages)
    with pool.connection() as conn:
        conn.execute("UPDATE scope_costs SET paused_until = now() + make_interval(secs => %s) "
                     "WHERE source = %s AND key = %s", (wait, source, key))
