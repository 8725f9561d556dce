"""Runs: the rows that record every reconcile, prune and backfill pass, and what they counted.

Shared by the reconciler (which executes runs), the receiver's admin API (which queues backfills
and reads progress) and the CLI.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Mapping
from typing import Any

from psycopg_pool import ConnectionPool

from core import state
from core.documents import vector_id
from core.runtime import Services

#: Seconds: a backfill whose owner has not made progress for this long is taken as dead.
DEAD_AFTER = 120.0


def list_runs(pool: ConnectionPool, source: str | None = None, kind: str | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
    """The newest runs first (the admin API's ``GET /api/runs`` and ``vector-sync runs``)."""
    with state.dict_cursor(pool) as cur:
        cur.execute(
            """SELECT id, kind, source, scope, status, counters, error, started_at, progress_at,
                      finished_at FROM runs
               WHERE (%(source)s::text IS NULL OR source = %(source)s)
                 AND (%(kind)s::text IS NULL OR kind = %(kind)s)
               ORDER BY id DESC LIMIT %(limit)s""",
            {"source": source, "kind": kind, "limit": limit},
        )
        return list(cur.fetchall())


def start_run(pool: ConnectionPool, kind: str, source: str, scope: str | None, owner: str,
              params: Mapping[str, Any] | None = None) -> int:
    with pool.connection() as conn:
        row = conn.execute(
            """INSERT INTO runs (kind, source, scope, status, owner, params)
               VALUES (%s, %s, %s, 'running', %s, %s::jsonb) RETURNING id""",
            (kind, source, scope, owner, json.dumps(dict(params or {}))),
        ).fetchone()
    assert row is not None
    return int(row[0])


def progress_run(pool: ConnectionPool, run_id: int, counters: Mapping[str, Any],
                 checkpoint: Mapping[str, Any] | None = None) -> None:
    with pool.connection() as conn:
        conn.execute(
            """UPDATE runs SET counters = %s::jsonb, progress_at = now(),
                   checkpoint = coalesce(%s::jsonb, checkpoint)
               WHERE id = %s""",
            (json.dumps(dict(counters)), json.dumps(dict(checkpoint)) if checkpoint is not None else None, run_id),
        )


def finish_run(pool: ConnectionPool, run_id: int, counters: Mapping[str, Any], error: str | None = None) -> None:
    with pool.connection() as conn:
        conn.execute(
            """UPDATE runs SET status = %s, counters = %s::jsonb, error = %s,
                   finished_at = now(), progress_at = now()
               WHERE id = %s""",
            ("failed" if error else "succeeded", json.dumps(dict(counters)), error, run_id),
        )


class Conflict(Exception):
    """Raised when a backfill of the same scope is already running."""


def owner_name() -> str:
    return f"backfill@{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None, progress_age: float) -> bool:
    if not owner:
        return progress_age < DEAD_AFTER
    host, _, pid = owner.partition("@")[2].rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return int(pid) != os.getpid() or progress_age < DEAD_AFTER
    return progress_age < DEAD_AFTER


def active_backfills(pool: ConnectionPool, source: str) -> list[dict[str, Any]]:
    """Backfills of ``source`` that are queued, or running with a live owner."""
    with state.dict_cursor(pool) as cur:
        cur.execute(
            """SELECT id, status, owner, params, extract(epoch FROM now() - progress_at) AS age
               FROM runs WHERE kind = 'backfill' AND source = %s AND status IN ('queued', 'running')""",
            (source,),
        )
        rows = cur.fetchall()
    return [r for r in rows if r["status"] == "queued" or owner_alive(r["owner"], float(r["age"]))]


def check_conflict(pool: ConnectionPool, source: str, keys: list[str], exclude: int | None = None) -> None:
    for run in active_backfills(pool, source):
        if run["id"] == exclude:
            continue
        theirs = set(run["params"].get("scopes") or [])
        if not keys or not theirs or theirs & set(keys):
            raise Conflict(f"backfill run {run['id']} of {source} is already {run['status']} "
                           f"for {', '.join(sorted(theirs)) or 'all scopes'}")


def create_run(pool: ConnectionPool, source: str, keys: list[str], days: int | None, *,
               status: str = "running", owner: str | None = None) -> int:
    check_conflict(pool, source, keys)
    since = None if days is None else time.time() - days * 86400
    with pool.connection() as conn:
        row = conn.execute(
            """INSERT INTO runs (kind, source, status, owner, params, checkpoint)
               VALUES ('backfill', %s, %s, %s, %s::jsonb, '{"scopes": {}}'::jsonb) RETURNING id""",
            (source, status, owner, json.dumps({"scopes": keys, "days": days, "since": since})),
        ).fetchone()
    assert row is not None
    return int(row[0])


def resumable_run(pool: ConnectionPool, source: str) -> int | None:
    """The newest unfinished backfill of ``source`` whose owner is gone."""
    with state.dict_cursor(pool) as cur:
        cur.execute(
            """SELECT id, status, owner, extract(epoch FROM now() - progress_at) AS age FROM runs
               WHERE kind = 'backfill' AND source = %s AND status IN ('running', 'abandoned', 'failed')
               ORDER BY id DESC LIMIT 1""",
            (source,),
        )
        row = cur.fetchone()
    if row is None:
        return None
    if row["status"] == "running" and owner_alive(row["owner"], float(row["age"])):
        raise Conflict(f"backfill run {row['id']} of {source} is still running ({row['owner']})")
    return int(row["id"])


def touch_run(pool: ConnectionPool, run_id: int) -> None:
    """Show the run is alive while it waits (so it is not taken for dead or stuck)."""
    with pool.connection() as conn:
        conn.execute("UPDATE runs SET progress_at = now() WHERE id = %s", (run_id,))


def load_run(pool: ConnectionPool, run_id: int) -> dict[str, Any] | None:
    with state.dict_cursor(pool) as cur:
        cur.execute("SELECT * FROM runs WHERE id = %s", (run_id,))
        return cur.fetchone()


def verification(pool: ConnectionPool, run_id: int) -> dict[str, dict[str, int]]:
    """Per scope: listed, indexed, unchanged, deleted, failed, pending (since the run began)."""
    with pool.connection() as conn:
        rows = conn.execute(
            """SELECT i.scope,
                      count(*),
                      count(*) FILTER (WHERE d.indexed_at >= r.started_at AND d.deleted_at IS NULL),
                      count(*) FILTER (WHERE d.checked_at >= r.started_at AND d.deleted_at IS NULL
                                       AND (d.indexed_at IS NULL OR d.indexed_at < r.started_at)),
                      count(*) FILTER (WHERE d.deleted_at >= r.started_at),
                      count(*) FILTER (WHERE d.last_error_at >= r.started_at
                                       AND (d.checked_at IS NULL OR d.checked_at < d.last_error_at)),
                      count(*) FILTER (WHERE (d.checked_at IS NULL OR d.checked_at < r.started_at)
                                       AND (d.last_error_at IS NULL OR d.last_error_at < r.started_at))
               FROM run_items i JOIN runs r ON r.id = i.run_id
               LEFT JOIN documents d ON d.document_id = i.document_id
               WHERE i.run_id = %s GROUP BY i.scope ORDER BY i.scope""",
            (run_id,),
        ).fetchall()
    keys = ("listed", "indexed", "unchanged", "deleted", "failed", "pending")
    return {row[0]: dict(zip(keys, map(int, row[1:]), strict=True)) for row in rows}


def read_back(services: Services, run_id: int, sample: int) -> tuple[int, list[str]]:
    """Fetch chunk 0 of a sample of indexed documents from the index; returns (checked, missing)."""
    with services.pool.connection() as conn:
        ids = [r[0] for r in conn.execute(
            """SELECT i.document_id FROM run_items i JOIN documents d USING (document_id)
               WHERE i.run_id = %s AND d.deleted_at IS NULL AND d.chunk_count > 0""",
            (run_id,),
        ).fetchall()]
    chosen = random.sample(ids, min(sample, len(ids)))
    found = services.index.fetch([vector_id(d, 0) for d in chosen])
    missing = [d for d in chosen if vector_id(d, 0) not in found]
    return len(chosen), missing


def totals(report: dict[str, dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for counts in report.values():
        for key, value in counts.items():
            out[key] = out.get(key, 0) + value
    return out
