"""The status report: per source, is the index fresh, what is failing; per process, is it alive.

Built from state only (plus the queue's depth in Redis), so every surface — ``GET
/api/status``, the dashboard, ``/metrics``, ``vector-sync status`` and alerts — tells the same
story. Rules:

- a configured source is *fresh* when every active scope had a successful pass within the
  source's ``stale_after``; a scope never synced counts as stale, so a reconciler that never
  runs shows up as stale, not as silence;
- a source whose most recent pass failed is *failing*, whatever its age;
- a process is *alive* when its heartbeat is younger than ``HEARTBEAT_TIMEOUT``; each kind
  (web, worker, reconciler) needs one alive;
- ``all_fresh`` is true only when every configured source is fresh and every kind is alive.

Secrets never appear: only names, counts, ages and error messages (which never include them).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from core import queue
from core.runtime import Services
from core.settings import SOURCE_NAMES, Settings

PROCESS_KINDS = ("web", "worker", "reconciler")


def _age(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round((now - moment).total_seconds(), 1)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()


def build_status(services: Services, settings: Settings) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    with services.pool.connection() as conn:
        scopes = conn.execute(
            """SELECT source, count(*) FILTER (WHERE active),
                      count(*),
                      min(last_success_at) FILTER (WHERE active),
                      count(*) FILTER (WHERE active AND last_success_at IS NULL),
                      count(*) FILTER (WHERE active AND last_error_at IS NOT NULL
                                       AND (last_success_at IS NULL OR last_error_at > last_success_at)),
                      max(last_error_at)
               FROM scopes GROUP BY source"""
        ).fetchall()
        scope_errors = dict(
            conn.execute(
                """SELECT DISTINCT ON (source) source, last_error FROM scopes
                   WHERE last_error IS NOT NULL ORDER BY source, last_error_at DESC"""
            ).fetchall()
        )
        docs = {
            row[0]: row[1:]
            for row in conn.execute(
                """SELECT source, count(*) FILTER (WHERE deleted_at IS NULL AND chunk_count > 0),
                          coalesce(sum(chunk_count) FILTER (WHERE deleted_at IS NULL), 0),
                          count(*) FILTER (WHERE last_error IS NOT NULL)
                   FROM documents GROUP BY source"""
            ).fetchall()
        }
        stats = {
            row[0]: row
            for row in conn.execute(
                """SELECT source, synced, unchanged, metadata_only, deleted, stale_ignored, failed,
                          last_sync_at, last_error, last_error_at, webhooks_received,
                          webhooks_rejected, last_webhook_at, last_rejection, last_rejection_at,
                          deferred
                   FROM source_stats"""
            ).fetchall()
        }
        runs = {
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
        failures = conn.execute(
            """SELECT id, kind, source, scope, error, finished_at FROM runs
               WHERE status = 'failed' ORDER BY finished_at DESC NULLS LAST LIMIT 10"""
        ).fetchall()
        beats = conn.execute(
            """SELECT process, kind, pid, host, beat_at, started_at FROM heartbeats
               WHERE beat_at > now() - interval '1 day' ORDER BY kind, process"""
        ).fetchall()
        pending_token = conn.execute(
            "SELECT key FROM kv WHERE key LIKE '%.verification_token'"
        ).fetchall()

    scope_rows = {row[0]: row[1:] for row in scopes}
    sources: dict[str, Any] = {}
    for name in SOURCE_NAMES:
        sources[name] = _source_status(
            name, settings, now, scope_rows.get(name), scope_errors.get(name), docs.get(name),
            stats.get(name), runs.get(name),
        )
    processes = [
        {
            "process": p, "kind": kind, "pid": pid, "host": host,
            "started_at": _iso(started), "heartbeat_at": _iso(beat),
            "heartbeat_age_s": _age(beat, now),
            "alive": (now - beat).total_seconds() < settings.heartbeat_timeout,
        }
        for p, kind, pid, host, beat, started in beats
    ]
    kinds_alive = {k: any(p["alive"] for p in processes if p["kind"] == k) for k in PROCESS_KINDS}
    try:
        depths: dict[str, int] | None = queue.queue_depths(services.broker)
        dead: int | None = queue.dead_letter_count(services.broker)
        queue_error = None
    except Exception as exc:  # status must answer even when Redis does not
        depths, dead, queue_error = None, None, f"redis unreachable: {type(exc).__name__}"
    depth = None if depths is None else sum(depths.values())
    configured = [s for s in sources.values() if s["configured"]]
    api_docs = docs.get("api", (0, 0, 0))
    return {
        "generated_at": _iso(now),
        "all_fresh": all(s["fresh"] for s in configured) and all(kinds_alive.values()),
        "sources": sources,
        "push_api": {"documents": int(api_docs[0]), "vectors": int(api_docs[1])},
        "queue": {"depth": depth, "live": None if depths is None else depths[queue.QUEUE],
                  "bulk": None if depths is None else depths[queue.BULK_QUEUE],
                  "dead_letters": dead, "error": queue_error},
        "processes": processes,
        "processes_alive": kinds_alive,
        "recent_failures": [
            {"run_id": r[0], "kind": r[1], "source": r[2], "scope": r[3], "error": r[4],
             "finished_at": _iso(r[5])}
            for r in failures
        ],
        "index": {"backend": "pinecone" if settings.pinecone_host and settings.pinecone_api_key else "pgvector"},
        # Handshake tokens received but not yet configured (the token itself is not shown here).
        "pending_verification_tokens": [
            source for source in (row[0].split(".", 1)[0] for row in pending_token)
            if source in settings.sources
            and not settings.source(source).get(f"{source.upper()}_WEBHOOK_TOKEN")
        ],
    }


def _source_status(
    name: str, settings: Settings, now: datetime, scope_row: Any, scope_error: str | None,
    doc_row: Any, stat_row: Any, run_row: Any,
) -> dict[str, Any]:
    src = settings.source(name)
    active, total, oldest_success, never, failing_scopes, last_scope_error_at = scope_row or (0, 0, None, 0, 0, None)
    documents, vectors, doc_errors = doc_row or (0, 0, 0)
    in_flight, stuck, failed_24h = run_row or (0, 0, 0)
    age = _age(oldest_success, now)
    fresh: bool | None = None
    state = "not configured"
    if src.configured:
        fresh = bool(active) and not never and age is not None and age <= src.stale_after
        state = "fresh" if fresh else "stale"
        if failing_scopes:
            state = "failing"
    last_error, last_error_at = scope_error, last_scope_error_at
    if stat_row is not None and stat_row[9] is not None and (last_error_at is None or stat_row[9] > last_error_at):
        last_error, last_error_at = stat_row[8], stat_row[9]
    return {
        "configured": src.configured,
        "state": state,
        "fresh": fresh,
        "stale_after_s": src.stale_after,
        "poll_interval_s": src.poll_interval,
        "last_success_at": _iso(oldest_success),
        "last_success_age_s": age,
        "scopes": {"active": int(active), "total": int(total), "never_synced": int(never),
                   "failing": int(failing_scopes)},
        "documents": int(documents),
        "vectors": int(vectors),
        "documents_with_errors": int(doc_errors),
        "last_error": last_error,
        "last_error_at": _iso(last_error_at),
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


def render_metrics(status: dict[str, Any]) -> str:
    """Prometheus text exposition of a status report."""
    lines: list[str] = []

    def metric(name: str, help_text: str, kind: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP vector_sync_{name} {help_text}")
        lines.append(f"# TYPE vector_sync_{name} {kind}")
        for labels, value in samples:
            label = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"vector_sync_{name}{{{label}}} {value}" if label else f"vector_sync_{name} {value}")

    sources = status["sources"]
    metric("source_configured", "1 when the source has credentials", "gauge",
           [({"source": n}, int(s["configured"])) for n, s in sources.items()])
    metric("source_fresh", "1 when every active scope synced within its threshold", "gauge",
           [({"source": n}, int(bool(s["fresh"]))) for n, s in sources.items() if s["configured"]])
    metric("source_last_success_age_seconds", "Age of the oldest active scope's last successful pass", "gauge",
           [({"source": n}, s["last_success_age_s"]) for n, s in sources.items()
            if s["last_success_age_s"] is not None])
    metric("documents", "Documents indexed", "gauge",
           [({"source": n}, s["documents"]) for n, s in sources.items()]
           + [({"source": "api"}, status["push_api"]["documents"])])
    metric("vectors", "Vectors (chunks) indexed", "gauge",
           [({"source": n}, s["vectors"]) for n, s in sources.items()]
           + [({"source": "api"}, status["push_api"]["vectors"])])
    for counter in ("synced", "unchanged", "metadata_only", "deleted", "stale_ignored", "deferred", "failed"):
        metric(f"pipeline_{counter}_total", f"Documents the pipeline counted as {counter}", "counter",
               [({"source": n}, s["pipeline"][counter]) for n, s in sources.items()])
    metric("webhooks_received_total", "Webhooks accepted", "counter",
           [({"source": n}, s["webhooks"]["received"]) for n, s in sources.items()])
    metric("webhooks_rejected_total", "Webhooks refused", "counter",
           [({"source": n}, s["webhooks"]["rejected"]) for n, s in sources.items()])
    metric("runs_in_flight", "Reconcile/backfill/prune runs in progress", "gauge",
           [({"source": n}, s["runs"]["in_flight"]) for n, s in sources.items()])
    metric("runs_stuck", "Runs with no progress for STUCK_AFTER", "gauge",
           [({"source": n}, s["runs"]["stuck"]) for n, s in sources.items()])
    queue_info = status["queue"]
    if queue_info["depth"] is not None:
        metric("queue_depth", "Sync messages waiting or in flight", "gauge", [({}, queue_info["depth"])])
        metric("dead_letters", "Sync messages that exhausted their retries", "gauge",
               [({}, queue_info["dead_letters"])])
    metric("process_alive", "1 when a process of this kind has a recent heartbeat", "gauge",
           [({"kind": k}, int(v)) for k, v in status["processes_alive"].items()])
    metric("all_fresh", "1 when every configured source is fresh and every process alive", "gauge",
           [({}, int(status["all_fresh"]))])
    metric("status_generated_timestamp_seconds", "When this report was built", "gauge",
           [({}, round(time.time(), 3))])
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
