"""Scopes: the units the reconciler polls (Jira projects, Slack channels, GitHub repos, accounts).

Discovery inserts what a source lists; whether a new scope starts active follows the source's
configured filter (``JIRA_PROJECTS``, ``SLACK_CHANNELS``, ``GITHUB_REPOS``: ``*`` = all).
Deactivating stops syncing but keeps what is indexed unless asked to purge.

A scope is listed by one thing at a time: while a backfill lists it (``BACKFILL_LISTING``), the
reconciler neither claims it nor keeps a pass over it going, and when the backfill has listed
it, ``adopt_backfill_cursors`` moves its cursor to what the backfill saw, so the next pass lists
only what changed since.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from psycopg_pool import ConnectionPool

from core import state
from core.documents import Ref, split_doc_id
from core.settings import SourceSettings
from core.sources import Scope


#: Seconds without progress after which a running backfill no longer holds its scopes (its
#: process died): the reconciler lists them again rather than waiting on it forever.
BACKFILL_STALE = 300.0

#: SQL condition, on a row of ``scopes``: a queued backfill, or a running one that moved in the
#: last ``BACKFILL_STALE`` seconds, targets this scope and has not finished listing it. Targets
#: are the keys the backfill resolved (``checkpoint.targets``); before that, the keys it was
#: given, or every scope of the source when it was given none.
BACKFILL_LISTING = f"""EXISTS (
    SELECT 1 FROM runs r
    WHERE r.kind = 'backfill' AND r.source = scopes.source
      AND (r.status = 'queued' OR (r.status = 'running'
                                   AND r.progress_at > now() - make_interval(secs => {BACKFILL_STALE})))
      AND NOT coalesce((r.checkpoint -> 'scopes' -> scopes.key ->> 'done')::boolean, false)
      AND CASE WHEN jsonb_typeof(r.checkpoint -> 'targets') = 'array'
                    THEN (r.checkpoint -> 'targets') ? scopes.key
               WHEN jsonb_typeof(r.params -> 'scopes') = 'array' AND jsonb_array_length(r.params -> 'scopes') > 0
                    THEN (r.params -> 'scopes') ? scopes.key
               ELSE true END)"""


def backfill_listing(pool: ConnectionPool, source: str, key: str) -> bool:
    """Whether a backfill is listing (or about to list) this scope."""
    with pool.connection() as conn:
        row = conn.execute(f"SELECT {BACKFILL_LISTING} FROM scopes WHERE source = %s AND key = %s",
                           (source, key)).fetchone()
    return bool(row and row[0])


def defer_to_backfill(pool: ConnectionPool, source: str, key: str, retry: float = 60.0) -> None:
    """A reconcile pass gives a scope back to the backfill listing it: lease released, due again
    in ``retry`` seconds (the backfill's end makes it due later; a dead backfill stops holding
    it after ``BACKFILL_STALE``)."""
    with pool.connection() as conn:
        conn.execute(
            """UPDATE scopes SET lease_owner = NULL, lease_until = NULL,
                   next_due_at = greatest(next_due_at, now() + make_interval(secs => %s))
               WHERE source = %s AND key = %s""",
            (retry, source, key),
        )


def adopt_backfill_cursors(pool: ConnectionPool, source: str, highs: Mapping[str, float | None],
                           since: float | None, poll_interval: float) -> int:
    """A backfill listed these scopes: each one's cursor becomes the newest source
    ``updated_at`` it saw (never lower than the cursor it had), a pass left part-way is dropped
    (the backfill listed everything it would have), and the next pass falls due a poll interval
    from now, listing only what changed since. A backfill that started at ``since`` only counts
    for a scope already synced up to ``since`` (one never listed still needs its older
    documents). Returns how many scopes moved."""
    moved = 0
    with pool.connection() as conn:
        for key, high in highs.items():
            if high is None:
                continue
            cur = conn.execute(
                """UPDATE scopes SET cursor = greatest(coalesce(cursor, %(high)s), %(high)s),
                       checkpoint = CASE WHEN lease_until IS NULL OR lease_until <= now()
                                    THEN NULL ELSE checkpoint END,
                       pass_since = CASE WHEN lease_until IS NULL OR lease_until <= now()
                                    THEN NULL ELSE pass_since END,
                       pass_high_water = CASE WHEN lease_until IS NULL OR lease_until <= now()
                                         THEN NULL ELSE pass_high_water END,
                       last_success_at = now(),
                       next_due_at = greatest(next_due_at, now() + make_interval(secs => %(poll)s))
                   WHERE source = %(source)s AND key = %(key)s
                     AND (%(since)s::float8 IS NULL OR (cursor IS NOT NULL AND cursor >= %(since)s::float8))""",
                {"high": high, "poll": poll_interval, "source": source, "key": key, "since": since},
            )
            moved += cur.rowcount
    return moved


def upsert_discovered(pool: ConnectionPool, settings: SourceSettings, found: Iterable[Scope]) -> int:
    """Insert newly listed scopes (active per configuration) and refresh names; returns new ones."""
    wanted = settings.scope_filter()
    new = 0
    with pool.connection() as conn:
        for scope in found:
            active = wanted is None or scope.key in wanted or scope.name in wanted
            cur = conn.execute(
                """INSERT INTO scopes (source, key, name, active) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (source, key) DO UPDATE SET name = excluded.name
                   RETURNING (xmax = 0)""",
                (scope.source, scope.key, scope.name, active),
            )
            row = cur.fetchone()
            new += int(bool(row and row[0]))
    return new


def list_scopes(pool: ConnectionPool, source: str | None = None) -> list[dict[str, Any]]:
    with state.dict_cursor(pool) as cur:
        cur.execute(
            """SELECT source, key, name, active, cursor, last_success_at, last_attempt_at,
                      last_error, last_error_at, next_due_at, last_pruned_at
               FROM scopes WHERE %(source)s::text IS NULL OR source = %(source)s
               ORDER BY source, key""",
            {"source": source},
        )
        return list(cur.fetchall())


def resolve_keys(rows: Iterable[Mapping[str, Any]], wanted: Iterable[str]) -> tuple[list[str], list[str]]:
    """Scope keys for what an operator typed: a key as it is (``C0123``, ``ENG``), else a name
    (``#general`` or ``general`` for a Slack channel), case-insensitively. Returns the keys found
    (in order, without duplicates) and what matched nothing or more than one scope."""
    rows = list(rows)
    keys = {row["key"] for row in rows}
    by_name: dict[str, list[str]] = {}
    for row in rows:
        if row.get("name"):
            by_name.setdefault(str(row["name"]).lower(), []).append(row["key"])
    found: list[str] = []
    missing: list[str] = []
    for raw in wanted:
        if raw in keys:
            key = raw
        else:
            matches = by_name.get(raw.strip().lstrip("#").lower(), [])
            if len(matches) != 1:
                missing.append(raw if not matches else f"{raw} (ambiguous: {', '.join(sorted(matches))})")
                continue
            key = matches[0]
        if key not in found:
            found.append(key)
    return found, missing


def set_active(pool: ConnectionPool, source: str, keys: list[str], active: bool) -> list[str]:
    """Activate or deactivate scopes; returns the keys that exist (and were set)."""
    with pool.connection() as conn:
        rows = conn.execute(
            """UPDATE scopes SET active = %s,
                   next_due_at = CASE WHEN %s THEN now() ELSE next_due_at END
               WHERE source = %s AND key = ANY(%s) RETURNING key""",
            (active, active, source, keys),
        ).fetchall()
    return [r[0] for r in rows]


def make_due(pool: ConnectionPool, source: str, keys: list[str]) -> dict[str, bool]:
    """Make ``keys`` due now, all or none: only when every one exists and is active. Returns
    every existing key and whether it is active (the caller says what was refused)."""
    with pool.connection() as conn, conn.transaction():
        rows = conn.execute(
            "SELECT key, active FROM scopes WHERE source = %s AND key = ANY(%s) FOR UPDATE",
            (source, keys),
        ).fetchall()
        found = {r[0]: bool(r[1]) for r in rows}
        if set(found) == set(keys) and all(found.values()):
            conn.execute("UPDATE scopes SET next_due_at = now() WHERE source = %s AND key = ANY(%s)",
                         (source, keys))
    return found


def ensure_scope(pool: ConnectionPool, source: str, key: str, name: str = "", active: bool = True) -> None:
    with pool.connection() as conn:
        conn.execute(
            """INSERT INTO scopes (source, key, name, active) VALUES (%s, %s, %s, %s)
               ON CONFLICT (source, key) DO NOTHING""",
            (source, key, name, active),
        )


def purge_refs(pool: ConnectionPool, source: str, key: str) -> list[Ref]:
    """Delete refs for every live document of a scope (a deleted repo or channel)."""
    refs = []
    for document_id in state.live_document_ids(pool, source, key):
        _, stable = split_doc_id(document_id)
        refs.append(Ref(source=source, id=stable, scope=key, op="delete"))
    return refs


def apply_events(pool: ConnectionPool, source: str, events: list[tuple[str, str]]) -> list[Ref]:
    """Lifecycle events from webhooks: archived/unarchived toggle polling; deleted purges;
    access re-syncs the scope's documents."""
    refs: list[Ref] = []
    for kind, key in events:
        if kind == "archived":
            set_active(pool, source, [key], False)
        elif kind in ("unarchived", "created"):
            ensure_scope(pool, source, key)
            set_active(pool, source, [key], True)
        elif kind == "deleted":
            set_active(pool, source, [key], False)
            refs.extend(purge_refs(pool, source, key))
        elif kind == "access":
            # Who may read the scope changed (a private Slack channel's membership): re-sync
            # its documents so their access metadata follows.
            from core.access import scope_resync_refs

            refs.extend(scope_resync_refs(pool, source, key))
    return refs
