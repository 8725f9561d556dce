"""The one job every path leads to: bring a batch of documents up to date in the index.

Each document of a batch goes through the stages on its own, so **one failing document never
fails its neighbours**; a document that fails is recorded with its stage and reason
(``state.record_document_error``), counted by stage (``state.bump_source_stats``), and handed
back to the actor, which retries just the failed refs (workers/actors.py).

1. **fetch** — the current truth: the ref's own document, the document its webhook carried
   (``ref.payload``, completed by the source's ``from_payload``), or the source's ``fetch``; a delete
   notification is confirmed by a fetch, since a page can be restored. A failed fetch is never
   taken for a deletion. Content not ready yet is *deferred* (not failed).
2. **validate** — what the stores cannot hold is cleaned when that loses nothing: NUL and lone
   surrogates are stripped from title, text, url, author, scope, access list and metadata keys
   and values, and NaN/Infinity metadata values are dropped (``core.documents.clean_document``).
   A document whose *identity* cannot be stored (NUL in its id, a non-finite ``updated_at``)
   fails here, recorded under its id with the bad characters escaped (``\\u0000``).
3. **plan** — compared with the stored row: older than what is stored → ``stale_ignored``;
   same content → ``unchanged`` (no embedding call, no write, no lock); only metadata changed →
   re-upsert metadata without re-embedding; otherwise chunk and embed.
4. **embed** — every chunk of every document in one embedder call. If the embedder refuses the
   inputs (400), the batch is split in halves until the refused document(s) are found: they fail
   alone, the rest is embedded. Other embedder errors fail the documents of that call.
5. **write** (index + record) — **one writer per document**: the batch takes Postgres advisory
   locks on its documents, in sorted order (so two batches never deadlock), on a connection of
   its own, and holds them only here: never while fetching or embedding. Under the locks it
   re-reads the stored rows and decides again (the version check), upserts, deletes every vector
   id of the document that is not in the new set (by document, never by counting chunks), and
   records. A batch that fails to upsert is retried document by document, so a refused record
   fails only its own document. Deletes delete by document too.

**Newest wins.** Versions are ordered by the source's ``updated_at``, then by ``seen_at``: when
our side read that version (the fetch, the listing that carried it, the push, the delete
request). A version older than the stored one is ignored; so is a version read before the stored
deletion was confirmed (no ghost from a delete racing an upsert), and a deletion confirmed before
the stored version was read. A deleted document comes back only with a read newer than its
deletion. **An API delete always deletes** what was pushed before it arrived: it is ordered by
arrival (``seen_at``), never by the client's ``updated_at``, so a document pushed with a wrong
timestamp (milliseconds: the year 58,000) is still deleted; a push that arrives after the delete
is kept, whatever order the jobs run in.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg_pool import ConnectionPool

from core import access, state
from core.documents import (
    CHUNKER_VERSION,
    Document,
    Gone,
    Ref,
    TokenCounter,
    chunk_text,
    clean_document,
    escape_unstorable,
    estimate_tokens,
    identity_problem,
    vector_id,
)
from core.embeddings import Embedder, token_counter
from core.errors import (
    DocumentInvalid,
    EmbeddingRejected,
    NotConfigured,
    NotReady,
    RateLimited,
    TransientSourceError,
    VectorSyncError,
    wait_of,
)
from core.index import Vector, VectorIndex
from core.runtime import SourceSet
from core.settings import Settings

log = logging.getLogger("vector_sync.sync")

#: Fetches in flight at once per job (each source's budget still applies on top).
FETCH_CONCURRENCY = 8
#: Updated-at comparisons tolerate float noise from epoch conversions (seconds).
EPSILON = 1e-3
#: Seconds a batch waits for another writer's document locks before its documents fail (and are
#: retried): a lock is only held while writing, so this is generous.
LOCK_TIMEOUT = 120
#: Rounds of plan → embed → write when another writer changed a document in between.
MAX_ROUNDS = 3

Decision = Literal["stale", "unchanged", "metadata", "embed", "delete"]


@dataclass
class Failure:
    error: Exception
    ref: Ref
    stage: str


@dataclass
class Outcome:
    counts: Counter[str] = field(default_factory=Counter)
    per_source: dict[str, Counter[str]] = field(default_factory=dict)
    #: document id → the failure, for each document that failed (the actor retries these refs).
    failures: dict[str, Failure] = field(default_factory=dict)

    def add(self, source: str, what: str) -> None:
        self.counts[what] += 1
        self.per_source.setdefault(source, Counter())[what] += 1

    def fail(self, ref: Ref, stage: str, error: Exception) -> None:
        self.failures[ref.document_id] = Failure(error, ref, stage)
        log.warning("document failed", extra={"document_id": ref.document_id, "stage": stage,
                                              "error": str(error)[:500]})

    def failed_refs(self) -> list[Ref]:
        return [f.ref for f in self.failures.values()]


@dataclass
class Item:
    """One document of the batch on its way through the stages."""

    ref: Ref
    truth: Document | Gone
    #: When this truth was read (our clock): orders it against what is stored.
    seen_at: float
    vectors: list[list[float]] | None = None
    chunks: list[str] = field(default_factory=list)
    decision: Decision | None = None
    #: Whether the document had a stored row when it was written (else it cannot have vectors).
    known: bool = True

    @property
    def document_id(self) -> str:
        return self.truth.document_id


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


def document_chunks(doc: Document, settings: Settings,
                    count: TokenCounter = estimate_tokens) -> list[str]:
    """``count`` is the embedder's own token count (exact for OpenAI), so chunks fit its limits."""
    chunks = chunk_text(doc.text, settings.chunk_tokens, settings.chunk_overlap_tokens, count)
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
        self._count = token_counter(embedder)
        self.sources = sources
        #: Write phases that had to wait for another writer's lock (tests and benchmarks read it).
        self.lock_waits = 0
        #: Idle lock connections, reused by the next write phase on the same event loop.
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._idle_loop: asyncio.AbstractEventLoop | None = None

    async def run(self, refs: list[Ref]) -> Outcome:
        outcome = Outcome()
        latest: dict[str, Ref] = {}
        for ref in refs:  # the last word on a document within one batch wins
            latest[ref.document_id] = ref
        items = await self._resolve(list(latest.values()), outcome)
        items = self._validate(items, outcome)
        items = await self._apply_access(items, outcome)
        for _ in range(MAX_ROUNDS):
            if not items:
                break
            items = await self._round(items, outcome)
        for item in items:  # still changing under us after every round: try again later
            outcome.fail(item.ref, "index", TransientSourceError(
                item.ref.source, f"{item.document_id} kept changing while it was written"))
        await self._guard("record stats", self._record_stats, outcome)
        return outcome

    # --- stage 1: fetch ----------------------------------------------------------------
    async def _resolve(self, refs: list[Ref], outcome: Outcome) -> list[Item]:
        semaphore = asyncio.Semaphore(FETCH_CONCURRENCY)
        items: list[Item] = []

        async def one(ref: Ref) -> None:
            try:
                if ref.document is not None:
                    items.append(Item(ref, ref.document, ref.seen_at))
                elif (built := await self._from_payload(ref, semaphore)) is not None:
                    items.append(built)
                elif ref.source == "api":
                    if ref.op != "delete":
                        raise NotConfigured(f"{ref.document_id}: a pushed document needs content")
                    items.append(Item(ref, Gone(ref.source, ref.id), ref.seen_at))
                else:
                    async with semaphore:
                        seen = time.time()  # the truth is at least as new as the request
                        truth = await self.sources.get(ref.source).fetch(ref)
                    items.append(Item(ref, truth, seen))
            except NotReady as exc:
                # Not a failure: nothing is stored, nothing deleted, no retry storm. It is
                # remembered as deferred, and every reconcile pass of its source asks again.
                outcome.add(ref.source, "deferred")
                await self._guard("record deferred", state.record_deferred, self.pool, ref.document_id,
                                  ref.source, ref.scope)
                log.info("not ready, deferred", extra={"document_id": ref.document_id, "reason": str(exc)})
            except Exception as exc:  # noqa: BLE001 - whatever it is, it is this document's alone
                outcome.fail(ref, "fetch", exc)

        await asyncio.gather(*(one(ref) for ref in refs))
        return items

    async def _from_payload(self, ref: Ref, semaphore: asyncio.Semaphore) -> Item | None:
        """The document a webhook already carried (``ref.payload``), built by its source's
        ``from_payload``, which asks only for what the payload lacks; None when the ref has no
        payload or its source cannot use one (then it is fetched).

        The version is the push's: ``seen_at`` is when the receiver read the payload, never
        later, so a fetch made after it wins a tie of ``updated_at`` (newest wins, as ever)."""
        if ref.payload is None or ref.op != "sync" or ref.source == "api":
            return None
        build = getattr(self.sources.get(ref.source), "from_payload", None)
        if build is None:
            return None
        async with semaphore:
            asked = time.time()
            truth = await build(ref)
        # Gone comes from a fetch the source fell back to: that read is as new as the request.
        return Item(ref, truth, asked if isinstance(truth, Gone) else ref.seen_at)

    # --- stage 2: validate -------------------------------------------------------------
    def _validate(self, items: list[Item], outcome: Outcome) -> list[Item]:
        valid: dict[str, Item] = {}
        for item in items:
            truth = item.truth
            updated = truth.updated_at if isinstance(truth, Document) else None
            problem = identity_problem(truth.source, truth.id, updated)
            if problem is not None:
                outcome.fail(item.ref, "validate", DocumentInvalid(problem))
                continue
            if isinstance(truth, Document):
                cleaned, what = clean_document(truth)
                if what:
                    log.info("cleaned characters the stores cannot hold",
                             extra={"document_id": truth.document_id, "fields": ", ".join(what)})
                    item.truth = cleaned
            if not math.isfinite(item.seen_at):
                item.seen_at = time.time()
            # Two refs may resolve to one document (a reply and its thread): write it once.
            previous = valid.get(item.document_id)
            if previous is None or item.seen_at >= previous.seen_at:
                valid[item.document_id] = item
        return list(valid.values())

    async def _apply_access(self, items: list[Item], outcome: Outcome) -> list[Item]:
        """Operator-set access per scope (``vector-sync scopes access``) overrides the source's."""
        docs = {item.document_id: item.truth for item in items}
        try:
            applied = await asyncio.to_thread(access.apply_overrides, self.pool, docs)
        except Exception as exc:  # noqa: BLE001 - Postgres unreachable: every document waits
            for item in items:
                outcome.fail(item.ref, "record", exc)
            return []
        for item in items:
            item.truth = applied[item.document_id]
        return items

    # --- stages 3 to 5 -----------------------------------------------------------------
    async def _round(self, items: list[Item], outcome: Outcome) -> list[Item]:
        """Plan, embed what needs it, write under the locks; returns the items to go round again."""
        try:
            rows = await asyncio.to_thread(state.get_documents, self.pool, [i.document_id for i in items])
        except Exception as exc:  # noqa: BLE001 - Postgres unreachable: every document waits
            for item in items:
                outcome.fail(item.ref, "record", exc)
            return []
        writes: list[Item] = []
        unchanged: list[Item] = []
        for item in items:
            decision = item.decision = self.decide(item, rows.get(item.document_id))
            if decision in ("stale", "unchanged"):
                unchanged.append(item)
                outcome.add(item.ref.source, "stale_ignored" if decision == "stale" else "unchanged")
            else:
                writes.append(item)
                if decision == "embed" and item.vectors is None:
                    # In a thread: an exact token count of a megabyte takes seconds, and the
                    # loop serves the worker's other jobs meanwhile.
                    item.chunks = await asyncio.to_thread(  # type: ignore[arg-type]
                        document_chunks, item.truth, self.settings, self._count)
        await self._mark_checked(unchanged)
        await self._embed([i for i in writes if i.chunks and i.vectors is None], outcome)
        ready = [i for i in writes if i.ref.document_id not in outcome.failures]
        if not ready:
            return []
        return await self._write(ready, outcome)

    def decide(self, item: Item, row: state.DocumentRow | None) -> Decision:
        """What to do with ``item`` given the stored ``row`` (the version check)."""
        truth, seen = item.truth, item.seen_at
        stored_seen = row.seen_at if row is not None else None
        newer_read_stored = stored_seen is not None and stored_seen > seen + EPSILON
        if isinstance(truth, Gone):
            if row is not None and row.deleted_at is None and newer_read_stored:
                return "stale"  # the stored version was read after this deletion was confirmed
            return "delete"
        if row is None:
            return "embed"
        if row.deleted_seen_at is not None and seen < row.deleted_seen_at - EPSILON:
            return "stale"  # read before a deletion that was confirmed later
        if row.deleted_at is not None:
            return "stale" if newer_read_stored else "embed"  # deleted after we read it
        if row.source_updated_at is not None:
            if truth.updated_at < row.source_updated_at - EPSILON:
                return "stale"
            if truth.updated_at <= row.source_updated_at + EPSILON and newer_read_stored:
                return "stale"  # the same version stamp, read earlier than what is stored
        if row.content_hash == self.content_key(truth):
            if row.metadata_hash == truth.metadata_hash() and row.scope == truth.scope:
                return "unchanged"
            return "metadata"
        return "embed"

    async def _mark_checked(self, items: list[Item]) -> None:
        if items:
            # Only an unchanged version confirms the stored one as of this read.
            confirmed = {i.document_id: i.seen_at for i in items
                         if i.decision == "unchanged" and isinstance(i.truth, Document)}
            await self._guard("mark checked", state.mark_checked, self.pool,
                              [i.document_id for i in items], confirmed)
            ignored = {i.document_id: i.seen_at for i in items if isinstance(i.truth, Gone)}
            if ignored:
                await self._guard("note deletions", state.note_deletion, self.pool, ignored)

    # --- stage 4: embed ----------------------------------------------------------------
    async def _embed(self, items: list[Item], outcome: Outcome) -> None:
        """Embed every chunk of ``items`` in one call; find the culprits if inputs are refused."""

        async def attempt(group: list[Item]) -> None:
            inputs = [embedding_input(i.truth, c) for i in group for c in i.chunks]  # type: ignore[arg-type]
            try:
                values = await self.embedder.embed(inputs)
                if len(values) != len(inputs):
                    raise VectorSyncError(f"the embedder returned {len(values)} vectors for {len(inputs)} inputs")
            except EmbeddingRejected as exc:
                if len(group) == 1:
                    outcome.fail(group[0].ref, "embed", exc)
                    return
                # One bad input must not fail its neighbours: halve until it is found. One half
                # after the other, so the halves are not coalesced into one request again.
                middle = len(group) // 2
                await attempt(group[:middle])
                await attempt(group[middle:])
                return
            except Exception as exc:  # noqa: BLE001 - the embedder failed for all of them
                for item in group:
                    outcome.fail(item.ref, "embed", exc)
                return
            position = 0
            for item in group:
                item.vectors = values[position : position + len(item.chunks)]
                position += len(item.chunks)

        if items:
            await attempt(items)

    # --- stage 5: write, one writer per document ---------------------------------------
    async def _write(self, items: list[Item], outcome: Outcome) -> list[Item]:
        ids = sorted({i.document_id for i in items})
        try:
            conn = await self._lock(ids)
        except Exception as exc:  # noqa: BLE001 - no lock, no write: they are retried
            for item in items:
                outcome.fail(item.ref, "index", exc)
            return []
        again: list[Item] = []
        try:
            try:
                rows = await asyncio.to_thread(state.get_documents, self.pool, ids)
            except Exception as exc:  # noqa: BLE001
                for item in items:
                    outcome.fail(item.ref, "record", exc)
                return []
            deletes: list[Item] = []
            metadata: list[Item] = []
            upserts: list[Item] = []
            unchanged: list[Item] = []
            for item in items:
                decision = item.decision = self.decide(item, rows.get(item.document_id))
                item.known = item.document_id in rows
                if decision == "delete":
                    deletes.append(item)
                elif decision == "metadata" and item.vectors is None:
                    metadata.append(item)
                elif decision in ("embed", "metadata"):
                    if item.vectors is None:
                        again.append(item)  # changed by another writer since we planned: embed
                    else:
                        upserts.append(item)
                else:
                    unchanged.append(item)
                    outcome.add(item.ref.source, "stale_ignored" if decision == "stale" else "unchanged")
            await self._mark_checked(unchanged)
            await self._delete(deletes, outcome)
            await self._update_metadata(metadata, rows, outcome)
            await self._upsert(upserts, outcome)
        finally:
            await self._unlock(conn)
        return again

    async def _lock(self, document_ids: list[str]) -> psycopg.AsyncConnection[Any]:
        """Advisory locks on these documents, in sorted key order, on a connection of their own
        (waiting for them blocks no thread and holds no connection of the shared pool)."""
        keys = sorted({state.document_lock_key(d) for d in document_ids})
        conn = await self._connection()
        try:
            cur = await conn.execute(
                "SELECT bool_and(pg_try_advisory_lock(%s, k)) FROM unnest(%s::int[]) AS k",
                (state.DOCUMENT_LOCK_CLASS, keys))
            row = await cur.fetchone()
            if not (row and row[0]):
                # Someone else is writing one of them: give back what we got, then wait in order.
                self.lock_waits += 1
                await conn.execute("SELECT pg_advisory_unlock_all()")
                for key in keys:
                    await conn.execute("SELECT pg_advisory_lock(%s, %s)", (state.DOCUMENT_LOCK_CLASS, key))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        loop = asyncio.get_running_loop()
        if self._idle_loop is not loop:  # connections belong to the loop that made them
            self._idle, self._idle_loop = [], loop
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not conn.broken:
                return conn
        conn = await psycopg.AsyncConnection.connect(self.pool.conninfo, autocommit=True,
                                                     connect_timeout=10)
        await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}s'")
        return conn

    async def _unlock(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()")
        except Exception:  # noqa: BLE001 - closing the session releases them anyway
            log.warning("could not release document locks; closing their connection")
            await conn.close()
            return
        if len(self._idle) < self.settings.worker_threads and asyncio.get_running_loop() is self._idle_loop:
            self._idle.append(conn)
        else:
            await conn.close()

    async def _delete(self, items: list[Item], outcome: Outcome) -> None:
        if not items:
            return
        ok = await self._each(items, outcome, "index",
                              lambda group: asyncio.to_thread(self.index.delete_documents,
                                                              [i.document_id for i in group]))
        # One statement for the batch; if it is refused, each alone (only the culprit fails).
        recorded = await self._each(
            ok, outcome, "record",
            lambda group: asyncio.to_thread(state.record_deleted_many, self.pool,
                                            [(i.document_id, i.truth.source, i.seen_at) for i in group]))
        for item in recorded:
            outcome.add(item.ref.source, "deleted")

    async def _update_metadata(self, items: list[Item], rows: Mapping[str, state.DocumentRow],
                               outcome: Outcome) -> None:
        if not items:
            return

        def updates(group: list[Item]) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for item in group:
                doc = item.truth
                assert isinstance(doc, Document)
                chunks = document_chunks(doc, self.settings, self._count)
                # Under the lock the stored count is what the index holds for this content.
                for n, chunk in enumerate(chunks[: rows[doc.document_id].chunk_count]):
                    out[vector_id(doc.document_id, n)] = vector_metadata(doc, n, chunk)
            return out

        ok = await self._each(items, outcome, "index",
                              lambda group: asyncio.to_thread(self.index.update_metadata, updates(group)))
        for item in await self._record([(i, rows[i.document_id].chunk_count) for i in ok], outcome):
            outcome.add(item.ref.source, "metadata_only")

    async def _upsert(self, items: list[Item], outcome: Outcome) -> None:
        if not items:
            return

        def vectors(group: list[Item]) -> list[Vector]:
            out: list[Vector] = []
            for item in group:
                doc = item.truth
                assert isinstance(doc, Document) and item.vectors is not None
                out += [Vector(vector_id(doc.document_id, n), item.vectors[n], vector_metadata(doc, n, chunk))
                        for n, chunk in enumerate(item.chunks)]
            return out

        def keep(group: list[Item]) -> set[str]:
            return {vector_id(i.document_id, n) for i in group for n in range(len(i.chunks))}

        ok = await self._each(items, outcome, "index",
                              lambda group: asyncio.to_thread(self.index.upsert, vectors(group)))
        # The new chunks are in; now every other id of these documents goes (by document). A
        # document with no row at all was never written (every attempt, even a failed one,
        # leaves a row; a worker killed between its upsert and its record is the exception, and
        # the drift audit's orphan sweep finds that), so there is nothing else to delete: no
        # listing per new document (Pinecone lists by prefix).
        known = [i for i in ok if i.known]
        cleaned = {id(i) for i in await self._each(
            known, outcome, "index",
            lambda group: asyncio.to_thread(self.index.delete_documents,
                                            [i.document_id for i in group], keep(group)))}
        ok = [i for i in ok if not i.known or id(i) in cleaned]
        for item in await self._record([(i, len(i.chunks)) for i in ok], outcome):
            outcome.add(item.ref.source, "synced")

    async def _each(self, items: list[Item], outcome: Outcome, stage: str,
                    call: Callable[[list[Item]], Awaitable[Any]]) -> list[Item]:
        """``call`` on the whole group; if it fails, on each item alone, so only the items that
        fail on their own are failed. Returns the items that succeeded."""
        if not items:
            return []
        try:
            await call(items)
            return items
        except Exception as exc:  # noqa: BLE001
            if len(items) == 1 or wait_of(exc) is not None:
                for item in items:  # alone already, or a rate limit / outage: all of them wait
                    outcome.fail(item.ref, stage, exc)
                return []
        ok: list[Item] = []
        for item in items:
            try:
                await call([item])
                ok.append(item)
            except Exception as exc:  # noqa: BLE001
                outcome.fail(item.ref, stage, exc)
        return ok

    async def _record(self, written: list[tuple[Item, int]], outcome: Outcome) -> list[Item]:
        """Record documents whose vectors are written (``(item, chunk count)``), in one statement;
        if it is refused, each alone, so a refused record fails only its own document. Returns
        the items recorded."""
        counts = {id(item): n for item, n in written}

        def row(item: Item) -> state.Indexed:
            doc = item.truth
            assert isinstance(doc, Document)
            return state.Indexed(doc.document_id, doc.source, doc.scope, doc.title, doc.url,
                                 self.content_key(doc), doc.metadata_hash(), doc.updated_at,
                                 counts[id(item)], item.seen_at)

        return await self._each(
            [item for item, _ in written], outcome, "record",
            lambda group: asyncio.to_thread(state.record_indexed_many, self.pool, [row(i) for i in group]))

    def content_key(self, doc: Document) -> str:
        """The stored content hash: the document's content *and* how its vectors were made.

        Vectors from another embedder, dimension or chunking (its settings, or a new version of
        the chunker) are as stale as vectors of old text: switching any of them re-embeds every
        document the next time it is seen, instead of leaving unchanged documents in an old
        embedding space or mixing two ways of cutting them.
        """
        recipe = (f"{self.embedder.model}/{self.embedder.dimensions}/"
                  f"{self.settings.chunk_tokens}/{self.settings.chunk_overlap_tokens}/"
                  f"chunker-{CHUNKER_VERSION}")
        return hashlib.sha256(f"{recipe}:{doc.content_hash()}".encode()).hexdigest()

    # --- bookkeeping -------------------------------------------------------------------
    def _record_stats(self, outcome: Outcome) -> None:
        by_stage: dict[tuple[str, str], list[Failure]] = {}
        for document_id, failure in outcome.failures.items():
            if isinstance(failure.error, RateLimited):
                # A source's request budget pacing us is normal operation, not a failure of the
                # document (it waits and goes round again). An embedder's or index's 429 that
                # outlasted the SDK's own retries is recorded: it stops documents being indexed.
                continue
            ref = failure.ref
            key = escape_unstorable(document_id)  # an id Postgres refuses is named escaped
            by_stage.setdefault((escape_unstorable(ref.source), failure.stage), []).append(failure)
            try:
                state.record_document_error(self.pool, key, escape_unstorable(ref.source),
                                            escape_unstorable(f"{failure.stage}: {failure.error}"),
                                            stage=failure.stage,
                                            scope=escape_unstorable(ref.scope))
            except Exception:  # noqa: BLE001 - the job still hands the ref back for a retry
                log.exception("could not record a document failure", extra={"document_id": key})
        for source, counts in outcome.per_source.items():
            state.bump_source_stats(self.pool, source, counts)
        for (source, stage), failures in by_stage.items():
            last = failures[-1]
            state.bump_source_stats(self.pool, source, {"failed": len(failures)},
                                    escape_unstorable(f"{last.ref.document_id}: {last.error}")[:2000],
                                    stage=stage)

    async def _guard(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Bookkeeping that must not fail the job (the documents' own outcome is already known)."""
        try:
            await asyncio.to_thread(fn, *args)
        except Exception:  # noqa: BLE001
            log.exception("could not %s", what)
