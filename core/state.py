"""Postgres state: connection pool, migrations, and the queries every process shares.

Migrations are the numbered ``core/migrations/*.sql`` files, applied in order inside one
transaction that holds an advisory lock, and recorded in ``schema_migrations``; so several
processes starting at once apply each file exactly once, and running them again is harmless.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

#: Arbitrary, fixed: the advisory lock key that serialises migrations.
MIGRATION_LOCK = 7_214_553_901


def open_pool(database_url: str, *, min_size: int = 1, max_size: int = 8) -> ConnectionPool:
    """A pool that fails fast (10 s) when the database cannot be reached."""
    pool = ConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True},
        name="vector-sync",
    )
    pool.open(wait=True, timeout=10)
    return pool


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration file, in order."""
    folder = resources.files("core") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            found.append((number, entry.name, entry.read_text()))
    return sorted(found)


def migrate(pool: ConnectionPool) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    applied: list[str] = []
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for number, name, sql in migrations():
            if number in done:
                continue
            conn.execute(sql)  # type: ignore[arg-type]  # trusted files shipped with the package
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (number, name)
            )
            applied.append(name)
    return applied


def check(pool: ConnectionPool) -> None:
    with pool.connection(timeout=5) as conn:
        conn.execute("SELECT 1")


# --- documents ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentRow:
    document_id: str
    source: str
    scope: str
    content_hash: str | None
    metadata_hash: str | None
    source_updated_at: float | None
    chunk_count: int
    deleted_at: datetime | None
    #: When the stored version (or the deletion) was read from the source, our clock.
    seen_at: float | None = None
    #: When the newest confirmed deletion was read (even one ignored as older than the stored
    #: version): anything read before it is outdated.
    deleted_seen_at: float | None = None


def get_documents(pool: ConnectionPool, document_ids: list[str]) -> dict[str, DocumentRow]:
    if not document_ids:
        return {}
    with pool.connection() as conn:
        rows = conn.execute(
            """SELECT document_id, source, scope, content_hash, metadata_hash,
                      source_updated_at, chunk_count, deleted_at, seen_at, deleted_seen_at
               FROM documents WHERE document_id = ANY(%s)""",
            (document_ids,),
        ).fetchall()
    return {row[0]: DocumentRow(*row) for row in rows}


#: The advisory-lock class id (first key of the two-key form) of per-document write locks.
DOCUMENT_LOCK_CLASS = 0x5653  # "VS"


def document_lock_key(document_id: str) -> int:
    """The second advisory-lock key (int4) of a document's write lock. Collisions only make two
    documents share a lock, which is safe."""
    digest = hashlib.blake2b(document_id.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class Indexed:
    """One document whose vectors are written, as :func:`record_indexed_many` records it."""

    document_id: str
    source: str
    scope: str
    title: str
    url: str
    content_hash: str
    metadata_hash: str
    source_updated_at: float
    chunk_count: int
    seen_at: float | None = None


def record_indexed_many(pool: ConnectionPool, rows: list[Indexed]) -> None:
    """Record documents whose vectors are written: one statement for the whole batch (callers
    hold the documents' write locks and wrote their vectors first)."""
    if not rows:
        return
    columns = list(zip(*((r.document_id, r.source, r.scope, r.title, r.url, r.content_hash,
                          r.metadata_hash, r.source_updated_at, r.chunk_count, r.seen_at)
                         for r in rows), strict=True))
    with pool.connection() as conn:
        conn.execute(
            """INSERT INTO documents (document_id, source, scope, title, url, content_hash,
                   metadata_hash, source_updated_at, chunk_count, indexed_at, checked_at, deleted_at,
                   last_error, last_error_at, seen_at)
               SELECT d, src, sc, t, u, ch, mh, upd, cc, now(), now(), NULL, NULL, NULL, seen
               FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                           %s::text[], %s::float8[], %s::int[], %s::float8[])
                    AS r(d, src, sc, t, u, ch, mh, upd, cc, seen)
               ON CONFLICT (document_id) DO UPDATE SET
                   source = excluded.source, scope = excluded.scope, title = excluded.title,
                   url = excluded.url, content_hash = excluded.content_hash,
                   metadata_hash = excluded.metadata_hash,
                   source_updated_at = excluded.source_updated_at,
                   chunk_count = excluded.chunk_count, indexed_at = now(), checked_at = now(),
                   deleted_at = NULL, deferred_at = NULL,
                   last_error = NULL, last_error_at = NULL, error_stage = NULL,
                   error_since = NULL, error_attempts = 0,
                   seen_at = excluded.seen_at""",
            [list(c) for c in columns],
        )


def record_indexed(
    pool: ConnectionPool,
    *,
    document_id: str,
    source: str,
    scope: str,
    title: str,
    url: str,
    content_hash: str,
    metadata_hash: str,
    source_updated_at: float,
    chunk_count: int,
    seen_at: float | None = None,
) -> None:
    record_indexed_many(pool, [Indexed(document_id, source, scope, title, url, content_hash,
                                       metadata_hash, source_updated_at, chunk_count, seen_at)])


def record_deleted_many(pool: ConnectionPool, deletions: list[tuple[str, str, float | None]]) -> None:
    """Record ``(document id, source, seen_at)`` deletions (their vectors are gone): one
    statement for the whole batch."""
    if not deletions:
        return
    ids, sources, seen = (list(c) for c in zip(*deletions, strict=True))
    with pool.connection() as conn:
        conn.execute(
            """INSERT INTO documents (document_id, source, chunk_count, deleted_at, checked_at, seen_at,
                   deleted_seen_at)
               SELECT d, src, 0, now(), now(), seen, seen
               FROM unnest(%s::text[], %s::text[], %s::float8[]) AS r(d, src, seen)
               ON CONFLICT (document_id) DO UPDATE SET
                   chunk_count = 0, deleted_at = now(), checked_at = now(), deferred_at = NULL,
                   content_hash = NULL,
                   metadata_hash = NULL, last_error = NULL, last_error_at = NULL,
                   error_stage = NULL, error_since = NULL, error_attempts = 0,
                   seen_at = excluded.seen_at,
                   deleted_seen_at = greatest(documents.deleted_seen_at, excluded.deleted_seen_at)""",
            (ids, sources, seen),
        )


def record_deleted(pool: ConnectionPool, document_id: str, source: str, seen_at: float | None = None) -> None:
    record_deleted_many(pool, [(document_id, source, seen_at)])


def note_deletion(pool: ConnectionPool, deletions: Mapping[str, float]) -> None:
    """Remember deletions that were ignored because a newer version is stored: a version read
    before one of them must still lose (``deleted_seen_at``)."""
    if not deletions:
        return
    with pool.connection() as conn:
        conn.execute(
            """UPDATE documents SET deleted_seen_at = greatest(documents.deleted_seen_at, s.seen)
               FROM unnest(%s::text[], %s::float8[]) AS s(id, seen)
               WHERE document_id = s.id""",
            (list(deletions), list(deletions.values())),
        )


def mark_checked(pool: ConnectionPool, document_ids: list[str],
                 seen_at: Mapping[str, float] | None = None) -> None:
    """Note that a job looked at these documents and found nothing to change (as of
    ``seen_at[document_id]``, when given: the stored version is confirmed that recently)."""
    if not document_ids:
        return
    seen = seen_at or {}
    with pool.connection() as conn:
        conn.execute(
            """UPDATE documents SET checked_at = now(),
                   seen_at = greatest(documents.seen_at, s.seen)
               FROM unnest(%s::text[], %s::float8[]) AS s(id, seen)
               WHERE document_id = s.id""",
            (list(document_ids), [seen.get(d) for d in document_ids]),
        )


def record_deferred(pool: ConnectionPool, document_id: str, source: str, scope: str) -> None:
    """Remember a document whose content is not ready, so the reconciler asks again."""
    with pool.connection() as conn:
        conn.execute(
            """INSERT INTO documents (document_id, source, scope, deferred_at, checked_at)
               VALUES (%s, %s, %s, now(), now())
               ON CONFLICT (document_id) DO UPDATE SET
                   deferred_at = coalesce(documents.deferred_at, now()), checked_at = now()""",
            (document_id, source, scope),
        )


def deferred_ids(pool: ConnectionPool, source: str, older_than: float = 60.0) -> list[tuple[str, str]]:
    """(document id, scope) of documents deferred more than ``older_than`` seconds ago."""
    with pool.connection() as conn:
        rows = conn.execute(
            """SELECT document_id, scope FROM documents
               WHERE source = %s AND deferred_at IS NOT NULL AND deleted_at IS NULL
                 AND checked_at < now() - make_interval(secs => %s)""",
            (source, older_than),
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


#: The stages a document (or a listing) can fail at; status counts failures by stage.
STAGES = ("listing", "fetch", "validate", "embed", "index", "record")


def record_document_error(
    pool: ConnectionPool, document_id: str, source: str, error: str, stage: str = "fetch",
    scope: str = "",
) -> None:
    """Remember that ``document_id`` failed at ``stage``; ``error_since`` keeps the first failure
    of the current run of failures (the next success clears it)."""
    with pool.connection() as conn:
        conn.execute(
            """INSERT INTO documents (document_id, source, scope, last_error, last_error_at,
                   error_stage, error_since, error_attempts)
               VALUES (%s, %s, %s, %s, now(), %s, now(), 1)
               ON CONFLICT (document_id) DO UPDATE SET
                   last_error = excluded.last_error, last_error_at = now(),
                   error_stage = excluded.error_stage,
                   error_since = coalesce(documents.error_since, now()),
                   error_attempts = documents.error_attempts + 1""",
            (document_id, source, scope, error[:2000], stage),
        )


def failed_documents(
    pool: ConnectionPool, source: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Documents whose last attempt failed, longest-failing first."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT document_id, source, scope, title, error_stage AS stage, last_error AS error,
                      error_since, last_error_at, error_attempts AS attempts
               FROM documents
               WHERE last_error IS NOT NULL AND (%s::text IS NULL OR source = %s)
               ORDER BY error_since NULLS LAST, document_id
               LIMIT %s""",
            (source, source, limit),
        )
        return list(cur.fetchall())


def document_scopes(pool: ConnectionPool, document_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{document id: (source, scope)}`` for those of ``document_ids`` that are recorded."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT document_id, source, scope FROM documents WHERE document_id = ANY(%s) ORDER BY document_id",
            (document_ids,),
        ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def live_document_ids(pool: ConnectionPool, source: str, scope: str) -> list[str]:
    with pool.connection() as conn:
        rows = conn.execute(
            """SELECT document_id FROM documents
               WHERE source = %s AND scope = %s AND deleted_at IS NULL AND chunk_count > 0""",
            (source, scope),
        ).fetchall()
    return [row[0] for row in rows]


def indexed_before(pool: ConnectionPool, document_ids: list[str], moment: datetime) -> list[str]:
    """Those of ``document_ids`` last indexed before ``moment`` (prune must spare the rest)."""
    if not document_ids:
        return []
    with pool.connection() as conn:
        rows = conn.execute(
            """SELECT document_id FROM documents
               WHERE document_id = ANY(%s) AND (indexed_at IS NULL OR indexed_at < %s)""",
            (document_ids, moment),
        ).fetchall()
    return [row[0] for row in rows]


# --- per-source counters --------------------------------------------------------------------

_COUNTERS = ("synced", "unchanged", "metadata_only", "deleted", "stale_ignored", "deferred", "failed")


def bump_source_stats(
    pool: ConnectionPool, source: str, counts: Mapping[str, int], error: str | None = None,
    stage: str | None = None,
) -> None:
    """Add ``counts`` to the source's counters; with ``error``, record it as the last error, at
    ``stage`` (and count the failures, at least one, under that stage in ``failures_by_stage``)."""
    counts = {k: int(v) for k, v in counts.items() if k in _COUNTERS and v}
    if not counts and error is None:
        return
    updates = [f"{k} = {k} + %s" for k in counts]
    params: list[Any] = list(counts.values())
    if any(k != "failed" for k in counts):
        updates.append("last_sync_at = now()")
    if error is not None:
        updates += ["last_error = %s", "last_error_at = now()", "last_error_stage = %s"]
        params += [error[:2000], stage]
        if stage is not None:
            updates.append(
                "failures_by_stage = jsonb_set(failures_by_stage, ARRAY[%s::text], "
                "to_jsonb(coalesce((failures_by_stage ->> %s)::bigint, 0) + %s))"
            )
            params += [stage, stage, max(1, counts.get("failed", 0))]
    with pool.connection() as conn:
        conn.execute("INSERT INTO source_stats (source) VALUES (%s) ON CONFLICT DO NOTHING", (source,))
        conn.execute(
            f"UPDATE source_stats SET {', '.join(updates)} WHERE source = %s",  # type: ignore[arg-type]
            [*params, source],
        )


def record_webhook(pool: ConnectionPool, source: str, *, rejected: str | None = None) -> None:
    """One webhook received (or, with ``rejected``, refused), written at once. The receiver
    aggregates instead (``record_webhooks``); this stays for tools and tests."""
    record_webhooks(pool, {source: WebhookTally(received=0 if rejected else 1,
                                                 last_at=time.time() if not rejected else None,
                                                 rejected=1 if rejected else 0,
                                                 last_rejection=rejected,
                                                 last_rejection_at=time.time() if rejected else None)})


@dataclass
class WebhookTally:
    """What one source's webhooks added up to since the last flush (receiver.counters)."""

    received: int = 0
    last_at: float | None = None  # epoch seconds of the latest received
    rejected: int = 0
    last_rejection: str | None = None
    last_rejection_at: float | None = None

    def merge(self, other: WebhookTally) -> None:
        """Fold ``other`` (older or newer) into this one: counts add up, the latest wins."""
        self.received += other.received
        self.rejected += other.rejected
        if other.last_at is not None and (self.last_at is None or other.last_at > self.last_at):
            self.last_at = other.last_at
        if other.last_rejection_at is not None and (
                self.last_rejection_at is None or other.last_rejection_at > self.last_rejection_at):
            self.last_rejection_at = other.last_rejection_at
            self.last_rejection = other.last_rejection


def record_webhooks(pool: ConnectionPool, tallies: Mapping[str, WebhookTally]) -> None:
    """Add each source's tally to ``source_stats`` (``webhooks_received``, ``last_webhook_at``,
    ``webhooks_rejected``, ``last_rejection``, ``last_rejection_at``): one statement for every
    source, in one transaction. A timestamp never moves backwards."""
    rows = [(source, t.received, t.last_at, t.rejected, (t.last_rejection or "")[:500] or None,
             t.last_rejection_at) for source, t in sorted(tallies.items()) if t.received or t.rejected]
    if not rows:
        return
    with pool.connection() as conn, conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO source_stats AS s (source, webhooks_received, last_webhook_at,
                   webhooks_rejected, last_rejection, last_rejection_at)
               VALUES (%s, %s, to_timestamp(%s), %s, %s, to_timestamp(%s))
               ON CONFLICT (source) DO UPDATE SET
                   webhooks_received = s.webhooks_received + excluded.webhooks_received,
                   last_webhook_at = GREATEST(s.last_webhook_at, excluded.last_webhook_at),
                   webhooks_rejected = s.webhooks_rejected + excluded.webhooks_rejected,
                   last_rejection = CASE WHEN excluded.last_rejection_at IS NOT NULL
                       AND (s.last_rejection_at IS NULL OR excluded.last_rejection_at >= s.last_rejection_at)
                       THEN excluded.last_rejection ELSE s.last_rejection END,
                   last_rejection_at = GREATEST(s.last_rejection_at, excluded.last_rejection_at)""",
            rows,
        )


# --- deliveries (webhook de-duplication) ----------------------------------------------------
#
# Webhook delivery ids are claimed in Redis now, in the same script call that enqueues the
# webhook's job (core.queue.FastEnqueuer, docs/operations.md "Webhook de-duplication"). The
# table stays for the claims that are not on the hot path: GitHub's gap repair claims each
# failed delivery it redelivers (reconciler/redeliver.py), so no two runs send one twice. The
# reconciler expires old rows.


def claim_delivery(pool: ConnectionPool, source: str, delivery_id: str, ttl_s: float = 7 * 86400) -> bool:
    """True the first time a delivery id is seen (within its TTL), False for a duplicate."""
    with pool.connection() as conn:
        row = conn.execute(
            """INSERT INTO deliveries (source, delivery_id, expires_at)
               VALUES (%s, %s, now() + make_interval(secs => %s))
               ON CONFLICT (source, delivery_id) DO UPDATE
                   SET expires_at = excluded.expires_at
                   WHERE deliveries.expires_at < now()
               RETURNING 1""",
            (source, delivery_id, ttl_s),
        ).fetchone()
    return row is not None


def release_delivery(pool: ConnectionPool, source: str, delivery_id: str) -> None:
    """Forget a claimed delivery whose handling failed, so it can be claimed again."""
    with pool.connection() as conn:
        conn.execute(
            "DELETE FROM deliveries WHERE source = %s AND delivery_id = %s", (source, delivery_id)
        )


def expire_deliveries(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        cur = conn.execute("DELETE FROM deliveries WHERE expires_at < now()")
        return cur.rowcount


# --- heartbeats -----------------------------------------------------------------------------


def process_name(kind: str) -> str:
    return f"{kind}@{socket.gethostname()}:{os.getpid()}"


def beat(pool: ConnectionPool, kind: str, name: str | None = None, info: Mapping[str, Any] | None = None) -> None:
    with pool.connection() as conn:
        conn.execute(
            """INSERT INTO heartbeats (process, kind, pid, host, beat_at, info)
               VALUES (%s, %s, %s, %s, now(), %s::jsonb)
               ON CONFLICT (process) DO UPDATE SET beat_at = now(), info = excluded.info""",
            (name or process_name(kind), kind, os.getpid(), socket.gethostname(),
             json.dumps(dict(info or {}))),
        )


def forget_process(pool: ConnectionPool, name: str) -> None:
    """A clean stop removes the heartbeat, so status does not report a dead process."""
    with pool.connection() as conn:
        conn.execute("DELETE FROM heartbeats WHERE process = %s", (name,))


# --- kv -------------------------------------------------------------------------------------


def kv_get(pool: ConnectionPool, key: str) -> Any:
    with pool.connection() as conn:
        row = conn.execute("SELECT value FROM kv WHERE key = %s", (key,)).fetchone()
    return row[0] if row else None


def kv_set(pool: ConnectionPool, key: str, value: Any, *, only_if_absent: bool = False) -> bool:
    """Store ``value``; with ``only_if_absent``, keep an existing one. True if written."""
    conflict = "DO NOTHING" if only_if_absent else "DO UPDATE SET value = excluded.value, updated_at = now()"
    with pool.connection() as conn:
        cur = conn.execute(
            f"INSERT INTO kv (key, value) VALUES (%s, %s::jsonb) ON CONFLICT (key) {conflict}",  # type: ignore[arg-type]
            (key, json.dumps(value)),
        )
        return cur.rowcount == 1


def kv_delete(pool: ConnectionPool, key: str) -> bool:
    """Forget ``key``; True if it was there."""
    with pool.connection() as conn:
        return conn.execute("DELETE FROM kv WHERE key = %s", (key,)).rowcount == 1


@contextmanager
def dict_cursor(pool: ConnectionPool) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        yield cur
