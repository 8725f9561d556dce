"""The status report: one definition of health, read by every surface.

``GET /api/status``, the dashboard, ``/metrics``, ``vector-sync status`` (its exit code) and the
alerts all read ``build_status``; none works out a state of its own. The report is built from
state (Postgres) plus the queue in Redis.

Per configured source, and per scope, one ``state`` with a ``reason`` in words:

- ``failing``: the most recent attempts failed at some stage, whatever the age of the last
  success: a scope whose last pass failed (``last_error_at`` after ``last_success_at``) or whose
  last prune listing failed; a pipeline or discovery error newer than the source's last pipeline
  success (``source_stats.last_error_at`` after ``last_sync_at``, within ``stale_after``);
  documents failing (``documents.last_error``) for longer than ``DOCUMENT_FAILING_AFTER``; or a
  last drift audit that found drift (missing + stale + ghost + orphan vectors > 0).
- ``disabled``: credentials are set but every discovered scope is deactivated: nothing of it is
  maintained while its documents may still be searched.
- ``never synced``: no scope discovered yet, or no active scope has ever had a successful pass.
- ``stale``: an active scope's last successful pass is older than the source's ``stale_after``
  (or some active scopes never synced).
- ``fresh``: otherwise.
- ``not configured``: no credentials; such a source stays out of the overall flag.

``healthy`` (``all_fresh`` is the same value, kept for what already reads it) is true only when
Postgres and Redis answer, every configured source is ``fresh``, every process kind (web,
worker, reconciler) has a live heartbeat, no live process reports an outage in its heartbeat
(``info.outage``), no document (of a configured source or the push API) has been failing for
longer than ``DOCUMENT_FAILING_AFTER``, and no last drift audit found drift. ``reasons`` lists,
in words, every one of those that does not hold. ``warnings`` lists what on-call should know
but does not make the system unhealthy (documents of a deactivated scope still searchable,
stuck runs, a drift audit that could not finish).

When Postgres cannot be read the report is still built, with ``postgres.up`` false and that
reason; the routes answer it with 503.

Secrets never appear: only names, counts, ages and error messages (which never include them).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import psycopg_pool

from core import budget, metrics, queue, state, webhookhealth
from core.runtime import Services
from core.settings import SOURCE_NAMES, Settings, duration_text

PROCESS_KINDS = ("web", "worker", "reconciler")
#: Every state a configured source or a scope can be in ("not configured" is the rest).
STATES = ("fresh", "stale", "failing", "never synced", "disabled")
#: Worst first: how scopes are ordered, and which state wins for a source.
_SEVERITY = {"failing": 0, "disabled": 1, "never synced": 2, "stale": 3, "fresh": 4}
#: Seconds to wait for a database connection before calling Postgres unreachable.
DB_TIMEOUT = 8.0
#: Failed documents listed in the report (the admin API and CLI list more).
FAILED_DOCUMENTS_SHOWN = 20
#: Scopes listed per source (worst first); the counts cover them all.
SCOPES_SHOWN = 200
_DRIFT_KEYS = ("missing", "stale", "ghost", "orphan_vectors")


def _age(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round((now - moment).total_seconds(), 1)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()


duration = duration_text  # status text, the CLI and alerts say durations as settings take them


def _ago(moment: datetime | None, now: datetime) -> str:
    return "never" if moment is None else f"{duration(max(0.0, (now - moment).total_seconds()))} ago"


def _clock(moment: datetime, now: datetime) -> str:
    moment = moment.astimezone(timezone.utc)
    if now - moment < timedelta(hours=20):
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _short(text: str | None, limit: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# --- the report -------------------------------------------------------------------------------


class StatusCache:
    """``build_status`` at most once per ``ttl`` seconds, shared by every caller of one process.

    ``/api/status``, ``/metrics`` and the dashboard (which polls ``/api/status``) read the report
    through the receiver's one cache: however many clients poll, Postgres sees at most one set
    of status queries per ``STATUS_CACHE_TTL`` per receiver. Callers that arrive while a report
    is being built wait for that one rather than starting their own. The report handed out is
    shared: read it, never change it. ``ttl`` 0 builds a report for every call.
    """

    def __init__(self, ttl: float, clock: Any = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._report: dict[str, Any] | None = None
        self._built_at = 0.0

    def get(self, services: Services, settings: Settings) -> dict[str, Any]:
        if self.ttl <= 0:
            return build_status(services, settings)
        with self._lock:
            if self._report is None or self.clock() - self._built_at >= self.ttl:
                self._report = build_status(services, settings)
                # From when it was finished: a slow build (Postgres timing out) is not repeated
                # back to back.
                self._built_at = self.clock()
            return self._report


def build_status(services: Services, settings: Settings) -> dict[str, Any]:
    metrics.STATUS_BUILDS.inc()
    now = datetime.now(timezone.utc)
    redis = _redis_status(services)
    try:
        rows = _read_state(services, settings, now)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        return _unreadable(settings, now, redis, f"postgres unreachable: {_short(_error_text(exc), 300)}")
    return _assemble(settings, now, redis, rows)


def unreadable_report(settings: Settings, exc: BaseException) -> dict[str, Any]:
    """The report for a command that could not even open the database (``vector-sync status``)."""
    now = datetime.now(timezone.utc)
    redis: dict[str, Any] = {"up": False, "error": None, "depths": None, "dead": None}
    if settings.redis_url:
        broker = None
        try:
            broker = queue.make_broker(settings.redis_url)
            redis = _redis_status(Services(settings, None, None, broker))  # type: ignore[arg-type]
        except Exception as redis_exc:
            redis["error"] = f"redis unreachable: {_short(_error_text(redis_exc), 300)}"
        finally:
            if broker is not None:
                broker.close()
    what = ("postgres unreachable" if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
            else "state cannot be read")
    if isinstance(exc, psycopg_pool.PoolTimeout) and settings.database_url:
        # The pool only says it timed out; one direct attempt says why (refused, auth, ...).
        try:
            psycopg.connect(settings.database_url, connect_timeout=5).close()
        except psycopg.Error as direct:
            exc = direct
    return _unreadable(settings, now, redis, f"{what}: {_short(_error_text(exc), 300)}")


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _redis_status(services: Services) -> dict[str, Any]:
    try:
        depths = queue.queue_depths(services.broker)
        dead = queue.dead_letter_count(services.broker)
        oldest = queue.oldest_waiting_ages(services.broker)
    except Exception as exc:  # status must answer even when Redis does not
        return {"up": False, "error": f"redis unreachable: {_short(_error_text(exc), 300)}",
                "depths": None, "dead": None}
    return {"up": True, "error": None, "depths": depths, "dead": dead, "oldest": oldest}


def _read_state(services: Services, settings: Settings, now: datetime) -> dict[str, Any]:
    failing_before = now - timedelta(seconds=settings.document_failing_after)
    with services.pool.connection(timeout=DB_TIMEOUT) as conn:
        out: dict[str, Any] = {}
        out["scopes"] = conn.execute(
            """SELECT s.source, s.key, s.name, s.active, s.last_success_at, s.last_attempt_at,
                      s.last_error, s.last_error_at, f.failed, f.since, p.status, p.error, p.finished_at
               FROM scopes s
               LEFT JOIN LATERAL (
                   -- Only for a scope whose last pass failed: its failed passes since its last
                   -- success (passes of one scope never overlap, so started after it).
                   SELECT count(*) AS failed, min(r.finished_at) AS since FROM runs r
                   WHERE s.last_error_at > coalesce(s.last_success_at, '-infinity'::timestamptz)
                     AND r.source = s.source AND r.scope = s.key AND r.kind = 'reconcile'
                     AND r.started_at > coalesce(s.last_success_at, '-infinity'::timestamptz)
                     AND r.status = 'failed'
               ) f ON true
               LEFT JOIN LATERAL (
                   SELECT r.status, r.error, r.finished_at FROM runs r
                   WHERE r.source = s.source AND r.scope = s.key AND r.kind = 'prune'
                     AND r.status IN ('succeeded', 'failed')
                   ORDER BY r.started_at DESC LIMIT 1
               ) p ON true
               ORDER BY s.source, s.key"""
        ).fetchall()
        # Per (source, scope): live documents, vectors, documents with errors, failing too long.
        out["docs"] = conn.execute(
            """SELECT source, scope,
                      count(*) FILTER (WHERE deleted_at IS NULL AND chunk_count > 0),
                      coalesce(sum(chunk_count) FILTER (WHERE deleted_at IS NULL), 0),
                      count(*) FILTER (WHERE last_error IS NOT NULL),
                      count(*) FILTER (WHERE last_error IS NOT NULL
                                       AND coalesce(error_since, last_error_at) <= %s)
               FROM documents GROUP BY source, scope""",
            (failing_before,),
        ).fetchall()
        # The longest-failing document of each (source, scope), for the reason.
        out["oldest_failing"] = conn.execute(
            """SELECT DISTINCT ON (source, scope) source, scope, document_id, error_stage, last_error,
                      coalesce(error_since, last_error_at)
               FROM documents WHERE last_error IS NOT NULL
               ORDER BY source, scope, coalesce(error_since, last_error_at), document_id"""
        ).fetchall()
        out["stats"] = {
            row[0]: row
            for row in conn.execute(
                """SELECT source, synced, unchanged, metadata_only, deleted, stale_ignored, failed,
                          last_sync_at, last_error, last_error_at, webhooks_received,
                          webhooks_rejected, last_webhook_at, last_rejection, last_rejection_at,
                          deferred, failures_by_stage, last_error_stage
                   FROM source_stats"""
            ).fetchall()
        }
        out["runs"] = {
            row[0]: row[1:]
            for row in conn.execute(
                """SELECT source,
                          count(*) FILTER (WHERE status = 'running'),
                          count(*) FILTER (WHERE status = 'running'
                                           AND progress_at < now() - make_interval(secs => %s)),
                          count(*) FILTER (WHERE status = 'failed'
                                           AND started_at > now() - interval '24 hours')
                   FROM runs GROUP BY source""",
                (settings.stuck_after,),
            ).fetchall()
        }
        # The newest finished drift audit of each (source, scope), per outcome.
        out["audits"] = conn.execute(
            """SELECT DISTINCT ON (source, coalesce(scope, ''), status)
                      id, source, scope, status, finished_at, counters, error
               FROM runs WHERE kind = 'verify' AND status IN ('succeeded', 'failed')
                 AND finished_at IS NOT NULL
               ORDER BY source, coalesce(scope, ''), status, finished_at DESC, id DESC"""
        ).fetchall()
        out["failures"] = conn.execute(
            """SELECT id, kind, source, scope, error, finished_at FROM runs
               WHERE status = 'failed' ORDER BY finished_at DESC NULLS LAST LIMIT 10"""
        ).fetchall()
        out["beats"] = conn.execute(
            """SELECT process, kind, pid, host, beat_at, started_at, info FROM heartbeats
               WHERE beat_at > now() - interval '1 day' ORDER BY kind, process"""
        ).fetchall()
        # GitHub's webhook gap repair (core/webhookhealth.py reads it).
        out["redelivery"] = (conn.execute("SELECT value FROM kv WHERE key = %s",
                                          (webhookhealth.REDELIVERY_KEY,)).fetchone() or [None])[0]
        out["budget"] = budget.read_costs(conn)  # pass costs per scope (core/budget.py)
        out["pending_token"] = conn.execute(
            "SELECT key FROM kv WHERE key LIKE '%.verification_token'"
        ).fetchall()
    out["failed_documents"] = state.failed_documents(services.pool, limit=FAILED_DOCUMENTS_SHOWN)
    return out


def _queue_part(redis: dict[str, Any]) -> dict[str, Any]:
    depths = redis["depths"]
    return {"depth": None if depths is None else sum(depths.values()),
            "live": None if depths is None else depths[queue.QUEUE],
            "bulk": None if depths is None else depths[queue.BULK_QUEUE],
            "dead_letters": redis["dead"], "error": redis["error"],
            # Per queue: messages waiting, delayed or in flight, and the age of the oldest one
            # waiting to be fetched (0 when none waits).
            "queues": None if depths is None else {
                name: {"depth": depths[name], "oldest_waiting_age_s": (redis.get("oldest") or {}).get(name) or 0.0}
                for name in depths}}


def _index_part(settings: Settings) -> dict[str, Any]:
    return {"backend": "pinecone" if settings.pinecone_host and settings.pinecone_api_key else "pgvector"}


def _unreadable(settings: Settings, now: datetime, redis: dict[str, Any], reason: str) -> dict[str, Any]:
    """The report when Postgres cannot be read: unhealthy, saying why, with what Redis says."""
    reasons = [reason] + ([redis["error"]] if redis["error"] else [])
    return {
        "generated_at": _iso(now), "healthy": False, "all_fresh": False, "level": "bad",
        "reasons": reasons, "warnings": [],
        "postgres": {"up": False, "error": reason}, "redis": {"up": redis["up"], "error": redis["error"]},
        "document_failing_after_s": settings.document_failing_after,
        "sources": {}, "push_api": None, "queue": _queue_part(redis), "processes": [],
        "processes_alive": {}, "process_outages": [], "documents_failing": None,
        "failed_documents": [], "recent_failures": [], "audits_elsewhere": [],
        "index": _index_part(settings), "pending_verification_tokens": [],
    }


def _assemble(settings: Settings, now: datetime, redis: dict[str, Any], rows: dict[str, Any]) -> dict[str, Any]:
    threshold = settings.document_failing_after
    scopes_by_source: dict[str, list[Any]] = {}
    for row in rows["scopes"]:
        scopes_by_source.setdefault(row[0], []).append(row)
    docs: dict[str, dict[str, tuple[int, int, int, int]]] = {}
    for source, scope, live, vectors, with_errors, failing in rows["docs"]:
        docs.setdefault(source, {})[scope] = (int(live), int(vectors), int(with_errors), int(failing))
    oldest: dict[str, dict[str, Any]] = {}
    for source, scope, document_id, stage, error, since in rows["oldest_failing"]:
        oldest.setdefault(source, {})[scope] = {"document_id": document_id, "stage": stage,
                                                "error": error, "since": since or now}
    audits: dict[str, list[Any]] = {}
    for row in rows["audits"]:
        audits.setdefault(row[1], []).append(row)

    sources: dict[str, Any] = {}
    for name in SOURCE_NAMES:
        sources[name] = _source_status(
            name, settings, now, scopes_by_source.get(name, []), docs.get(name, {}),
            oldest.get(name, {}), rows["stats"].get(name), rows["runs"].get(name), audits.get(name, []),
        )
        # Webhook health per source (core/webhookhealth.py): last received, refusals, redeliveries.
        hooks = webhookhealth.health(name, rows["stats"].get(name), now, github=settings.source("github"),
                                     redelivery_row=rows.get("redelivery"))
        sources[name]["webhooks"] = hooks
        if sources[name]["configured"]:
            sources[name]["warnings"] += webhookhealth.warnings(name, hooks)

    # Each configured source's schedule against its request budget; a configured interval the
    # budget cannot pay is a reason (amber), not a silent lag.
    for name, report in budget.reports(settings, rows.get("budget", []), now).items():
        sources[name]["budget"] = report

    processes = []
    for p, kind, pid, host, beat, started, info in rows["beats"]:
        info = info if isinstance(info, dict) else {}
        outage = info.get("outage")
        processes.append({
            "process": p, "kind": kind, "pid": pid, "host": host,
            "started_at": _iso(started), "heartbeat_at": _iso(beat),
            "heartbeat_age_s": _age(beat, now),
            "alive": (now - beat).total_seconds() < settings.heartbeat_timeout,
            "outage": _short(str(outage), 300) if outage else None,
        })
    kinds_alive = {k: any(p["alive"] for p in processes if p["kind"] == k) for k in PROCESS_KINDS}
    outages = [{"process": p["process"], "kind": p["kind"], "outage": p["outage"]}
               for p in processes if p["alive"] and p["outage"]]

    reasons: list[str] = []
    warnings: list[str] = []
    bad = False  # something is failing or down (red), not only behind (amber)
    if redis["error"]:
        reasons.append(redis["error"])
        bad = True
    for name, s in sources.items():
        if not s["configured"]:
            continue
        if s["state"] != "fresh":
            reasons.append(s["reason"])
            bad = bad or s["state"] == "failing"
        warnings += s["warnings"]
        if (s.get("budget") or {}).get("warning"):
            reasons.append(s["budget"]["warning"])
    for kind, alive in kinds_alive.items():
        if alive:
            continue
        bad = True
        mine = [p for p in processes if p["kind"] == kind]
        if mine:
            last = min(mine, key=lambda p: p["heartbeat_age_s"])
            reasons.append(f"no live {kind} process (last heartbeat {duration(last['heartbeat_age_s'])} ago "
                           f"from {last['process']})")
        else:
            reasons.append(f"no {kind} process has a heartbeat")
    for o in outages:
        bad = True
        reasons.append(f"{o['process']} reports an outage: {o['outage']}")

    # Documents of the push API failing too long make the system unhealthy too (those of a
    # source without credentials stay out, like the source).
    failing_total = 0
    for source, by_scope in docs.items():
        if source in sources and not sources[source]["configured"]:
            continue
        count = sum(v[3] for v in by_scope.values())
        failing_total += count
        if count and source not in sources:
            first = min((o for o in oldest.get(source, {}).values()), key=lambda o: o["since"])
            reasons.append(f"{source}: {_failing_docs_text(count, first, now)}")
            bad = True

    # Audits recorded under a name that is no source (a whole-index audit).
    elsewhere = []
    for source, audit_rows in audits.items():
        if source in sources:
            continue
        audit = _audit_summary(audit_rows, now)
        if audit:
            elsewhere.append({"source": source, **audit})
            if audit["drift"]:
                reasons.append(f"{source}: {_drift_text(audit)}")
                bad = True

    postgres = {"up": True, "error": None}
    healthy = not reasons
    api_docs = docs.get("api", {})
    api_totals = [sum(v[i] for v in api_docs.values()) for i in range(4)]
    return {
        "generated_at": _iso(now),
        "healthy": healthy,
        "all_fresh": healthy,  # the former name of ``healthy``, kept for what reads it
        "level": "ok" if healthy else ("bad" if bad else "warn"),
        "reasons": reasons,
        "warnings": warnings,
        "postgres": postgres,
        "redis": {"up": redis["up"], "error": redis["error"]},
        "document_failing_after_s": threshold,
        "sources": sources,
        "push_api": {"documents": api_totals[0], "vectors": api_totals[1],
                     "documents_with_errors": api_totals[2], "documents_failing": api_totals[3]},
        "queue": _queue_part(redis),
        "processes": processes,
        "processes_alive": kinds_alive,
        "process_outages": outages,
        "documents_failing": failing_total,
        "failed_documents": [
            {"document_id": d["document_id"], "source": d["source"], "scope": d["scope"],
             "stage": d["stage"], "error": _short(d["error"], 500),
             "error_since": _iso(d["error_since"]), "last_error_at": _iso(d["last_error_at"]),
             "failing_for_s": _age(d["error_since"] or d["last_error_at"], now),
             "attempts": d["attempts"]}
            for d in rows["failed_documents"]
        ],
        "recent_failures": [
            {"run_id": r[0], "kind": r[1], "source": r[2], "scope": r[3], "error": r[4],
             "finished_at": _iso(r[5])}
            for r in rows["failures"]
        ],
        "audits_elsewhere": elsewhere,
        "index": _index_part(settings),
        # Handshake tokens received but not yet configured (the token itself is not shown here).
        "pending_verification_tokens": [
            source for source in (row[0].split(".", 1)[0] for row in rows["pending_token"])
            if source in settings.sources
            and not settings.source(source).get(f"{source.upper()}_WEBHOOK_TOKEN")
        ],
    }


def _failing_docs_text(count: int, first: dict[str, Any], now: datetime) -> str:
    stage = first["stage"] or "unknown stage"
    return (f"{_plural(count, 'document')} failing for over {duration((now - first['since']).total_seconds())} "
            f"({stage}: {_short(first['error'], 160)})")


def _audit_summary(rows: list[Any], now: datetime) -> dict[str, Any] | None:
    """The last drift audit of a source from the newest audit row of each scope and outcome:
    a whole-source audit (scope NULL) counts with every scope audit newer than it."""
    succeeded = [r for r in rows if r[3] == "succeeded"]
    failed = [r for r in rows if r[3] == "failed"]
    if not succeeded and not failed:
        return None
    counts = dict.fromkeys(_DRIFT_KEYS, 0)
    samples: dict[str, Any] = {}
    whole = next((r for r in succeeded if r[2] is None), None)
    current = [r for r in succeeded if r[2] is None or whole is None or r[4] > whole[4]]
    for r in current:
        counters = r[5] if isinstance(r[5], dict) else {}
        drift = 0
        for key in _DRIFT_KEYS:
            counts[key] += _int(counters.get(key))
            drift += _int(counters.get(key))
        if isinstance(counters.get("samples"), dict) and drift:
            for key, ids in counters["samples"].items():
                if isinstance(ids, list):
                    samples.setdefault(key, []).extend(str(i) for i in ids[: 5])
    # The newest audit of each scope names the scopes that drift: those newer than the last
    # whole-source audit, and, when that one found drift too (a summary folding its scopes'
    # audits, as core.verify writes them), the older ones it speaks for.
    whole_drift = whole is not None and any(_int((whole[5] or {}).get(k)) for k in _DRIFT_KEYS)
    drifting_scopes = sorted(
        r[2] for r in succeeded
        if r[2] is not None and (r in current or whole_drift)
        and isinstance(r[5], dict) and any(_int(r[5].get(k)) for k in _DRIFT_KEYS)
    )
    latest = max(current, key=lambda r: r[4]) if current else None
    latest_failed = max(failed, key=lambda r: r[4]) if failed else None
    return {
        "run_id": latest[0] if latest else None,
        "finished_at": _iso(latest[4]) if latest else None,
        "age_s": _age(latest[4], now) if latest else None,
        **counts,
        "drift": sum(counts.values()),
        "drifting_scopes": drifting_scopes,
        "samples": {k: v[:10] for k, v in samples.items()},
        # An audit that could not finish after the last one that did.
        "last_failure": None if latest_failed is None or (latest and latest_failed[4] < latest[4]) else {
            "run_id": latest_failed[0], "finished_at": _iso(latest_failed[4]),
            "error": _short(latest_failed[6], 300)},
    }


def _drift_text(audit: dict[str, Any]) -> str:
    where = f" in {', '.join(audit['drifting_scopes'][:5])}" if audit["drifting_scopes"] else ""
    return (f"last drift audit ({duration(audit['age_s'])} ago) found drift{where}: "
            f"{audit['missing']} missing, {audit['stale']} stale, {audit['ghost']} ghost, "
            f"{audit['orphan_vectors']} orphan vectors")


def scope_row_state(active: bool, last_success: datetime | None, last_error_at: datetime | None,
                    stale_after: float, now: datetime) -> str:
    """What a scope's own row says: ``disabled`` (deactivated), ``failing`` (its last pass
    failed), ``never synced``, ``stale`` (last success older than ``stale_after``) or
    ``fresh``. Status adds what only it reads (failed prunes, failing documents, audits); search
    marks a result ``stale`` from this alone, so both tell one story."""
    if not active:
        return "disabled"
    if last_error_at is not None and (last_success is None or last_error_at > last_success):
        return "failing"
    if last_success is None:
        return "never synced"
    if (now - last_success).total_seconds() > stale_after:
        return "stale"
    return "fresh"


def _scope_status(row: Any, src_stale_after: float, docs: tuple[int, int, int, int] | None,
                  first_failing: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    (_, key, name, active, success, attempt, error, error_at, failed_runs, failing_since,
     prune_status, prune_error, prune_at) = row
    live, _, with_errors, failing_docs = docs or (0, 0, 0, 0)
    label = f"scope {key}" + (f" ({name})" if name and name != key else "")
    base = scope_row_state(active, success, error_at, src_stale_after, now)
    # ``summary`` is the reason without the scope's name, and ``since`` when the state began
    # (failing, stale) or last changed (fresh: the last success), for tables that already name
    # the scope (the dashboard's per-scope table).
    since: datetime | None = None
    if base == "disabled":
        state_ = "disabled"
        summary = "deactivated" + (
            f"; {_plural(live, 'document')} still searchable, no longer maintained" if live else "")
        reason = f"{label} is {summary}"
    elif base == "failing":
        since = failing_since or error_at
        times = max(_int(failed_runs), 1)
        state_ = "failing"
        reason = (f"{label}: listing failed {_plural(times, 'time')} since {_clock(since, now)}: "
                  f"{_short(error, 200)}")
        summary = (f"failing since {_clock(since, now)} (listing failed {_plural(times, 'time')}): "
                   f"{_short(error, 200)}")
    elif prune_status == "failed":
        state_, since = "failing", prune_at
        reason = f"{label}: prune listing failed {_ago(prune_at, now)}: {_short(prune_error, 200)}"
        summary = f"failing since {_clock(prune_at, now)} (prune listing failed): {_short(prune_error, 200)}"
    elif failing_docs and first_failing:
        state_, since = "failing", first_failing["since"]
        reason = f"{label}: {_failing_docs_text(failing_docs, first_failing, now)}"
        summary = (f"failing since {_clock(since, now)}: {_plural(failing_docs, 'document')} failing "
                   f"({first_failing['stage'] or 'unknown stage'}: {_short(first_failing['error'], 160)})")
    elif base == "never synced":
        state_, reason, summary = "never synced", f"{label} never synced", "never synced"
    elif base == "stale":
        state_, since = "stale", success + timedelta(seconds=src_stale_after)
        summary = (f"stale since {_clock(since, now)} (last successful pass {_ago(success, now)}, "
                   f"stale after {duration(src_stale_after)})")
        reason = f"{label}: {summary}"
    else:
        state_, since = "fresh", success
        summary = f"synced {_ago(success, now)}"
        reason = f"{label}: {summary}"
    return {
        "key": key, "name": name, "active": bool(active), "state": state_, "reason": reason,
        "summary": summary, "since": _iso(since),
        "last_success_at": _iso(success), "last_success_age_s": _age(success, now),
        "last_attempt_at": _iso(attempt),
        "last_error": error if error_at is not None and (success is None or error_at > success) else None,
        "last_error_at": _iso(error_at),
        "failed_attempts": _int(failed_runs),
        "documents": live, "documents_with_errors": with_errors, "documents_failing": failing_docs,
    }


def _source_status(
    name: str, settings: Settings, now: datetime, scope_rows: list[Any],
    docs: dict[str, tuple[int, int, int, int]], oldest: dict[str, dict[str, Any]],
    stat_row: Any, run_row: Any, audit_rows: list[Any],
) -> dict[str, Any]:
    src = settings.source(name)
    scopes_out = [
        _scope_status(row, src.stale_after, docs.get(row[1]), oldest.get(row[1]), now) for row in scope_rows
    ]
    active = [s for s in scopes_out if s["active"]]
    inactive_keys = {s["key"] for s in scopes_out if not s["active"]}
    documents = sum(v[0] for v in docs.values())
    vectors = sum(v[1] for v in docs.values())
    doc_errors = sum(v[2] for v in docs.values())
    docs_failing = sum(v[3] for v in docs.values())
    inactive_docs = sum(v[0] for scope, v in docs.items() if scope in inactive_keys)
    in_flight, stuck, failed_24h = run_row or (0, 0, 0)
    # The oldest last success among the active scopes that have one (never synced ones are
    # counted apart, in ``never_synced``).
    successes = [row[4] for row in scope_rows if row[3] and row[4] is not None]
    oldest_success = min(successes) if successes else None
    age = _age(oldest_success, now)
    failing_scopes = [s for s in active if s["state"] == "failing"]
    never = [s for s in active if s["last_success_at"] is None]
    audit = _audit_summary(audit_rows, now)

    # The pipeline's (or discovery's) last error counts while it is newer than the last pipeline
    # success and younger than stale_after; after that, the documents' own errors and the scopes'
    # passes say whether it still fails.
    stat_error = stat_error_at = stat_stage = None
    pipeline_failing = False
    if stat_row is not None:
        stat_error, stat_error_at, stat_stage = stat_row[8], stat_row[9], stat_row[17]
        last_sync = stat_row[7]
        if stat_stage is None:
            # A discovery (or unstaged) error is also answered by a later successful pass of any
            # scope: the source's API answered listings again.
            passes = [row[4] for row in scope_rows if row[4] is not None]
            if passes and (last_sync is None or max(passes) > last_sync):
                last_sync = max(passes)
        pipeline_failing = (
            stat_error_at is not None and (last_sync is None or stat_error_at > last_sync)
            and (now - stat_error_at).total_seconds() <= src.stale_after
        )
    failures_by_stage = {str(k): _int(v) for k, v in ((stat_row[16] or {}) if stat_row else {}).items()}

    state_: str
    reason: str
    problems: list[str] = []
    if not src.configured:
        state_, reason = "not configured", f"{name}: not configured (no credentials set)"
    else:
        if failing_scopes:
            first = failing_scopes[0]
            more = f" (and {_plural(len(failing_scopes) - 1, 'other scope')})" if len(failing_scopes) > 1 else ""
            problems.append(first["reason"] + more)
        if pipeline_failing and stat_error_at is not None:
            stage = stat_stage or ("discovery" if (stat_error or "").startswith("discovery") else "pipeline")
            stage_count = failures_by_stage.get(stat_stage or "", 0)
            counted = f" ({stage_count} {stat_stage} failures in all)" if stage_count > 1 else ""
            problems.append(f"{stage} failed {_ago(stat_error_at, now)}, no success since{counted}: "
                            f"{_short(stat_error, 200)}")
        if docs_failing and not (problems and "failing for over" in problems[0]):
            first_doc = min(oldest.values(), key=lambda o: o["since"])
            problems.append(_failing_docs_text(docs_failing, first_doc, now))
        if audit and audit["drift"]:
            problems.append(_drift_text(audit))
        if problems:
            state_ = "failing"
            reason = f"{name}: " + "; ".join(p.removeprefix(f"{name}: ") for p in problems)
        elif scopes_out and not active:
            state_ = "disabled"
            reason = (f"{name}: every scope is deactivated ({len(scopes_out)}); nothing is synced"
                      + (f", {_plural(inactive_docs, 'document')} still searchable" if inactive_docs else ""))
        elif not scopes_out:
            state_, reason = "never synced", f"{name}: never synced (no scope discovered yet)"
        elif len(never) == len(active):
            state_ = "never synced"
            reason = (f"{name}: scope {never[0]['key']} never synced" if len(never) == 1
                      else f"{name}: none of {len(never)} active scopes has synced yet")
        elif never:
            state_ = "stale"
            keys = ", ".join(s["key"] for s in never[:5]) + ("…" if len(never) > 5 else "")
            reason = f"{name}: {_plural(len(never), 'scope')} never synced ({keys})"
        else:
            stale = [s for s in active if s["state"] == "stale"]
            if stale:
                worst = max(stale, key=lambda s: s["last_success_age_s"] or 0)
                state_ = "stale"
                reason = (f"{name}: {_plural(len(stale), 'scope')} behind; {worst['key']} last synced "
                          f"{duration(worst['last_success_age_s'])} ago (stale after {duration(src.stale_after)})")
            else:
                state_ = "fresh"
                reason = (f"{name}: {_plural(len(active), 'active scope')} synced within "
                          f"{duration(src.stale_after)} (oldest {duration(age)} ago)")
    warnings: list[str] = []
    if src.configured:
        if inactive_docs and state_ != "disabled":
            keys = sorted(k for k in inactive_keys if docs.get(k, (0,))[0])
            warnings.append(f"{name}: {_plural(inactive_docs, 'document')} in deactivated "
                            f"{'scope' if len(keys) == 1 else 'scopes'} {', '.join(keys[:5])} still "
                            f"searchable, no longer maintained")
        if stuck:
            warnings.append(f"{name}: {_plural(int(stuck), 'run')} without progress for "
                            f"{duration(settings.stuck_after)}")
        if audit and audit["last_failure"]:
            warnings.append(f"{name}: the last drift audit did not finish: {audit['last_failure']['error']}")
    last_error, last_error_at = None, None
    for s in scopes_out:
        if s["last_error"] and (last_error_at is None or (s["last_error_at"] or "") > last_error_at):
            last_error, last_error_at = s["last_error"], s["last_error_at"]
    if stat_error_at is not None and (last_error_at is None or _iso(stat_error_at) > last_error_at):  # type: ignore[operator]
        last_error, last_error_at = stat_error, _iso(stat_error_at)
    scopes_out.sort(key=lambda s: (_SEVERITY.get(s["state"], 9), s["key"]))
    return {
        "configured": src.configured,
        "state": state_,
        "reason": reason,
        "fresh": (state_ == "fresh") if src.configured else None,
        "stale_after_s": src.stale_after,
        "poll_interval_s": src.poll_interval,
        "last_success_at": _iso(oldest_success),
        "last_success_age_s": age,
        "scopes": {"active": len(active), "total": len(scopes_out), "never_synced": len(never),
                   "failing": len(failing_scopes), "inactive": len(inactive_keys)},
        "scope_list": scopes_out[:SCOPES_SHOWN],
        "scope_list_truncated": len(scopes_out) > SCOPES_SHOWN,
        "documents": documents,
        "vectors": vectors,
        "documents_with_errors": doc_errors,
        "documents_failing": docs_failing,
        "inactive_scope_documents": inactive_docs,
        "warnings": warnings,
        "last_error": last_error,
        "last_error_at": last_error_at,
        "last_error_stage": stat_stage,
        "failures_by_stage": failures_by_stage,
        "audit": audit,
        "runs": {"in_flight": int(in_flight), "stuck": int(stuck), "failed_24h": int(failed_24h)},
        "pipeline": {
            k: int(stat_row[i]) if stat_row else 0
            for k, i in (("synced", 1), ("unchanged", 2), ("metadata_only", 3), ("deleted", 4),
                         ("stale_ignored", 5), ("deferred", 15), ("failed", 6))
        },
        "last_indexed_at": _iso(stat_row[7]) if stat_row else None,
        "webhooks": {
            "received": int(stat_row[10]) if stat_row else 0,
            "rejected": int(stat_row[11]) if stat_row else 0,
            "last_received_at": _iso(stat_row[12]) if stat_row else None,
            "last_rejection": stat_row[13] if stat_row else None,
        },
    }


# --- /metrics ---------------------------------------------------------------------------------


def render_metrics(status: dict[str, Any]) -> str:
    """Prometheus text exposition of a status report (also of one built without Postgres)."""
    lines: list[str] = []

    def metric(name: str, help_text: str, kind: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP vector_sync_{name} {help_text}")
        lines.append(f"# TYPE vector_sync_{name} {kind}")
        for labels, value in samples:
            label = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"vector_sync_{name}{{{label}}} {value}" if label else f"vector_sync_{name} {value}")

    healthy = int(bool(status["healthy"]))
    metric("healthy", "1 when the status report is healthy (see docs/operations.md)", "gauge", [({}, healthy)])
    metric("all_fresh", "Former name of vector_sync_healthy (same value)", "gauge", [({}, healthy)])
    metric("up", "1 when the component answers", "gauge",
           [({"component": "postgres"}, int(bool(status["postgres"]["up"]))),
            ({"component": "redis"}, int(bool(status["redis"]["up"])))])
    metric("unhealthy_reasons", "How many reasons the report gives for not being healthy", "gauge",
           [({}, len(status["reasons"]))])
    sources = status["sources"]
    metric("source_configured", "1 when the source has credentials", "gauge",
           [({"source": n}, int(s["configured"])) for n, s in sources.items()])
    metric("source_state", "1 for the source's current state, 0 for the others", "gauge",
           [({"source": n, "state": st}, int(s["state"] == st))
            for n, s in sources.items() if s["configured"] for st in STATES])
    metric("source_fresh", "1 when the source's state is fresh", "gauge",
           [({"source": n}, int(bool(s["fresh"]))) for n, s in sources.items() if s["configured"]])
    metric("source_last_success_age_seconds", "Age of the oldest active scope's last successful pass", "gauge",
           [({"source": n}, s["last_success_age_s"]) for n, s in sources.items()
            if s["last_success_age_s"] is not None])
    metric("source_stale_after_seconds", "Age of the last successful pass beyond which the source is stale",
           "gauge", [({"source": n}, s["stale_after_s"]) for n, s in sources.items()
                     if s.get("stale_after_s") is not None])
    budgets = {n: s["budget"] for n, s in sources.items() if s.get("budget")}  # core/budget.py
    metric("source_poll_interval_seconds", "Poll interval: configured, achievable at the budget, effective",
           "gauge", [({"source": n, "kind": k}, b[f"{k}_interval_s"]) for n, b in budgets.items()
                     for k in ("configured", "achievable", "effective")])
    metric("source_backfill_eta_seconds", "Estimated seconds until every scope's first pass is done",
           "gauge", [({"source": n}, b["backfill"]["eta_s"]) for n, b in budgets.items()])
    metric("failures_total", "Failures counted by stage (listing, fetch, validate, embed, index, record)",
           "counter", [({"source": n, "stage": stage}, count) for n, s in sources.items()
                       for stage, count in sorted(s["failures_by_stage"].items())])
    if status["push_api"] is not None:
        metric("documents", "Documents indexed", "gauge",
               [({"source": n}, s["documents"]) for n, s in sources.items()]
               + [({"source": "api"}, status["push_api"]["documents"])])
        metric("vectors", "Vectors (chunks) indexed", "gauge",
               [({"source": n}, s["vectors"]) for n, s in sources.items()]
               + [({"source": "api"}, status["push_api"]["vectors"])])
        metric("documents_with_errors", "Documents whose last attempt failed", "gauge",
               [({"source": n}, s["documents_with_errors"]) for n, s in sources.items()]
               + [({"source": "api"}, status["push_api"]["documents_with_errors"])])
        metric("documents_failing", "Documents failing for longer than DOCUMENT_FAILING_AFTER", "gauge",
               [({"source": n}, s["documents_failing"]) for n, s in sources.items()]
               + [({"source": "api"}, status["push_api"]["documents_failing"])])
    metric("inactive_scope_documents", "Searchable documents of deactivated scopes (no longer maintained)",
           "gauge", [({"source": n}, s["inactive_scope_documents"]) for n, s in sources.items()])
    metric("audit_drift", "Drift found by the last audit (missing + stale + ghost + orphan vectors)", "gauge",
           [({"source": n, "kind": k}, s["audit"][k]) for n, s in sources.items() if s["audit"]
            for k in _DRIFT_KEYS])
    metric("audit_age_seconds", "Age of the last finished drift audit", "gauge",
           [({"source": n}, s["audit"]["age_s"]) for n, s in sources.items()
            if s["audit"] and s["audit"]["age_s"] is not None])
    for counter in ("synced", "unchanged", "metadata_only", "deleted", "stale_ignored", "deferred", "failed"):
        metric(f"pipeline_{counter}_total", f"Documents the pipeline counted as {counter}", "counter",
               [({"source": n}, s["pipeline"][counter]) for n, s in sources.items()])
    metric("webhooks_received_total", "Webhooks accepted", "counter",
           [({"source": n}, s["webhooks"]["received"]) for n, s in sources.items()])
    metric("webhooks_rejected_total", "Webhooks refused", "counter",
           [({"source": n}, s["webhooks"]["rejected"]) for n, s in sources.items()])
    metric("webhooks_redelivered_total", "Failed webhook deliveries the gap repair had sent again", "counter",
           [({"source": n}, s["webhooks"]["redelivery"]["redelivered"]) for n, s in sources.items()
            if (s["webhooks"].get("redelivery") or {}).get("enabled")])
    metric("runs_in_flight", "Reconcile/backfill/prune runs in progress", "gauge",
           [({"source": n}, s["runs"]["in_flight"]) for n, s in sources.items()])
    metric("runs_stuck", "Runs with no progress for STUCK_AFTER", "gauge",
           [({"source": n}, s["runs"]["stuck"]) for n, s in sources.items()])
    queue_info = status["queue"]
    if queue_info["depth"] is not None:
        metric("queue_depth", "Sync messages waiting or in flight", "gauge", [({}, queue_info["depth"])])
        metric("dead_letters", "Sync messages that exhausted their retries", "gauge",
               [({}, queue_info["dead_letters"])])
    if queue_info.get("queues"):
        metric("queue_messages", "Per queue: messages waiting, delayed for a retry or in flight", "gauge",
               [({"queue": q}, v["depth"]) for q, v in queue_info["queues"].items()])
        metric("queue_oldest_message_age_seconds",
               "Per queue: age of the oldest message waiting to be fetched (0 when none waits)", "gauge",
               [({"queue": q}, v["oldest_waiting_age_s"]) for q, v in queue_info["queues"].items()])
    metric("process_alive", "1 when a process of this kind has a recent heartbeat", "gauge",
           [({"kind": k}, int(v)) for k, v in status["processes_alive"].items()])
    metric("process_outages", "Live processes reporting an outage (of Redis, Postgres, ...)", "gauge",
           [({"kind": k}, sum(1 for o in status["process_outages"] if o["kind"] == k))
            for k in status["processes_alive"]])
    metric("status_generated_timestamp_seconds", "When this report was built", "gauge",
           [({}, round(time.time(), 3))])
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
