"""Backfill: load a source's history scope by scope, checkpointing every page in Postgres.

A backfill is a ``runs`` row (kind ``backfill``) whose ``checkpoint`` holds, per scope, the
listing checkpoint after the last page that was enqueued and whether the scope is done; every
listed document id goes to ``run_items``. Killed at any moment (SIGKILL included) and started
again with ``--resume``, it skips finished scopes and continues each unfinished one after its last
enqueued page, so no finished page is fetched again.

A source that can list several scopes in one listing (``changes_many``: Jira, one JQL over up
to 100 projects) is listed that way: its search and fetch pages are full across scope boundaries
(72 projects of ~105 issues: 80 requests instead of 216). Such a batch keeps its own checkpoint
(``checkpoint["batch"]``) and its scopes are done together when it ends.

While a backfill lists a scope, reconcile passes leave that scope alone (``core.scopes``
``BACKFILL_LISTING``); when the backfill has listed it, the scope's cursor moves to the newest
``updated_at`` the backfill saw, so the next pass continues from there instead of listing it all
again.

When the listing is done it waits for the workers, then reports per scope: listed, indexed,
unchanged, deleted, failed, pending, and reads a sample back from the index.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any


from core import queue, scopes
from core.errors import PermanentSourceError, VectorSyncError
from core.runtime import Services, SourceSet
from core.settings import Settings
from core.sources import Scope
from core.documents import Ref
from core.runs import (  # noqa: F401  (re-exported: benchmarks/backfill.py imports them from here)
    create_run, finish_run, load_run, owner_name, progress_run, read_back, totals, verification,
)

log = logging.getLogger("vector_sync.backfill")


class Backfill:
    """Lists and enqueues one backfill run. ``progress`` is called once with the target scopes
    (``scope`` None, ``targets``), after every page, and when a scope is done (``scope_done``),
    with the run's counters and the scope's own (``scope_listed``, ``scope_pages``)."""

    def __init__(self, services: Services, sources: SourceSet, run_id: int, owner: str,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.services = services
        self.pool = services.pool
        self.sources = sources
        self.run_id = run_id
        self.owner = owner
        self.progress = progress or (lambda _: None)

    async def scope_list(self, source: str, keys: list[str]) -> list[Scope]:
        known = await asyncio.to_thread(scopes.list_scopes, self.pool, source)
        if not known:
            found = await self.sources.get(source).scopes()
            await asyncio.to_thread(scopes.upsert_discovered, self.pool, self.services.settings.source(source), found)
            known = await asyncio.to_thread(scopes.list_scopes, self.pool, source)
        if keys:
            found, missing = scopes.resolve_keys(known, keys)
            if missing:
                raise VectorSyncError(f"unknown {source} scope(s): {', '.join(missing)}")
            by_key = {row["key"]: row for row in known}
            return [Scope(source, k, by_key[k]["name"]) for k in found]
        return [Scope(source, row["key"], row["name"]) for row in known if row["active"]]

    async def run(self) -> dict[str, Any]:
        run = await asyncio.to_thread(load_run, self.pool, self.run_id)
        assert run is not None
        source, params = run["source"], run["params"]
        with self.pool.connection() as conn:
            conn.execute("UPDATE runs SET status = 'running', owner = %s, error = NULL, finished_at = NULL, "
                         "progress_at = now() WHERE id = %s", (self.owner, self.run_id))
        checkpoint: dict[str, Any] = run["checkpoint"] or {}
        scope_state: dict[str, Any] = checkpoint.setdefault("scopes", {})
        counters: dict[str, Any] = dict(run["counters"] or {})
        counters.setdefault("pages", 0)
        counters.setdefault("listed", 0)
        try:
            targets = await self.scope_list(source, params.get("scopes") or [])
            counters["scopes_total"] = len(targets)
            counters["scopes_done"] = sum(1 for t in targets if scope_state.get(t.key, {}).get("done"))
            self.progress({"scope": None, "targets": [t.key for t in targets],
                           "names": {t.key: t.name for t in targets},
                           "done_before": [t.key for t in targets if scope_state.get(t.key, {}).get("done")],
                           **counters})
            # Reconcile passes read the targets from here to leave them alone while they are listed.
            checkpoint["targets"] = [t.key for t in targets]
            await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
            for scope in targets:
                scope_state.setdefault(scope.key, {"checkpoint": None, "done": False, "pages": 0, "listed": 0})
            connector = self.sources.get(source)
            if hasattr(connector, "changes_many"):
                await self._batches(source, targets, params.get("since"), checkpoint, counters)
            for scope in targets:
                entry = scope_state[scope.key]
                if entry["done"]:
                    continue
                await self._scope(source, scope, params.get("since"), entry, checkpoint, counters)
        except Exception as exc:
            message = str(exc) if isinstance(exc, VectorSyncError) else f"{type(exc).__name__}: {exc}"
            await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
            await asyncio.to_thread(finish_run, self.pool, self.run_id, counters, message)
            raise
        finally:
            await self._bulk(None)
        await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
        return counters

    async def _batches(self, source: str, targets: list[Scope], since: float | None,
                       checkpoint: dict[str, Any], counters: dict[str, Any]) -> None:
        """List the unfinished targets with ``changes_many``, up to its limit of scopes at a
        time; a batch left part-way by an earlier run is finished first, from its checkpoint."""
        connector = self.sources.get(source)
        limit = int(getattr(connector, "MANY_SCOPES", 100))
        by_key = {t.key: t for t in targets}
        scope_state = checkpoint["scopes"]
        while True:
            batch = checkpoint.get("batch")
            if not batch:
                pending = [t.key for t in targets if not scope_state[t.key]["done"]]
                if not pending:
                    return
                batch = checkpoint["batch"] = {"keys": pending[:limit], "checkpoint": None, "high": {}}
            keys = [k for k in batch["keys"] if k in by_key and not scope_state[k]["done"]]
            try:
                if keys:
                    await self._batch(connector, [by_key[k] for k in keys], since, batch, checkpoint, counters)
            except PermanentSourceError as exc:
                if exc.status != 400:
                    raise
                # A query over many scopes is refused as a whole when one of them went away
                # (Jira: "The value 'X' does not exist for the field 'project'"): list these
                # one by one instead, so only that one fails, as it would have alone.
                log.warning("listing %d %s scopes at once was refused (%s); listing them one by one",
                            len(keys), source, exc.detail[:200])
                checkpoint["batch"] = None
                return
            checkpoint["batch"] = None
            await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)

    async def _batch(self, connector: Any, batch_scopes: list[Scope], since: float | None,
                     batch: dict[str, Any], checkpoint: dict[str, Any], counters: dict[str, Any]) -> None:
        scope_state = checkpoint["scopes"]
        keys = [s.key for s in batch_scopes]
        high: dict[str, float] = batch.setdefault("high", {})
        async for page in connector.changes_many(batch_scopes, since, batch["checkpoint"]):
            refs = [r if r.scope else Ref(r.source, r.id, keys[0], r.op, r.event_at, r.document)
                    for r in page.refs]
            by_scope: dict[str, list[Ref]] = {}
            for ref in refs:
                by_scope.setdefault(ref.scope, []).append(ref)
            for key, mine in by_scope.items():
                await asyncio.to_thread(self._record_items, key, [r.document_id for r in mine])
            await asyncio.to_thread(queue.enqueue, self.services.broker, refs, bulk=True)
            for key, mine in by_scope.items():
                stamps = [r.document.updated_at for r in mine if r.document is not None]
                if stamps:
                    high[key] = max(high.get(key, stamps[0]), *stamps)
                entry = scope_state.get(key)
                if entry is not None:
                    entry["pages"] += 1
                    entry["listed"] += len(mine)
            batch["checkpoint"] = page.checkpoint
            counters["pages"] += 1
            counters["listed"] += len(refs)
            # Saved only after the page is enqueued: a crash re-lists at most this page.
            await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
            await self._bulk(counters["listed"])
            for key in by_scope:
                entry = scope_state.get(key)
                if entry is not None:
                    self.progress({"scope": key, "scope_listed": entry["listed"], "scope_pages": entry["pages"],
                                   **counters})
        # Cursors first: once the scopes are saved as done, reconcile passes may claim them, and
        # one claimed before its cursor moved would list it all again.
        source = batch_scopes[0].source
        await asyncio.to_thread(scopes.adopt_backfill_cursors, self.pool, source, {k: high.get(k) for k in keys},
                                since, self.services.settings.source(source).poll_interval)
        done_before = counters.get("scopes_done", 0)
        for key in keys:
            entry = scope_state[key]
            entry["done"] = True
            entry["checkpoint"] = None
        counters["scopes_done"] = done_before + len(keys)
        checkpoint["batch"] = None  # saved with the done scopes: a resume never lists them again
        await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
        for n, key in enumerate(keys, 1):
            entry = scope_state[key]
            self.progress({"scope": key, "scope_done": True, "scope_listed": entry["listed"],
                           "scope_pages": entry["pages"], **counters, "scopes_done": done_before + n})

    async def _scope(self, source: str, scope: Scope, since: float | None, entry: dict[str, Any],
                     checkpoint: dict[str, Any], counters: dict[str, Any]) -> None:
        high: float | None = entry.get("high")
        async for page in self.sources.get(source).changes(scope, since, entry["checkpoint"]):
            refs = [r if r.scope else type(r)(r.source, r.id, scope.key, r.op, r.event_at, r.document)
                    for r in page.refs]
            await asyncio.to_thread(self._record_items, scope.key, [r.document_id for r in refs])
            await asyncio.to_thread(queue.enqueue, self.services.broker, refs, bulk=True)
            if page.high_water is not None:
                high = entry["high"] = page.high_water if high is None else max(high, page.high_water)
            entry["checkpoint"] = page.checkpoint
            entry["pages"] += 1
            entry["listed"] += len(refs)
            counters["pages"] += 1
            counters["listed"] += len(refs)
            # Saved only after the page is enqueued: a crash re-lists at most this page.
            await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
            await self._bulk(counters["listed"])
            self.progress({"scope": scope.key, "scope_listed": entry["listed"], "scope_pages": entry["pages"],
                           **counters})
        # The cursor moves before the scope is saved as done (reconcile passes may claim it then).
        await asyncio.to_thread(scopes.adopt_backfill_cursors, self.pool, source, {scope.key: high}, since,
                                self.services.settings.source(source).poll_interval)
        entry["done"] = True
        entry["checkpoint"] = None
        # Counted as each scope finishes, so progress says "2/5 scopes" while it runs (it was
        # only counted after the loop, and the view showed 0/N for the whole backfill).
        counters["scopes_done"] = counters.get("scopes_done", 0) + 1
        await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
        self.progress({"scope": scope.key, "scope_done": True, "scope_listed": entry["listed"],
                       "scope_pages": entry["pages"], **counters})

    async def _bulk(self, listed: int | None) -> None:
        """Tell the index how large this load is so far (``None``: the listing is over), so a
        load into an empty or much smaller index defers its HNSW graph (core/index/pgvector.py).
        Never fails the backfill: at worst the index is maintained row by row."""
        index = self.services.index
        call = getattr(index, "bulk_finished" if listed is None else "bulk_progress", None)
        if call is None:
            return
        owner = f"backfill:{self.run_id}"
        try:
            await asyncio.to_thread(call, owner) if listed is None else await asyncio.to_thread(call, owner, listed)
        except Exception:  # noqa: BLE001
            log.warning("could not tell the index about the bulk load", exc_info=True)

    def _record_items(self, scope: str, document_ids: list[str]) -> None:
        if not document_ids:
            return
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO run_items (run_id, document_id, scope) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [(self.run_id, d, scope) for d in document_ids],
            )


# --- the admin API's backfills, run by the reconciler ---------------------------------------


async def run_queued_backfills(settings: Settings, services: Services, sources: SourceSet, owner: str,
                               tasks: set[asyncio.Task[None]]) -> None:
    """Claim queued backfill runs (the admin API's) and run them as background tasks."""
    def claim() -> list[int]:
        with services.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                """SELECT id FROM runs WHERE kind = 'backfill' AND status = 'queued'
                   ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 4"""
            ).fetchall()
            for (run_id,) in rows:
                conn.execute("UPDATE runs SET status = 'running', owner = %s, progress_at = now() WHERE id = %s",
                             (owner, run_id))
        return [r[0] for r in rows]

    for run_id in await asyncio.to_thread(claim):
        async def go(run_id: int = run_id) -> None:
            try:
                counters = await Backfill(services, sources, run_id, owner).run()
                await asyncio.to_thread(finish_run, services.pool, run_id, counters)
            except Exception:
                pass  # recorded on the run by Backfill.run

        task = asyncio.create_task(go())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
