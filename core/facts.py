"""Source facts: what a connector saw of a document at its last fetch (migration 0007).

Some changes leave no new timestamp in a source's listing: a reply deleted from a Slack thread
lowers its parent's ``reply_count`` but moves no ts, and a renamed Fireflies transcript keeps
its meeting date. A connector records, per document, the facts its listing can show
(``remember``), and on the next listing compares them (``recall``) to pick out what changed.
``parts`` are ids of a document's pieces (a Slack thread's message ts), so an event that names
only a piece finds its document (``owner``).

Facts are written during ``fetch``, before the pipeline records the document. ``recall`` trusts
a row only when the documents row was checked at or after the fetch (``checked_at >= seen_at``)
and is not deleted, so a fetch whose indexing failed is never taken for an indexed version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from psycopg_pool import ConnectionPool

from core.documents import Ref


def remember(pool: ConnectionPool, document_id: str, source: str, scope: str,
             facts: Mapping[str, Any], parts: Iterable[str] = (), version: float = 0.0) -> None:
    """Record what a fetch saw; ignored when a newer ``version`` is already recorded."""
    with pool.connection() as conn:
        conn.execute(
            """INSERT INTO source_facts (document_id, source, scope, facts, parts, version, seen_at)
               VALUES (%s, %s, %s, %s::jsonb, %s, %s, now())
               ON CONFLICT (document_id) DO UPDATE SET
                   source = excluded.source, scope = excluded.scope, facts = excluded.facts,
                   parts = excluded.parts, version = excluded.version, seen_at = now()
               WHERE excluded.version >= source_facts.version""",
            (document_id, source, scope, json.dumps(dict(facts)), list(parts), version),
        )


def forget(pool: ConnectionPool, document_id: str) -> None:
    with pool.connection() as conn:
        conn.execute("DELETE FROM source_facts WHERE document_id = %s", (document_id,))


def recall(pool: ConnectionPool, source: str, scope: str) -> dict[str, dict[str, Any]]:
    """document id → facts (plus ``version``), for the scope's documents whose facts match
    what is indexed."""
    with pool.connection() as conn:
        rows = conn.execute(
            """SELECT f.document_id, f.facts || jsonb_build_object('version', f.version)
               FROM source_facts f
               JOIN documents d ON d.document_id = f.document_id
               WHERE f.source = %s AND f.scope = %s AND d.deleted_at IS NULL
                 AND d.checked_at >= f.seen_at""",
            (source, scope),
        ).fetchall()
    return {document_id: dict(facts) for document_id, facts in rows}


def owner(pool: ConnectionPool, source: str, scope: str, part: str) -> str | None:
    """The document of ``scope`` that holds ``part`` (the most recently seen, if several)."""
    with pool.connection() as conn:
        row = conn.execute(
            """SELECT document_id FROM source_facts
               WHERE source = %s AND scope = %s AND parts @> ARRAY[%s]::text[]
               ORDER BY seen_at DESC LIMIT 1""",
            (source, scope, part),
        ).fetchone()
    return str(row[0]) if row else None


@runtime_checkable
class FactStore(Protocol):
    """What a connector's ``context`` offers when it can remember facts and ask for follow-up
    syncs (``core.runtime.DatabaseContext``). Connectors check ``isinstance(context, FactStore)``
    and fall back to what their listing alone can tell when it is not."""

    async def remember(self, document_id: str, source: str, scope: str,
                       facts: Mapping[str, Any], parts: Iterable[str] = (),
                       version: float = 0.0) -> None: ...

    async def forget(self, document_id: str) -> None: ...

    async def recall(self, source: str, scope: str) -> dict[str, dict[str, Any]]: ...

    async def owner(self, source: str, scope: str, part: str) -> str | None: ...

    async def enqueue(self, refs: list[Ref]) -> None:
        """Durably enqueue sync refs a connector discovered it needs (on the live queue)."""
        ...
