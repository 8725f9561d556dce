"""The one job every path leads to: bring a batch of documents up to date in the index.

For each ref: get the current truth (the ref's own document, or the source's ``fetch``; a
delete notification is confirmed by a fetch, since a page can be restored), skip what is older
than what is stored, skip what is unchanged (no embedding call, no upsert), re-upsert metadata
without re-embedding when only metadata changed, and otherwise chunk, embed — every chunk of
every document in the batch in one embedder call — upsert, delete the chunks a shorter version
no longer has, and record. Gone deletes every chunk. A failed fetch is recorded and retried,
never taken for a deletion.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import ConnectionPool

from core import access, state
from core.documents import Document, Gone, Ref, chunk_text, vector_id
from core.embeddings import Embedder
from core.errors import NotConfigured, NotReady, PermanentSourceError, RateLimited, VectorSyncError
from core.index import Vector, VectorIndex
from core.runtime import SourceSet
from core.settings import Settings

log = logging.getLogger("vector_sync.sync")

#: Fetches in flight at once per job (each source's budget still applies on top).
FETCH_CONCURRENCY = 8
#: Updated-at comparisons tolerate float noise from epoch conversions (seconds).
EPSILON = 1e-3


@dataclass
class Outcome:
    counts: Counter[str] = field(default_factory=Counter)
    per_source: dict[str, Counter[str]] = field(default_factory=dict)
    #: document id → (error, ref) for each document that failed.
    failures: dict[str, tuple[Exception, Ref]] = field(default_factory=dict)

    def add(self, source: str, what: str) -> None:
        self.counts[what] += 1
        self.per_source.setdefault(source, Counter())[what] += 1

    def failed_refs(self) -> list[Ref]:
        return [ref for _, ref in self.failures.values()]

    @property
    def retry_after(self) -> float | None:
        waits = [e.retry_after for e, _ in self.failures.values() if isinstance(e, RateLimited)]
        return max(waits) if waits else None

    @property
    def all_permanent(self) -> bool:
        return bool(self.failures) and all(
            isinstance(e, PermanentSourceError | NotConfigured) for e, _ in self.failures.values()
        )


def vector_metadata(doc: Document, chunk: int, text: str) -> dict[str, Any]:
    """Metadata stored on every vector (Pinecone rules: no nulls, lists of strings)."""
    meta: dict[str, Any] = {}
    for key, value in doc.metadata.items():
        if value is None:
            continue
        meta[key] = [str(v) for v in value] if isinstance(value, list | tuple) else value
    meta.update(
        source=doc.source,
        document_id=doc.document_id,
        scope=doc.scope,
        title=doc.title,
        url=doc.url,
        author=doc.author,
        updated_at=doc.updated_at,
        chunk=chunk,
        text=text,
        access_type=doc.access_type,
    )
    if doc.access_list:
        meta["access_list"] = list(doc.access_list)
    return meta


def document_chunks(doc: Document, settings: Settings) -> list[str]:
    chunks = chunk_text(doc.text, settings.chunk_tokens, settings.chunk_overlap_tokens)
    return chunks or [doc.title or doc.document_id]


def embedding_input(doc: Document, chunk: str) -> str:
    # The title rides along with every chunk so each vector knows what it belongs to.
    return f"{doc.title}\n\n{chunk}" if doc.title and not chunk.startswith(doc.title) else chunk


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        pool: ConnectionPool,
        index: VectorIndex,
        embedder: Embedder,
        sources: SourceSet,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.index = index
        self.embedder = embedder
        self.sources = sources

    async def run(self, refs: list[Ref]) -> Outcome:
        outcome = Outcome()
        latest: dict[str, Ref] = {}
        for ref in refs:  # the last word on a document within one batch wins
            latest[ref.document_id] = ref
        resolved = await self._resolve(list(latest.values()), outcome)
        # Operator-set access per scope (vector-sync scopes access) overrides the source's.
        resolved = await asyncio.to_thread(access.apply_overrides, self.pool, resolved)
        rows = await asyncio.to_thread(state.get_documents, self.pool, list(resolved))
        to_embed: list[Document] = []
        unchanged: list[str] = []
        metadata_only: list[Document] = []
        gone: list[Gone] = []
        for document_id, truth in resolved.items():
            row = rows.get(document_id)
            ref = latest[document_id]
            if isinstance(truth, Gone):
                if ref.document is None and ref.source == "api" and _older(ref.event_at, row):
                    outcome.add(ref.source, "stale_ignored")
                    unchanged.append(document_id)
                    continue
                gone.append(truth)
            elif row is not None and row.deleted_at is None and _older(truth.updated_at, row):
                outcome.add(ref.source, "stale_ignored")
                unchanged.append(document_id)
            elif row is not None and row.deleted_at is None and row.content_hash == self.content_key(truth):
                if row.metadata_hash == truth.metadata_hash() and row.scope == truth.scope:
                    outcome.add(ref.source, "unchanged")
                    unchanged.append(document_id)
                else:
                    metadata_only.append(truth)
            else:
                to_embed.append(truth)
        await asyncio.to_thread(state.mark_checked, self.pool, unchanged)
        await self._delete(gone, rows, outcome)
        await self._update_metadata(metadata_only, rows, outcome)
        await self._embed_and_upsert(to_embed, rows, outcome)
        await asyncio.to_thread(self._record_stats, outcome, latest)
        return outcome

    async def _resolve(self, refs: list[Ref], outcome: Outcome) -> dict[str, Document | Gone]:
        semaphore = asyncio.Semaphore(FETCH_CONCURRENCY)
        resolved: dict[str, Document | Gone] = {}

        async def one(ref: Ref) -> None:
            try:
                if ref.document is not None:
                    resolved[ref.document_id] = ref.document
                elif ref.source == "api":
                    if ref.op != "delete":
                        raise NotConfigured(f"{ref.document_id}: a pushed document needs content")
                    resolved[ref.document_id] = Gone(ref.source, ref.id)
                else:
                    async with semaphore:
                        resolved[ref.document_id] = await self.sources.get(ref.source).fetch(ref)
            except NotReady as exc:
                # Not a failure: nothing is stored, nothing deleted, no retry storm. It is
                # remembered as deferred, and every reconcile pass of its source asks again.
                outcome.add(ref.source, "deferred")
                await asyncio.to_thread(state.record_deferred, self.pool, ref.document_id, ref.source, ref.scope)
                log.info("not ready, deferred", extra={"document_id": ref.document_id, "reason": str(exc)})
            except (VectorSyncError, OSError) as exc:
                outcome.failures[ref.document_id] = (exc, ref)
                log.warning("fetch failed", extra={"document_id": ref.document_id, "error": str(exc)})

        await asyncio.gather(*(one(ref) for ref in refs))
        return resolved

    async def _delete(self, gone: list[Gone], rows: Mapping[str, state.DocumentRow], outcome: Outcome) -> None:
        ids: list[str] = []
        for item in gone:
            row = rows.get(item.document_id)
            count = row.chunk_count if row else 0
            ids.extend(vector_id(item.document_id, n) for n in range(count))
        if ids:
            await asyncio.to_thread(self.index.delete, ids)
        for item in gone:
            await asyncio.to_thread(state.record_deleted, self.pool, item.document_id, item.source)
            outcome.add(item.source, "deleted")

    async def _update_metadata(
        self, docs: list[Document], rows: Mapping[str, state.DocumentRow], outcome: Outcome
    ) -> None:
        if not docs:
            return
        updates: dict[str, dict[str, Any]] = {}
        for doc in docs:
            for n, chunk in enumerate(document_chunks(doc, self.settings)):
                updates[vector_id(doc.document_id, n)] = vector_metadata(doc, n, chunk)
        await asyncio.to_thread(self.index.update_metadata, updates)
        for doc in docs:
            await asyncio.to_thread(self._record, doc, rows[doc.document_id].chunk_count)
            outcome.add(doc.source, "metadata_only")

    async def _embed_and_upsert(
        self, docs: list[Document], rows: Mapping[str, state.DocumentRow], outcome: Outcome
    ) -> None:
        if not docs:
            return
        plan = [(doc, document_chunks(doc, self.settings)) for doc in docs]
        inputs = [embedding_input(doc, chunk) for doc, chunks in plan for chunk in chunks]
        vectors_values = await self.embedder.embed(inputs)
        vectors: list[Vector] = []
        surplus: list[str] = []
        position = 0
        for doc, chunks in plan:
            for n, chunk in enumerate(chunks):
                vectors.append(
                    Vector(vector_id(doc.document_id, n), vectors_values[position],
                           vector_metadata(doc, n, chunk))
                )
                position += 1
            row = rows.get(doc.document_id)
            if row is not None and row.chunk_count > len(chunks):
                surplus.extend(vector_id(doc.document_id, n) for n in range(len(chunks), row.chunk_count))
        await asyncio.to_thread(self.index.upsert, vectors)
        if surplus:
            await asyncio.to_thread(self.index.delete, surplus)
        for doc, chunks in plan:
            await asyncio.to_thread(self._record, doc, len(chunks))
            outcome.add(doc.source, "synced")

    def content_key(self, doc: Document) -> str:
        """The stored content hash: the document's content *and* how its vectors were made.

        Vectors from another embedder, dimension or chunking are as stale as vectors of old text:
        switching any of them re-embeds every document the next time it is seen, instead of
        leaving unchanged documents in an old embedding space.
        """
        recipe = (f"{self.embedder.model}/{self.embedder.dimensions}/"
                  f"{self.settings.chunk_tokens}/{self.settings.chunk_overlap_tokens}")
        return hashlib.sha256(f"{recipe}:{doc.content_hash()}".encode()).hexdigest()

    def _record(self, doc: Document, chunk_count: int) -> None:
        state.record_indexed(
            self.pool,
            document_id=doc.document_id,
            source=doc.source,
            scope=doc.scope,
            title=doc.title,
            url=doc.url,
            content_hash=self.content_key(doc),
            metadata_hash=doc.metadata_hash(),
            source_updated_at=doc.updated_at,
            chunk_count=chunk_count,
        )

    def _record_stats(self, outcome: Outcome, refs: Mapping[str, Ref]) -> None:
        errors: dict[str, str] = {}
        for document_id, (exc, ref) in outcome.failures.items():
            outcome.per_source.setdefault(ref.source, Counter())["failed"] += 1
            errors[ref.source] = str(exc)
            state.record_document_error(self.pool, document_id, ref.source, str(exc))
        for source, counts in outcome.per_source.items():
            state.bump_source_stats(self.pool, source, counts, errors.get(source))


def _older(updated_at: float | None, row: state.DocumentRow | None) -> bool:
    """True when ``updated_at`` is older than the version already stored."""
    if updated_at is None or row is None or row.source_updated_at is None:
        return False
    return updated_at < row.source_updated_at - EPSILON
