"""``vector-sync backfill``: run a backfill in this process and watch it (the listing is
reconciler.backfill's ``Backfill``; this module is its terminal front end)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from cli.services import with_services
from core.errors import VectorSyncError
from core.process import fail
from core.runs import (
    Conflict, check_conflict, create_run, finish_run, load_run, owner_name, read_back, resumable_run,
    totals, touch_run, verification,
)
from core.runtime import Services, SourceSet
from core.settings import Settings
from reconciler.backfill import Backfill


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
