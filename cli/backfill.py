"""``vector-sync backfill``: run a backfill in this process and watch it (the listing is
reconciler.backfill's ``Backfill``; this module is its terminal front end), or, with ``--url``,
queue one on a deployment and follow its run.

In a terminal the view is a live table: one row per scope (documents listed, pages, rate,
state) and a total (scopes done, documents, rate, ETA), saying "waiting for the rate budget"
while the source's shared request budget holds the listing back. Without a terminal it prints
plain lines, at most one every 5 s (and one per finished scope).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from cli.remote import Remote
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

#: Seconds between plain progress lines (a finished scope always gets its line).
PLAIN_EVERY_S = 5.0
#: Seconds between redraws of the live view.
REDRAW_S = 0.25


@dataclass(frozen=True)
class BackfillArgs:
    source: str
    scopes: list[str]
    days: int | None
    resume: bool
    sample: int
    wait: float


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class ScopeProgress:
    key: str
    name: str = ""
    listed: int = 0
    pages: int = 0
    started: float | None = None
    finished: float | None = None
    done_before: bool = False

    def rate(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return self.listed / max(0.001, (self.finished or now) - self.started)

    def state(self, waiting: float) -> str:
        if self.done_before:
            return "done (earlier run)"
        if self.finished is not None:
            return "done"
        if self.started is None:
            return "queued"
        return f"waiting for the rate budget ({duration(waiting)})" if waiting > 0 else "listing"


@dataclass
class BackfillView:
    """The live view (``tty``) or plain lines of one backfill; fed by ``Backfill``'s progress
    callback (``__call__``), ``tick()`` from a timer, and ``waiting()`` while workers index."""

    source: str
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    tty: bool | None = None
    budget_wait: Callable[[], float] = lambda: 0.0
    clock: Callable[[], float] = time.monotonic
    #: False when following a remote run: polls every few seconds cannot time a page.
    rates: bool = True

    def __post_init__(self) -> None:
        self.tty = self.stream.isatty() if self.tty is None else self.tty
        self.started = self.clock()
        self.scopes: dict[str, ScopeProgress] = {}
        self.current: str | None = None
        self.listed = self.pages = self.done = self.total = 0
        self.indexing: str | None = None
        self.listing_ended: float | None = None
        self._last_line = -PLAIN_EVERY_S
        self._last_wait_line = -PLAIN_EVERY_S
        self._live: Any = None

    # -- fed by Backfill ----------------------------------------------------------------------

    def __call__(self, info: dict[str, Any]) -> None:
        now = self.clock()
        self.listed, self.pages = info.get("listed", 0), info.get("pages", 0)
        self.done, self.total = info.get("scopes_done", 0), info.get("scopes_total") or 0
        if info.get("scope") is None:
            names = info.get("names") or {}
            for key in info.get("targets", []):
                self.scopes[key] = ScopeProgress(key, str(names.get(key) or ""),
                                                 done_before=key in info.get("done_before", []))
            self._start_next(now)
            self._draw()
            return
        scope = self.scopes.setdefault(info["scope"], ScopeProgress(info["scope"]))
        if scope.started is None:
            scope.started = now
        self.current = scope.key
        scope.listed = info.get("scope_listed", scope.listed)
        scope.pages = info.get("scope_pages", scope.pages)
        if info.get("scope_done"):
            scope.finished = now
            self._start_next(now)
        if self.tty:
            self._draw()
        elif info.get("scope_done") or now - self._last_line >= PLAIN_EVERY_S:
            self._last_line = now
            print(self.line(scope, now) + (" (scope done)" if info.get("scope_done") else ""),
                  file=self.stream, flush=True)

    def _start_next(self, now: float) -> None:
        """The backfill lists its scopes in order: the next unfinished one is being listed now
        (its clock starts here, not at its first page, so its rate is honest)."""
        pending = [s for s in self.scopes.values() if s.started is None and not s.done_before]
        if pending:
            pending[0].started = now
            self.current = pending[0].key
        elif self.scopes:
            self.current = None
            self.listing_ended = now

    def tick(self) -> None:
        """Redraw (a terminal), or say that the budget holds the listing back (plain lines)."""
        if self.tty:
            self._draw()
            return
        waiting = self.budget_wait()
        now = self.clock()
        if waiting > 0 and now - self._last_wait_line >= PLAIN_EVERY_S:
            self._last_wait_line = now
            where = f" scope {self.current}" if self.current else ""
            print(f"{self.source}{where}: waiting for the rate budget (next request in {duration(waiting)})",
                  file=self.stream, flush=True)

    def waiting(self, report: dict[str, int], eta: float | None) -> None:
        processed = report.get("listed", 0) - report.get("pending", 0)
        self.listing_ended = self.listing_ended or self.clock()
        eta_text = f", ETA {eta:.0f}s" if eta is not None else ""
        self.indexing = (f"indexing: {processed}/{report.get('listed', 0)} processed, "
                         f"{report.get('failed', 0)} failed{eta_text}")
        now = self.clock()
        if self.tty:
            self._draw()
        elif now - self._last_line >= PLAIN_EVERY_S:
            self._last_line = now
            print(self.indexing, file=self.stream, flush=True)

    def end_line(self) -> None:
        if self._live is not None:
            self._draw()
            self._live.stop()
            self._live = None

    # -- text ---------------------------------------------------------------------------------

    def eta(self, now: float) -> float | None:
        """Listing time left, from the scopes finished in this run (None until one is)."""
        finished = [s for s in self.scopes.values() if s.finished is not None]
        remaining = sum(1 for s in self.scopes.values() if s.finished is None and not s.done_before)
        if not finished or not remaining:
            return 0.0 if finished and not remaining else None
        return (now - self.started) / len(finished) * remaining

    def line(self, scope: ScopeProgress, now: float) -> str:
        rate = f", {scope.rate(now):.0f}/s" if self.rates else ""
        return (f"{self.source} scope {scope.key}: {scope.listed} documents listed, {scope.pages} pages{rate}; "
                f"total {self.listed} documents, {self.done}/{self.total} scopes done, ETA {duration(self.eta(now))}")

    def renderable(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = self.clock()
        waiting = self.budget_wait()
        table = Table("SCOPE", "DOCUMENTS", "PAGES", "RATE", "STATE", show_edge=False, header_style="bold")
        for scope in self.scopes.values():
            state = scope.state(waiting if scope.key == self.current else 0.0)
            style = "green" if state.startswith("done") else "yellow" if state.startswith("waiting") else ""
            label = scope.key if not scope.name or scope.name == scope.key else f"{scope.key} ({scope.name})"
            table.add_row(label, f"{scope.listed:,}", f"{scope.pages:,}",
                          f"{scope.rate(now):.0f}/s" if self.rates else "-", Text(state, style=style))
        total_rate = self.listed / max(0.001, (self.listing_ended or now) - self.started)
        table.add_row(Text("total", style="bold"), f"{self.listed:,}", f"{self.pages:,}",
                      f"{total_rate:.0f}/s" if self.rates else "-",
                      f"{self.done}/{self.total} scopes, ETA {duration(self.eta(now))}", end_section=True)
        parts: list[Any] = [Text(f"backfill {self.source}: {self.done}/{self.total} scopes, "
                                 f"{self.listed:,} documents listed, {duration(now - self.started)} elapsed"),
                            table]
        if waiting > 0 and self.indexing is None and self.current is None:
            parts.append(Text(f"waiting for the rate budget (next request in {duration(waiting)})", style="yellow"))
        if self.indexing:
            parts.append(Text(self.indexing))
        return Group(*parts)

    def _draw(self) -> None:
        if not self.tty:
            return
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream, force_terminal=True), auto_refresh=False,
                              transient=False)
            self._live.start()
        self._live.update(self.renderable(), refresh=True)


# --- this machine ---------------------------------------------------------------------------


def backfill_command(args: BackfillArgs) -> int:
    def run(services: Services, settings: Settings) -> int:
        if not settings.source(args.source).configured:
            fail(f"{args.source} is not configured: set its credentials (see docs/configuration.md)")
        owner = owner_name()
        try:
            if args.resume:
                run_id = resumable_run(services.pool, args.source)
                if run_id is None:
                    fail(f"no unfinished {args.source} backfill to resume", 1)
                check_conflict(services.pool, args.source, (load_run(services.pool, run_id) or {})
                               .get("params", {}).get("scopes") or [], exclude=run_id)
            else:
                run_id = create_run(services.pool, args.source, _keys(services, args), args.days, owner=owner)
        except Conflict as exc:
            fail(f"refused: {exc}", 1)
        print(f"backfill run {run_id}: {args.source}", file=sys.stderr)
        return asyncio.run(_cli_backfill(services, settings, run_id, owner, args))

    return with_services(run)


def _keys(services: Services, args: BackfillArgs) -> list[str]:
    """``--scope`` values as scope keys (a Slack channel may be named ``#general``), so a
    conflicting backfill is recognised; names not known yet are left for the backfill, which
    discovers the scopes and refuses what is still unknown."""
    from core.scopes import list_scopes, resolve_keys

    if not args.scopes:
        return []
    found, missing = resolve_keys(list_scopes(services.pool, args.source), args.scopes)
    ambiguous = [m for m in missing if "(ambiguous:" in m]
    if ambiguous:
        fail(f"{args.source} scope name(s) match more than one scope: {'; '.join(ambiguous)}; use the key")
    return found + missing


async def _cli_backfill(services: Services, settings: Settings, run_id: int, owner: str, args: BackfillArgs) -> int:
    sources = SourceSet(settings, services.pool)
    http = getattr(sources.get(args.source), "http", None)
    view = BackfillView(args.source, budget_wait=http.budget_wait if http is not None else (lambda: 0.0))
    ticker = asyncio.create_task(_tick(view))
    try:
        counters = await Backfill(services, sources, run_id, owner, view).run()
    except VectorSyncError as exc:
        view.end_line()
        print(f"vector-sync: backfill failed: {exc} (run 'vector-sync backfill {args.source} --resume' "
              "to continue)", file=sys.stderr)
        return 1
    finally:
        ticker.cancel()
        await sources.aclose()
    report = await _wait_for_workers(services, run_id, args.wait, view)
    view.end_line()
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


async def _tick(view: BackfillView) -> None:
    while True:
        await asyncio.sleep(REDRAW_S)
        view.tick()


async def _wait_for_workers(services: Services, run_id: int, timeout: float, view: BackfillView) -> dict[str, dict[str, int]]:
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
            return report
        await asyncio.to_thread(touch_run, services.pool, run_id)
        await asyncio.sleep(1.0)


def print_report(report: dict[str, dict[str, int]], checked: int | None, missing: list[str]) -> None:
    columns = ("listed", "indexed", "unchanged", "deleted", "failed", "pending")
    print(f"{'scope':<32}" + "".join(f"{c:>10}" for c in columns))
    for scope, counts in report.items():
        print(f"{scope:<32}" + "".join(f"{counts.get(c, 0):>10}" for c in columns))
    summary = totals(report)
    print(f"{'total':<32}" + "".join(f"{summary.get(c, 0):>10}" for c in columns))
    if checked is None:
        return
    verdict = "ok" if not missing else f"MISSING: {', '.join(missing[:10])}"
    print(f"read-back: {checked} sampled documents fetched from the index: {verdict}")


# --- a deployment, through its admin API ----------------------------------------------------

#: Seconds between polls of a remote run.
POLL_S = 2.0


def remote_backfill(remote: Remote, args: BackfillArgs, detach: bool) -> int:
    """Queue the backfill (the deployment's reconciler runs it) and follow the run until it ends."""
    from core.scopes import resolve_keys

    keys = args.scopes
    if keys:
        rows = remote.get("/api/scopes", params={"source": args.source})["scopes"]
        found, missing = resolve_keys(rows, keys)
        keys = found + missing if rows else keys  # unknown ones are refused by the API, by name
    body: dict[str, Any] = {"scopes": keys}
    if args.days is not None:
        body["days"] = args.days
    queued = remote.post(f"/api/backfill/{args.source}", body)
    run_id = queued["run_id"]
    print(f"backfill run {run_id}: {args.source} (queued on {remote.url})", file=sys.stderr)
    if detach:
        print(f"follow it with: vector-sync --url {remote.url} runs --kind backfill")
        return 0
    view = BackfillView(args.source, rates=False)
    deadline = time.monotonic() + args.wait
    while True:
        run = remote.get(f"/api/runs/{run_id}")
        follow_remote(view, run)
        summary = totals(run.get("verification") or {})
        finished = run["status"] not in ("queued", "running")
        if finished and (run["status"] != "succeeded" or not summary.get("pending")):
            break
        if time.monotonic() >= deadline:
            view.end_line()
            print(f"vector-sync: still {run['status']} after {args.wait:.0f}s; follow it with "
                  f"'vector-sync --url {remote.url} runs --kind backfill'", file=sys.stderr)
            return 1
        time.sleep(POLL_S)
    view.end_line()
    print_report(run.get("verification") or {}, None, [])
    if run["status"] != "succeeded":
        print(f"vector-sync: backfill {run['status']}: {run.get('error') or 'no error recorded'}", file=sys.stderr)
        return 1
    return 1 if totals(run.get("verification") or {}).get("failed") else 0


def follow_remote(view: BackfillView, run: dict[str, Any]) -> None:
    """Feed the view from a run row: per-scope entries of its checkpoint, then indexing."""
    counters = dict(run.get("counters") or {})
    entries = ((run.get("checkpoint") or {}).get("scopes") or {})
    if entries and not view.scopes:
        view({"scope": None, "targets": list(entries), "done_before": [], **counters})
    for key, entry in entries.items():
        known = view.scopes.get(key)
        if known is not None and (known.finished is not None or (known.listed == entry.get("listed", 0)
                                                                  and not entry.get("done"))):
            continue
        view({"scope": key, "scope_listed": entry.get("listed", 0), "scope_pages": entry.get("pages", 0),
              "scope_done": bool(entry.get("done")), **counters})
    summary = totals(run.get("verification") or {})
    if run["status"] not in ("queued", "running") and summary:
        view.waiting(summary, None)
