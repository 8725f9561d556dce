"""The drift audit (``vector-sync verify``): does the index still equal the sources' truth?

Per scope it lists the source's live ids (with their ``updated_at`` where the source gives it
cheaply, see ``LISTINGS``) and compares them with the ``documents`` table and with the vector
index itself:

- **missing**: live at the source, not indexed: no live documents row, or a row with
  ``chunk_count`` 0 that is not deferred, or a row whose vectors are absent from the index;
- **stale**: the source's ``updated_at`` is newer than the stored ``source_updated_at`` (beyond
  ``STALE_TOLERANCE``) and no job has looked at the document since that change;
- **ghost**: a live documents row (so vectors) the source no longer has;
- **orphan vectors** (a whole-index check, its own run): vectors whose document has no live
  documents row, or whose chunk number is at least the row's ``chunk_count``.

``repair`` enqueues what fixes each: sync refs for missing and stale documents (a document whose
vectors vanished has its stored content hash forgotten first, so the worker re-embeds it
instead of skipping it as unchanged), delete refs for ghosts (each still confirmed by a fetch in
the worker), and deletes orphan vectors from the index by id.

Every audit is a ``runs`` row of kind ``verify``: ``source`` and ``scope`` = the scope audited,
or ``source = 'index'`` and ``scope`` NULL for the orphan check; ``counters`` hold exactly
``{"missing", "stale", "ghost", "orphan_vectors", "samples": {...}, "repaired": {...}}``. A
failed listing fails its run and reports nothing (never ghosts). After the audits of a call,
each audited source gets a whole-source summary run (``scope`` NULL, ``params.summary``) with
the same counters folded over the newest audit of each of its active scopes, so the newest
verify run of a source always speaks for all of it (status reads a scope-NULL audit as covering
the source, plus any scope audit newer than it). ``latest_audits`` does the fold in a query.
Admin API requests are queued as such summary runs (``status = 'queued'``, ``params.request``),
one per source, plus one for ``index``.

Shared by the CLI, the receiver's admin API and the reconciler (reconciler/verify.py), so it
imports nothing above ``core``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from psycopg_pool import ConnectionPool

from core import queue, runs, state
from core.documents import Ref, doc_id, split_doc_id, vector_id
from core.errors import VectorSyncError
from core.runtime import Services, SourceSet
from core.sources import Scope

log = logging.getLogger("vector_sync.verify")

KIND = "verify"
#: The ``source`` of the whole-index orphan-vector run (its ``scope`` is NULL).
INDEX = "index"
CATEGORIES = ("missing", "stale", "ghost", "orphan_vectors")
#: Sample ids kept per category.
SAMPLES = 10
#: Seconds: a source ``updated_at`` at most this much newer than the stored one is not stale.
#: Both sides parse the same source timestamp the same way (Notion's minute-rounded
#: last_edited_time included), so this only absorbs float noise.
STALE_TOLERANCE = 0.01
#: Vector ids per index delete / fetch request.
INDEX_BATCH = 1000
#: Seconds between finding orphan vectors and deleting them, when repairing: a job writes a
#: document's vectors just before its row, so a vector seen in that moment looks orphaned. The
#: candidates are checked against the documents table again after this wait.
ORPHAN_GRACE = 5.0
#: Seconds between progress touches while a listing runs (so the run is not taken for dead).
TOUCH_EVERY = 2.0


def owner_name() -> str:
    return f"verify@{socket.gethostname()}:{os.getpid()}"


# --- listings: live ids with updated_at, per source -------------------------------------------

Listing = Callable[[Any, Scope], AsyncIterator[tuple[str, float | None]]]


async def _from_live_ids(source: Any, scope: Scope) -> AsyncIterator[tuple[str, float | None]]:
    async for stable in source.live_ids(scope):
        yield stable, None


async def _jira(source: Any, scope: Scope) -> AsyncIterator[tuple[str, float | None]]:
    # live_ids' own search (JQL by project, 5,000 ids a page) with one more field: "updated".
    from core.sources import jira

    token: str | None = None
    while True:
        payload: dict[str, Any] = {"jql": jira.jql_for(scope.key, order=False), "fields": ["id", "updated"],
                                   "maxResults": jira.LIVE_IDS_PAGE}
        if token:
            payload["nextPageToken"] = token
        body = source._json(await source.http.post("/rest/api/3/search/jql", json=payload), "search")
        for issue in body.get("issues") or []:
            updated = (issue.get("fields") or {}).get("updated")
            yield str(issue["id"]), jira.parse_time(updated) if updated else None
        token = body.get("nextPageToken")
        if not token:
            return


async def _slack(source: Any, scope: Scope) -> AsyncIterator[tuple[str, float | None]]:
    # live_ids' own conversations.history pages; a root's edit/newest-reply time comes with it.
    from core.sources import slack

    cursor = None
    while True:
        data = await source._readable_call("conversations.history", scope.key, limit=slack.PAGE_SIZE,
                                           cursor=cursor)
        for message in data.get("messages", []):
            thread_ts = message.get("thread_ts") or message["ts"]
            if thread_ts == message["ts"] and (slack.is_content(message) or message.get("reply_count")):
                yield f"{scope.key}:{message['ts']}", slack.changed_at(message)
        cursor = (data.get("response_metadata") or {}).get("next_cursor")
        if not data.get("has_more") or not cursor:
            return


async def _github(source: Any, scope: Scope) -> AsyncIterator[tuple[str, float | None]]:
    # A full changes() listing asks exactly what live_ids asks (issues state=all, then the
    # default branch's commits) and its refs carry updated_at / the commit date.
    async for page in source.changes(scope, None, None):
        for ref in page.refs:
            yield ref.id, ref.event_at


async def _notion(source: Any, scope: Scope) -> AsyncIterator[tuple[str, float | None]]:
    # live_ids' own search (oldest edit first, trashed pages left out) keeping last_edited_time.
    from core.sources import notion

    cursor: str | None = None
    seen: set[str] = set()
    while True:
        data = await source._search(cursor, "ascending")
        for raw in data.get("results", []):
            pid = str(raw.get("id", ""))
            if raw.get("object") == "page" and not notion.is_trashed(raw) and pid not in seen:
                seen.add(pid)
                yield pid, notion.parse_time(raw.get("last_edited_time"))
        cursor = data.get("next_cursor") if data.get("has_more") else None
        if not cursor:
            return


async def _tempo(source: Any, scope: Scope) -> AsyncIterator[tuple[str, float | None]]:
    # live_ids' own window (startDate in the last LIVE_DAYS, active projects) with updatedAt.
    from core.sources import tempo

    start = tempo.BACKFILL_FROM if source.live_days is None else tempo._today() - tempo.timedelta(
        days=source.live_days)
    url: str | None = source._list_url({"from": start.isoformat(), "to": tempo._far_future()})
    while url:
        body = await source._get_json(url)
        for doc in await source._documents(body.get("results") or []):
            yield doc.id, doc.updated_at or None
        url = (body.get("metadata") or {}).get("next")


#: Per source: how verify lists live ids with updated_at, the connector attributes that listing
#: relies on (when one is missing, verify falls back to ``live_ids`` and compares ids only), and
#: what it compares. A connector that grows ``live_versions(scope)`` (yielding ``(id,
#: updated_at)``) is used as is. Fireflies lists meeting dates only: no edit time, ids only.
LISTINGS: dict[str, tuple[Listing, tuple[str, ...]]] = {
    "jira": (_jira, ("http", "_json")),
    "slack": (_slack, ("_readable_call",)),
    "github": (_github, ("changes",)),
    "notion": (_notion, ("_search",)),
    "tempo": (_tempo, ("_list_url", "_get_json", "_documents", "live_days")),
}


def listing_for(name: str, source: Any) -> tuple[Listing, str]:
    """(listing, what it compares: ``"ids+updated_at"`` or ``"ids"``) for a connector."""
    if hasattr(source, "live_versions"):
        return (lambda src, scope: src.live_versions(scope)), "ids+updated_at"
    entry = LISTINGS.get(name)
    if entry is not None and all(hasattr(source, attr) for attr in entry[1]):
        return entry[0], "ids+updated_at"
    return _from_live_ids, "ids"


# --- reports ----------------------------------------------------------------------------------


@dataclass
class Report:
    """What one audit (one run) found."""

    source: str
    scope: str | None
    run_id: int | None = None
    status: str = "succeeded"  # succeeded | failed | skipped
    error: str | None = None
    compares: str = ""
    live: int = 0
    found: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in CATEGORIES})
    repaired: dict[str, int] = field(default_factory=dict)

    @property
    def drift(self) -> int:
        return sum(len(v) for v in self.found.values())

    def counters(self) -> dict[str, Any]:
        """Exactly the shape status reads (see the module docstring)."""
        return {
            **{c: len(self.found[c]) for c in CATEGORIES},
            "samples": {c: sorted(self.found[c])[:SAMPLES] for c in CATEGORIES},
            "repaired": dict(self.repaired),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "scope": self.scope, "run_id": self.run_id, "status": self.status,
                "error": self.error, "compares": self.compares, "live": self.live, "drift": self.drift,
                **self.counters()}


def summary(reports: list[Report]) -> dict[str, Any]:
    """The answer of the CLI's --json and the admin API: totals plus every report."""
    totals = {c: sum(len(r.found[c]) for r in reports) for c in CATEGORIES}
    return {
        "drift": sum(totals.values()),
        **totals,
        "failed": sum(1 for r in reports if r.status == "failed"),
        "skipped": sum(1 for r in reports if r.status == "skipped"),
        "reports": [r.to_dict() for r in reports],
    }


def merged_counters(reports: list[Report]) -> dict[str, Any]:
    """One counters object (the status shape) summing several reports."""
    out: dict[str, Any] = {c: 0 for c in CATEGORIES}
    samples: dict[str, list[str]] = {c: [] for c in CATEGORIES}
    repaired: dict[str, int] = {}
    for report in reports:
        for c in CATEGORIES:
            out[c] += len(report.found[c])
            samples[c].extend(report.found[c])
        for key, value in report.repaired.items():
            repaired[key] = repaired.get(key, 0) + value
    out["samples"] = {c: sorted(v)[:SAMPLES] for c, v in samples.items()}
    out["repaired"] = repaired
    return out


def empty_counters() -> dict[str, Any]:
    return Report("", None).counters()


# --- claiming ---------------------------------------------------------------------------------


class Busy(Exception):
    """The scope is being audited by someone else, or a backfill is listing it."""


class ListingFailed(Exception):
    """The source's listing failed: nothing can be compared."""


def _busy_reason(conn: Any, source: str, scope: str | None) -> str | None:
    rows = conn.execute(
        """SELECT id, owner, extract(epoch FROM now() - progress_at) FROM runs
           WHERE kind = 'verify' AND status = 'running' AND source = %s AND scope IS NOT DISTINCT FROM %s::text""",
        (source, scope),
    ).fetchall()
    for run_id, owner, age in rows:
        if runs.owner_alive(owner, float(age)):
            return f"verify run {run_id} is already auditing it ({owner})"
    if source != INDEX and scope is not None:
        backfills = conn.execute(
            """SELECT id, status, owner, params, extract(epoch FROM now() - progress_at) FROM runs
               WHERE kind = 'backfill' AND source = %s AND status IN ('queued', 'running')""",
            (source,),
        ).fetchall()
        for run_id, status, owner, params, age in backfills:
            if status == "running" and not runs.owner_alive(owner, float(age)):
                continue
            theirs = set((params or {}).get("scopes") or [])
            if not theirs or scope in theirs:
                return f"backfill run {run_id} of {source} is {status} for this scope"
    return None


def claim(pool: ConnectionPool, owner: str, source: str, scope: str | None,
          params: Mapping[str, Any] | None = None) -> int:
    """Start a verify run for (source, scope) unless it is busy (raises Busy)."""
    with pool.connection() as conn, conn.transaction():
        # One claimer at a time (any process), so two never both see the scope free.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('vector-sync:verify'))")
        reason = _busy_reason(conn, source, scope)
        if reason:
            raise Busy(reason)
        row = conn.execute(
            """INSERT INTO runs (kind, source, scope, status, owner, params, counters)
               VALUES ('verify', %s, %s, 'running', %s, %s::jsonb, %s::jsonb) RETURNING id""",
            (source, scope, owner, _json(dict(params or {})), _json(empty_counters())),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


# --- the audit --------------------------------------------------------------------------------


@dataclass
class _Row:
    document_id: str
    scope: str
    chunk_count: int
    deleted: bool
    deferred: bool
    source_updated_at: float | None
    checked_at: float | None
    indexed_at: datetime | None


def _rows(pool: ConnectionPool, where: str, params: tuple[Any, ...]) -> dict[str, _Row]:
    with pool.connection() as conn:
        found = conn.execute(
            f"""SELECT document_id, scope, chunk_count, deleted_at IS NOT NULL, deferred_at IS NOT NULL,
                       source_updated_at, extract(epoch FROM checked_at), indexed_at
                FROM documents WHERE {where}""",  # type: ignore[arg-type]
            params,
        ).fetchall()
    return {r[0]: _Row(r[0], r[1], int(r[2]), bool(r[3]), bool(r[4]), r[5],
                       float(r[6]) if r[6] is not None else None, r[7]) for r in found}


class Auditor:
    """Runs audits for one caller (CLI, admin API or reconciler) and records them as runs."""

    def __init__(self, services: Services, sources: SourceSet, owner: str, *, repair: bool = False,
                 stop: Any = None) -> None:
        self.services = services
        self.pool = services.pool
        self.sources = sources
        self.owner = owner
        self.repair = repair
        self.stop = stop  # a threading.Event: set means stop between scopes
        self._index_ids: set[str] | None = None  # the index's ids, listed once per Auditor

    # --- what to audit ----------------------------------------------------------------------

    def targets(self, source: str | None = None, scope: str | None = None) -> list[tuple[str, Scope | None]]:
        """(source, Scope) pairs to audit, and (INDEX, None) for the orphan check when the
        audit covers everything. Raises VectorSyncError for an unknown scope."""
        from core import scopes as scope_rows

        names = [source] if source else self.sources.configured()
        out: list[tuple[str, Scope | None]] = []
        for name in names:
            rows = scope_rows.list_scopes(self.pool, name)
            if scope is not None:
                match = [r for r in rows if r["key"] == scope]
                if not match:
                    raise VectorSyncError(f"unknown {name} scope {scope!r} (see 'vector-sync scopes list')")
                out.append((name, Scope(name, scope, match[0]["name"])))
            else:
                out += [(name, Scope(name, r["key"], r["name"])) for r in rows if r["active"]]
        if source is None and scope is None:
            out.append((INDEX, None))
        return out

    async def run_all(self, targets: list[tuple[str, Scope | None]], *, summarize: bool = True) -> list[Report]:
        """Audit each target in turn (until ``stop``), then write each audited source's summary
        run (unless ``summarize`` is False: the caller writes them)."""
        reports = []
        for name, scope in targets:
            if self.stop is not None and self.stop.is_set():
                break
            reports.append(await self.run_one(name, scope))
        audited = sorted({r.source for r in reports if r.run_id is not None})
        if summarize and audited:
            await asyncio.to_thread(write_summaries, self.pool, self.owner, audited)
        return reports

    async def run_one(self, name: str, scope: Scope | None) -> Report:
        key = scope.key if scope else None
        try:
            run_id = await asyncio.to_thread(claim, self.pool, self.owner, name, key, {"repair": self.repair})
        except Busy as exc:
            return Report(name, key, status="skipped", error=str(exc))
        return await self.execute(run_id, name, scope)

    async def execute(self, run_id: int, name: str, scope: Scope | None) -> Report:
        """Audit an already claimed run and finish it."""
        report = Report(name, scope.key if scope else None, run_id=run_id)
        try:
            if scope is None:
                await self._orphans(report)
            else:
                await self._scope(report, scope)
        except asyncio.CancelledError:
            with self.pool.connection() as conn:
                conn.execute("UPDATE runs SET status = 'abandoned', finished_at = now(), "
                             "error = 'stopped before it finished' WHERE id = %s", (run_id,))
            raise
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, ListingFailed) and exc.__cause__ else exc
            message = str(cause) if isinstance(cause, VectorSyncError) else f"{type(cause).__name__}: {cause}"
            if self.stop is not None and self.stop.is_set():
                await asyncio.to_thread(self.abandon, run_id)
                report.status, report.error = "failed", f"stopped: {message}"
                return report
            log.warning("verify failed", extra={"source": name, "scope": report.scope, "error": message})
            if isinstance(exc, ListingFailed):  # a failed listing reports nothing: no ghosts, no missing
                report = Report(name, report.scope, run_id=run_id, compares=report.compares,
                                error=f"listing failed, nothing compared: {message}")
            else:  # what was compared stands; what failed after (the index, the queue) is said
                report.error = f"audit failed: {message}"
            report.status = "failed"
            await asyncio.to_thread(runs.finish_run, self.pool, run_id, report.counters(), report.error)
            return report
        await asyncio.to_thread(self._params, run_id, {"repair": self.repair, "compares": report.compares,
                                                       "live": report.live})
        await asyncio.to_thread(runs.finish_run, self.pool, run_id, report.counters())
        log.info("verified", extra={"source": name, "scope": report.scope, "drift": report.drift})
        return report

    def abandon(self, run_id: int) -> None:
        with self.pool.connection() as conn:
            conn.execute("UPDATE runs SET status = 'abandoned', finished_at = now(), "
                         "error = 'stopped before it finished' WHERE id = %s", (run_id,))

    def _params(self, run_id: int, params: Mapping[str, Any]) -> None:
        with self.pool.connection() as conn:
            conn.execute("UPDATE runs SET params = params || %s::jsonb WHERE id = %s", (_json(dict(params)), run_id))

    # --- one scope ----------------------------------------------------------------------------

    async def _scope(self, report: Report, scope: Scope) -> None:
        source = self.sources.get(report.source)
        listing, report.compares = listing_for(report.source, source)
        started = datetime.now(timezone.utc)
        live: dict[str, float | None] = {}
        last_touch = time.monotonic()
        try:
            async for stable, updated in listing(source, scope):
                live[doc_id(report.source, stable)] = updated
                if time.monotonic() - last_touch >= TOUCH_EVERY:
                    last_touch = time.monotonic()
                    await asyncio.to_thread(runs.touch_run, self.pool, report.run_id)
        except Exception as exc:
            raise ListingFailed(str(exc)) from exc
        report.live = len(live)
        rows = await asyncio.to_thread(_rows, self.pool, "document_id = ANY(%s)", (list(live),))
        missing, indexed, stale = [], [], []
        for document_id, updated in live.items():
            row = rows.get(document_id)
            if row is None or row.deleted or (row.chunk_count == 0 and not row.deferred):
                missing.append(document_id)
            elif row.chunk_count > 0:
                indexed.append(document_id)  # its vectors are checked against the index below
                if _stale(updated, row):
                    stale.append(document_id)
        vanished = await asyncio.to_thread(self._vectors_absent, [rows[d] for d in indexed])
        missing += vanished
        gone = set(vanished)
        stale = [d for d in stale if d not in gone]
        held = await asyncio.to_thread(
            _rows, self.pool, "source = %s AND scope = %s AND deleted_at IS NULL AND chunk_count > 0",
            (report.source, scope.key))
        # Indexed while the listing ran: the listing may simply not have seen it yet.
        ghosts = [d for d, row in held.items() if d not in live and (row.indexed_at is None or row.indexed_at < started)]
        report.found.update(missing=sorted(missing), stale=sorted(stale), ghost=sorted(ghosts))
        if self.repair:
            await asyncio.to_thread(self._repair_scope, report, scope.key, gone)

    def _vectors_absent(self, rows: list[_Row]) -> list[str]:
        """Document ids with a chunk below chunk_count that is not in the index.

        Compared against one id-only listing of the whole index per Auditor (cheaper than
        fetching every vector, whose values and metadata come back with it); what that listing
        lacks is fetched once more, so a document indexed since the listing is not reported."""
        if self._index_ids is None:
            self._index_ids = set(self.services.index.list_ids(""))
        wanted = [(row.document_id, vector_id(row.document_id, n)) for row in rows for n in range(row.chunk_count)]
        unlisted = [(d, vid) for d, vid in wanted if vid not in self._index_ids]
        absent: set[str] = set()
        for start in range(0, len(unlisted), INDEX_BATCH):
            batch = unlisted[start:start + INDEX_BATCH]
            present = set(self.services.index.fetch([vid for _, vid in batch]))
            absent.update(d for d, vid in batch if vid not in present)
        return sorted(absent)

    def _repair_scope(self, report: Report, scope: str, vanished: set[str]) -> None:
        if vanished:
            # Their stored content hash says "indexed"; forget it so the worker re-embeds
            # instead of skipping them as unchanged.
            with self.pool.connection() as conn:
                conn.execute("UPDATE documents SET content_hash = NULL WHERE document_id = ANY(%s)",
                             (sorted(vanished),))
        syncs = [_ref(d, scope, "sync") for d in report.found["missing"] + report.found["stale"]]
        deletes = [_ref(d, scope, "delete") for d in report.found["ghost"]]
        refs = syncs + deletes
        if refs:
            queue.enqueue(self.services.broker, refs, bulk=len(refs) > queue.MAX_REFS_PER_MESSAGE)
        report.repaired = {"missing": len(report.found["missing"]), "stale": len(report.found["stale"]),
                           "ghost": len(deletes)}

    # --- the whole index ----------------------------------------------------------------------

    async def _orphans(self, report: Report) -> None:
        report.compares = "index ids against documents"
        ids = await asyncio.to_thread(self.services.index.list_ids, "")
        report.live = len(ids)
        candidates = await asyncio.to_thread(self._orphan_ids, ids)
        if candidates:
            # Read the rows again (after a grace period when they are to be deleted): a job may
            # have recorded its document since (its vectors are written just before its row).
            if self.repair:
                await asyncio.to_thread(runs.touch_run, self.pool, report.run_id)
                await self._grace()
            candidates = await asyncio.to_thread(self._orphan_ids, candidates)
        report.found["orphan_vectors"] = sorted(candidates)
        if self.repair and candidates:
            await asyncio.to_thread(self._delete_vectors, candidates)
            report.repaired = {"orphan_vectors": len(candidates)}
        elif self.repair:
            report.repaired = {"orphan_vectors": 0}

    async def _grace(self) -> None:
        await asyncio.sleep(ORPHAN_GRACE)

    def _orphan_ids(self, ids: Iterable[str]) -> list[str]:
        by_doc: dict[str, list[tuple[str, int | None]]] = {}
        for vid in ids:
            document_id, _, chunk = vid.rpartition("#")
            number = int(chunk) if chunk.isdigit() and document_id else None
            by_doc.setdefault(document_id or vid, []).append((vid, number))
        rows = _rows(self.pool, "document_id = ANY(%s) AND deleted_at IS NULL", (list(by_doc),))
        orphans = []
        for document_id, chunks in by_doc.items():
            row = rows.get(document_id)
            for vid, number in chunks:
                if row is None or number is None or number >= row.chunk_count:
                    orphans.append(vid)
        return orphans

    def _delete_vectors(self, ids: list[str]) -> None:
        for start in range(0, len(ids), INDEX_BATCH):
            self.services.index.delete(ids[start:start + INDEX_BATCH])


def _stale(updated: float | None, row: _Row) -> bool:
    """Newer at the source than stored, and no job has looked at it since that change (a job
    that found nothing to change does not rewrite source_updated_at, only checked_at)."""
    if updated is None or row.source_updated_at is None:
        return False
    if updated <= row.source_updated_at + STALE_TOLERANCE:
        return False
    return row.checked_at is None or row.checked_at < updated


def _ref(document_id: str, scope: str, op: str) -> Ref:
    source, stable = split_doc_id(document_id)
    return Ref(source=source, id=stable, scope=scope, op=op)  # type: ignore[arg-type]


# --- queued requests (admin API) and results for status -------------------------------------


def queue_requests(pool: ConnectionPool, sources: list[str], repair: bool) -> dict[str, int]:
    """Queued verify runs the reconciler executes (``reconciler/verify.py``), one per source
    (its summary-to-be: every active scope is audited, then the run holds the fold) and one for
    ``index`` (the orphan check itself); returns their ids by source."""
    out: dict[str, int] = {}
    with pool.connection() as conn:
        for source in sources:
            row = conn.execute(
                """INSERT INTO runs (kind, source, scope, status, params, counters)
                   VALUES ('verify', %s, NULL, 'queued', %s::jsonb, %s::jsonb) RETURNING id""",
                (source, _json({"request": True, "repair": repair}), _json(empty_counters())),
            ).fetchone()
            assert row is not None
            out[source] = int(row[0])
    return out


def write_summaries(pool: ConnectionPool, owner: str, sources: list[str],
                    into: Mapping[str, int] | None = None) -> list[int]:
    """Per source, a finished whole-source run (``scope`` NULL, ``params.summary``) whose
    counters fold the newest finished audit of every active scope of the source, so the newest
    verify run of a source always speaks for all of it. Failed (with the errors) if any of those
    failed. ``into`` names runs (by source) to finish as the summary instead of adding one."""
    made = []
    for source in sources:
        if source == INDEX:
            continue  # its one audit is already whole
        with state.dict_cursor(pool) as cur:
            cur.execute(
                """SELECT DISTINCT ON (r.scope) r.id, r.scope, r.status, r.counters, r.error
                   FROM runs r JOIN scopes s ON s.source = r.source AND s.key = r.scope
                   WHERE r.kind = 'verify' AND r.source = %s AND r.status IN ('succeeded', 'failed')
                     AND s.active
                   ORDER BY r.scope, r.id DESC""",
                (source,),
            )
            rows = cur.fetchall()
        counters: dict[str, Any] = {c: 0 for c in CATEGORIES}
        samples: dict[str, list[str]] = {c: [] for c in CATEGORIES}
        repaired: dict[str, int] = {}
        for row in rows:
            got = row["counters"] or {}
            for c in CATEGORIES:
                counters[c] += int(got.get(c) or 0)
                samples[c] += list((got.get("samples") or {}).get(c) or [])
            for key, value in (got.get("repaired") or {}).items():
                repaired[key] = repaired.get(key, 0) + int(value or 0)
        counters["samples"] = {c: sorted(v)[:SAMPLES] for c, v in samples.items()}
        counters["repaired"] = repaired
        failed = [r for r in rows if r["status"] == "failed"]
        error = ("; ".join(f"{r['scope']}: {r['error']}" for r in failed)[:2000]) if failed else None
        params = {"summary": True, "runs": [r["id"] for r in rows]}
        with pool.connection() as conn:
            if into and source in into:
                conn.execute(
                    """UPDATE runs SET status = %s, counters = %s::jsonb, error = %s, finished_at = now(),
                           progress_at = now(), params = params || %s::jsonb WHERE id = %s""",
                    ("failed" if failed else "succeeded", _json(counters), error, _json(params), into[source]),
                )
                made.append(into[source])
                continue
            row = conn.execute(
                """INSERT INTO runs (kind, source, scope, status, owner, params, counters, error, finished_at)
                   VALUES ('verify', %s, NULL, %s, %s, %s::jsonb, %s::jsonb, %s, now()) RETURNING id""",
                (source, "failed" if failed else "succeeded", owner, _json(params), _json(counters), error),
            ).fetchone()
        assert row is not None
        made.append(int(row[0]))
    return made


def latest_audits(pool: ConnectionPool) -> dict[str, dict[str, Any]]:
    """Per source (and ``index``): the newest finished audit of each of its scopes (of the whole
    index for ``index``) folded into ``{"drift", "missing", ..., "failed", "finished_at",
    "runs"}``; summaries and abandoned runs are left out; a scope whose newest audit failed
    counts in ``failed``."""
    with state.dict_cursor(pool) as cur:
        cur.execute(
            """SELECT DISTINCT ON (source, scope) id, source, scope, status, counters, finished_at
               FROM runs WHERE kind = 'verify' AND status IN ('succeeded', 'failed')
                 AND (scope IS NOT NULL OR source = %s)
               ORDER BY source, scope, id DESC""",
            (INDEX,),
        )
        rows = cur.fetchall()
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = out.setdefault(row["source"], {**{c: 0 for c in CATEGORIES}, "drift": 0, "failed": 0,
                                               "finished_at": None, "runs": []})
        counters = row["counters"] or {}
        for c in CATEGORIES:
            entry[c] += int(counters.get(c) or 0)
        entry["drift"] = sum(entry[c] for c in CATEGORIES)
        entry["failed"] += row["status"] == "failed"
        entry["runs"].append(row["id"])
        if row["finished_at"] and (entry["finished_at"] is None or row["finished_at"] > entry["finished_at"]):
            entry["finished_at"] = row["finished_at"]
    return out
