"""Who may read what: access views for search, operator-set access per scope, and whether a
result's scope is stale.

Every vector carries ``access_type`` (``public``: the workspace; ``restricted``: only the
principals in ``access_list``, emails, lower-case). Search never filters after the fact: the
caller's view becomes part of the index query (:func:`access_filter`), so ``top_k`` stays full.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from psycopg_pool import ConnectionPool

from core.apikeys import ApiKey, normalise_principal
from core.documents import Document, Ref, split_doc_id
from core.status import scope_row_state


class AccessDenied(Exception):
    """The caller asked for a view its key does not allow (answered 403)."""


@dataclass(frozen=True)
class AccessView:
    """What one search may see: everything (``see_all``), or public documents plus restricted
    ones listing ``principal``."""

    principal: str | None = None
    see_all: bool = False

    def describe(self) -> str:
        if self.see_all:
            return "everything (include_restricted)"
        return f"public + restricted to {self.principal}" if self.principal else "public only"


def view_for(key: ApiKey | None, as_user: str | None = None, include_restricted: bool = False) -> AccessView:
    """The view a key gets. ``key`` None is the local operator (the CLI): treated as admin.

    - admin: everything only with ``include_restricted``; else as ``as_user`` or its own
      principal, else public only.
    - search key: ``include_restricted`` is refused; ``as_user`` only when trusted; else its
      own principal (public only if it has none).
    """
    user = normalise_principal(as_user)
    if as_user is not None and (user is None or "@" not in user):
        raise ValueError("'as_user' must be an email address")
    admin = key is None or key.is_admin
    if include_restricted:
        if not admin:
            raise AccessDenied("include_restricted needs an admin key")
        return AccessView(see_all=True)
    if user is not None:
        if not admin and not key.trusted:  # type: ignore[union-attr]
            raise AccessDenied("this key is not trusted to search on behalf of a user (as_user)")
        return AccessView(principal=user)
    return AccessView(principal=key.principal if key is not None else None)


def access_filter(view: AccessView) -> dict[str, Any] | None:
    """The index filter (Pinecone's language, which pgvector's backend also speaks)."""
    if view.see_all:
        return None
    if view.principal is None:
        return {"access_type": {"$eq": "public"}}
    # A list field matches $in when any of its elements does (Pinecone's documented rule).
    return {"$or": [{"access_type": {"$eq": "public"}}, {"access_list": {"$in": [view.principal]}}]}


def can_read(metadata: Mapping[str, Any] | None, view: AccessView) -> bool:
    """The same rule as :func:`access_filter`, for one record (GET /api/documents/{id})."""
    if view.see_all:
        return True
    if metadata is None:
        return False  # nothing says who may read it: fail closed
    if metadata.get("access_type", "public") == "public":
        return True
    listed = metadata.get("access_list") or []
    return view.principal is not None and view.principal in [str(p).lower() for p in listed]


def combine(*filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    parts = [dict(f) for f in filters if f]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


# --- operator-set access per scope -----------------------------------------------------------


@dataclass(frozen=True)
class ScopeAccess:
    access_type: str  # "public" | "restricted"
    access_list: tuple[str, ...] = ()


def set_scope_access(
    pool: ConnectionPool, source: str, keys: list[str], access_type: str | None,
    access_list: Iterable[str] = (),
) -> list[str]:
    """Set (or with ``access_type`` None, clear) the operator's access for scopes; returns the
    keys that exist. The caller re-syncs their documents so the index follows."""
    if access_type not in (None, "public", "restricted"):
        raise ValueError("access_type must be public or restricted")
    if any("\x00" in k for k in keys) or any("\x00" in m for m in access_list):
        raise ValueError("scope keys and principals must not contain NUL characters")
    members = sorted({p for p in (normalise_principal(m) for m in access_list) if p})
    if access_type == "restricted" and not members:
        raise ValueError("restricting a scope needs at least one principal")
    if any("@" not in m for m in members):
        raise ValueError("principals must be email addresses")
    with pool.connection() as conn:
        rows = conn.execute(
            """UPDATE scopes SET access_type = %s, access_list = %s
               WHERE source = %s AND key = ANY(%s) RETURNING key""",
            (access_type, members if access_type == "restricted" else [], source, keys),
        ).fetchall()
    return sorted(r[0] for r in rows)


def scope_overrides(pool: ConnectionPool, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], ScopeAccess]:
    """Operator-set access of the given (source, scope) pairs that have one."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    with pool.connection() as conn:
        rows = conn.execute(
            """SELECT source, key, access_type, access_list FROM scopes
               WHERE access_type IS NOT NULL
                 AND (source, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
            ([p[0] for p in wanted], [p[1] for p in wanted]),
        ).fetchall()
    return {(r[0], r[1]): ScopeAccess(r[2], tuple(r[3] or ())) for r in rows}


def apply_override(doc: Document, override: ScopeAccess | None) -> Document:
    """The document with its scope's operator-set access, when there is one."""
    if override is None:
        return doc
    listed = override.access_list if override.access_type == "restricted" else ()
    return dataclasses.replace(doc, access_type=override.access_type, access_list=tuple(listed))  # type: ignore[arg-type]


def apply_overrides(pool: ConnectionPool, docs: Mapping[str, Any]) -> dict[str, Any]:
    """``apply_override`` over a batch of resolved documents (others pass through)."""
    real = [d for d in docs.values() if isinstance(d, Document)]
    overrides = scope_overrides(pool, [(d.source, d.scope) for d in real])
    if not overrides:
        return dict(docs)
    return {
        k: apply_override(d, overrides.get((d.source, d.scope))) if isinstance(d, Document) else d
        for k, d in docs.items()
    }


# --- the source's own access per scope, kept current ----------------------------------------


def scope_resync_refs(pool: ConnectionPool, source: str, key: str) -> list[Ref]:
    """Sync refs for every indexed document of a scope: its access changed, so the index must
    follow (the worker re-reads each; an unchanged text is a metadata-only update)."""
    from core import state

    return [Ref(source=source, id=split_doc_id(d)[1], scope=key)
            for d in state.live_document_ids(pool, source, key)]


def source_access_refs(pool: ConnectionPool, source: str, key: str, current: Iterable[str]) -> list[Ref] | None:
    """Compare the access the source reports for a scope now (e.g. a private Slack channel's
    members) with what was recorded last: None when unchanged, else refs re-syncing the scope's
    documents (nothing recorded yet counts as changed). The caller enqueues them, then
    :func:`record_source_access`, so a failed enqueue is retried on the next pass. This repairs
    a missed membership event."""
    members = sorted({str(m).lower() for m in current})
    with pool.connection() as conn:
        row = conn.execute("SELECT source_access FROM scopes WHERE source = %s AND key = %s",
                           (source, key)).fetchone()
    if row is None or (row[0] is not None and sorted(row[0]) == members):
        return None
    return scope_resync_refs(pool, source, key)


def record_source_access(pool: ConnectionPool, source: str, key: str, current: Iterable[str]) -> None:
    members = sorted({str(m).lower() for m in current})
    with pool.connection() as conn:
        conn.execute("UPDATE scopes SET source_access = %s WHERE source = %s AND key = %s",
                     (members, source, key))


# --- is a result's scope stale? ---------------------------------------------------------------


def stale_scopes(
    pool: ConnectionPool, stale_after: Mapping[str, float], pairs: Iterable[tuple[str, str]],
    now: datetime | None = None,
) -> set[tuple[str, str]]:
    """The (source, scope) pairs among ``pairs`` whose results cannot be trusted as current.

    A scope is stale when it is deactivated, when its last error is newer than its last success
    (failing), or when its last success is older than its source's ``stale_after`` seconds. A
    scope that never succeeded and never failed (documents pushed by webhooks before the first
    pass) is not stale; a (source, scope) with no row (pushed documents) is not stale either.
    """
    wanted = sorted(set(pairs))
    if not wanted:
        return set()
    now = now or datetime.now(timezone.utc)
    with pool.connection() as conn:
        rows = conn.execute(
            """SELECT source, key, active, last_success_at, last_error_at FROM scopes
               WHERE (source, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
            ([p[0] for p in wanted], [p[1] for p in wanted]),
        ).fetchall()
    stale: set[tuple[str, str]] = set()
    for source, key, active, success, error_at in rows:
        limit = stale_after.get(source)
        state_ = scope_row_state(active, success, error_at, float("inf") if limit is None else limit, now)
        # A scope never synced (documents pushed by webhooks before its first pass) is not stale.
        if state_ in ("disabled", "failing", "stale"):
            stale.add((source, key))
    return stale
