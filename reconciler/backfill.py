"""Backfill: load a source's history scope by scope, checkpointing every page in Postgres.

A backfill is a ``runs`` row (kind ``backfill``) whose ``checkpoint`` holds, per scope, the
listing checkpoint after the last page that was enqueued and whether the scope is done; every
listed document id goes to ``run_items``. Killed at any moment (SIGKILL included) and started
again with ``--resume``, it skips finished scopes and continues each unfinished one after its last
enqueued page, so no finished page is fetched again.

When the listing is done it waits for the workers, then reports per scope: listed, indexed,
unchanged, deleted, failed, pending, and reads a sample back from the index.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any


from core import queue, scopes
from core.errors import VectorSyncError
from core.runtime import Services, SourceSet
from core.settings import Settings
from core.sources import Scope
from core.runs import (
    Conflict, check_conflict, create_run, finish_run, load_run, owner_name, progress_run,
    read_back, resumable_run, totals, touch_run, verification,
)

class Backfill:
    """Lists and enqueues one backfill run; ``progress`` is called after every page."""

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
            by_key = {row["key"]: row for row in known}
            missing = [k for k in keys if k not in by_key]
            if missing:
                raise VectorSyncError(f"unknown {source} scope(s): {', '.join(missing)}")
            return [Scope(source, k, by_key[k]["name"]) for k in keys]
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
            for scope in targets:
                entry = scope_state.setdefault(scope.key, {"checkpoint": None, "done": False, "pages": 0, "listed": 0})
                if entry["done"]:
                    continue
                await self._scope(source, scope, params.get("since"), entry, checkpoint, counters)
            counters["scopes_done"] = sum(1 for e in scope_state.values() if e["done"])
        except Exception as exc:
            message = str(exc) if isinstance(exc, VectorSyncError) else f"{type(exc).__name__}: {exc}"
            await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
            await asyncio.to_thread(finish_run, self.pool, self.run_id, counters, message)
            raise
        await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
        return counters

    async def _scope(self, source: str, scope: Scope, since: float | None, entry: dict[str, Any],
                     checkpoint: dict[str, Any], counters: dict[str, Any]) -> None:
        async for page in self.sources.get(source).changes(scope, since, entry["checkpoint"]):
            refs = [r if r.scope else type(r)(r.source, r.id, scope.key, r.op, r.event_at, r.document)
                    for r in page.refs]
            await asyncio.to_thread(self._record_items, scope.key, [r.document_id for r in refs])
            await asyncio.to_thread(queue.enqueue, self.services.broker, refs, bulk=True)
            entry["checkpoint"] = page.checkpoint
            entry["pages"] += 1
            entry["listed"] += len(refs)
            counters["pages"] += 1
            counters["listed"] += len(refs)
            # Saved only after the page is enqueued: a crash re-lists at most this page.
            await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
            self.progress({"scope": scope.key, **counters})
        entry["done"] = True
        entry["checkpoint"] = None
        await asyncio.to_thread(progress_run, self.pool, self.run_id, counters, checkpoint)
        self.progress({"scope": scope.key, "scope_done": True, **counters})

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


# --- the CLI --------------------------------------------------------------------------------


class ProgressView:
    """Progress bars in a terminal; plain lines (at most one every 5 s) otherwise."""

    def __init__(self, source: str, stream: Any = sys.stderr) -> None:
        self.source = source
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_line = 0.0

    def __call__(self, info: dict[str, Any]) -> None:
        elapsed = max(0.001, time.monotonic() - self.started)
        rate = info["listed"] / elapsed
        done, total = info.get("scopes_done", 0), info.get("scopes_total") or 0
        text = (f"{self.source} scope {info['scope']}: {info['listed']} documents listed, "
                f"{info['pages']} pages, {rate:.0f}/s")
        if self.tty:
            width = 24
            fill = int(width * done / total) if total else 0
            bar = "#" * fill + "-" * (width - fill)
            self.stream.write(f"\r[{bar}] {done}/{total} scopes  {text}\x1b[K")
            self.stream.flush()
        elif info.get("scope_done") or time.monotonic() - self._last_line >= 5:
            self._last_line = time.monotonic()
            print(text + (" (scope done)" if info.get("scope_done") else ""), file=self.stream, flush=True)

    def waiting(self, report: dict[str, int], eta: float | None) -> None:
        processed = report.get("listed", 0) - report.get("pending", 0)
        eta_text = f", ETA {eta:.0f}s" if eta is not None else ""
        text = f"indexing: {processed}/{report.get('listed', 0)} processed, {report.get('failed', 0)} failed{eta_text}"
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
        elif time.monotonic() - self._last_line >= 5:
            self._last_line = time.monotonic()
            print(text, file=self.stream, flush=True)

    def end_line(self) -> None:
        if self.tty:
            self.stream.write("\n")


def backfill_command(args: argparse.Namespace) -> int:
    from cli.main import fail, with_services

    def run(services: Services, settings: Settings) -> int:
        if not settings.source(args.source).configured:
            fail(f"{args.source} is not configured: set its credentials (see docs/configuration.md)")
        owner = owner_name()
        try:
            if args.resume:
                run_id = resumable_run(services.pool, args.source)
                if run_id is None:
                    fail(f"no unfinished {args.source} backfill to resume", 1)
                assert run_id is not None
                check_conflict(services.pool, args.source, (load_run(services.pool, run_id) or {})
                               .get("params", {}).get("scopes") or [], exclude=run_id)
            else:
                run_id = create_run(services.pool, args.source, args.scope, args.days, owner=owner)
        except Conflict as exc:
            fail(f"refused: {exc}", 1)
        view = ProgressView(args.source)
        print(f"backfill run {run_id}: {args.source}", file=sys.stderr)
        return asyncio.run(_cli_backfill(services, settings, run_id, owner, view, args))

    return with_services(run)


async def _cli_backfill(services: Services, settings: Settings, run_id: int, owner: str,
                        view: ProgressView, args: argparse.Namespace) -> int:
    sources = SourceSet(settings, services.pool)
    try:
        counters = await Backfill(services, sources, run_id, owner, view).run()
    except VectorSyncError as exc:
        view.end_line()
        print(f"vector-sync: backfill failed: {exc} (run 'vector-sync backfill {args.source} --resume' "
              "to continue)", file=sys.stderr)
        return 1
    finally:
        await sources.aclose()
    view.end_line()
    report = await _wait_for_workers(services, run_id, args.wait, view)
    checked, missing = await asyncio.to_thread(read_back, services, run_id, args.sample)
    summary = totals(report)
    error = None
    if summary.get("failed") or summary.get("pending") or missing:
        error = (f"{summary.get('failed', 0)} failed, {summary.get('pending', 0)} pending, "
                 f"{len(missing)} missing on read-back")
    counters.update(report=report, read_back={"checked": checked, "missing": missing})
    await asyncio.to_thread(finish_run, services.pool, run_id, counters, error)
    print_report(report, checked, missing)
    return 1 if error else 0


async def _wait_for_workers(services: Services, run_id: int, timeout: float, view: ProgressView) -> dict[str, dict[str, int]]:
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    first_pending: int | None = None
    while True:
        report = await asyncio.to_thread(verification, services.pool, run_id)
        summary = totals(report)
        pending = summary.get("pending", 0)
        first_pending = pending if first_pending is None else first_pending
        done = first_pending - pending
        eta = (time.monotonic() - started) / done * pending if done > 0 else None
        view.waiting(summary, eta)
        if pending == 0 or time.monotonic() >= deadline:
            view.end_line()
            return report
        await asyncio.to_thread(touch_run, services.pool, run_id)
        await asyncio.sleep(1.0)


def print_report(report: dict[str, dict[str, int]], checked: int, missing: list[str]) -> None:
    columns = ("listed", "indexed", "unchanged", "deleted", "failed", "pending")
    print(f"{'scope':<32}" + "".join(f"{c:>10}" for c in columns))
    for scope, counts in report.items():
        print(f"{scope:<32}" + "".join(f"{counts[c]:>10}" for c in columns))
    summary = totals(report)
    print(f"{'total':<32}" + "".join(f"{summary.get(c, 0):>10}" for c in columns))
    verdict = "ok" if not missing else f"MISSING: {', '.join(missing[:10])}"
    print(f"read-back: {checked} sampled documents fetched from the index: {verdict}")
