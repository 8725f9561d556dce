"""The ``vector-sync`` command.

    vector-sync up                    run everything on one machine (embedded defaults)
    vector-sync status [--json]       the status report in a terminal
    vector-sync backfill SOURCE ...   load history, resumably
    vector-sync verify [SOURCE] [--scope KEY] [--repair] [--json]
                                      the drift audit (exit 0 clean, 1 drift, 3 incomplete)
    vector-sync scopes list|activate|deactivate SOURCE [KEY ...]
    vector-sync dead-letters list|replay
    vector-sync sandbox ...           the simulators (same as python -m sandbox)
    vector-sync migrate               apply database migrations and exit

Bad configuration prints one line naming the variable and exits 2; no stack traces.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from core.errors import SettingsError, VectorSyncError
from core.logs import configure_logging
from core.settings import SOURCE_NAMES, Settings

log = logging.getLogger("vector_sync")


def fail(message: str, code: int = 2) -> None:
    print(f"vector-sync: {message}", file=sys.stderr)
    sys.exit(code)


def load_settings() -> Settings:
    try:
        return Settings.from_environ()
    except SettingsError as exc:
        fail(str(exc))
        raise  # unreachable


def install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_process(kind: str, body: Callable[[Settings, threading.Event], None]) -> None:
    """Entry point of a long-running process: settings, logging, signals, one-line failures."""
    settings = load_settings()
    configure_logging(settings.log_level)
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        body(settings, stop)
    except SettingsError as exc:
        fail(str(exc))
    except VectorSyncError as exc:
        fail(f"{kind}: {exc}", 1)
    except Exception as exc:
        log.exception("%s crashed", kind)
        fail(f"{kind} crashed: {type(exc).__name__}: {exc}", 1)


# --- commands -------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from core.supervisor import up

    return up(load_settings())


def with_services(fn: Callable[[Any, Settings], int]) -> int:
    """Open the shared services (attaching to embedded servers under VECTOR_SYNC_HOME if the
    URLs are unset and they are running) for a one-shot command."""
    from core.supervisor import attached_settings
    from core.runtime import open_services

    settings = attached_settings(load_settings())
    configure_logging("WARNING")
    try:
        services = open_services(settings)
    except SettingsError as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"cannot reach the database or Redis: {type(exc).__name__}: {exc}", 1)
    try:
        return fn(services, settings)
    finally:
        services.close()


#: ``vector-sync status`` exit codes (docs/operations.md): healthy, not healthy, usage or
#: configuration error, the state cannot be read (Postgres unreachable).
STATUS_HEALTHY, STATUS_UNHEALTHY, STATUS_USAGE, STATUS_UNREADABLE = 0, 1, 2, 3


def cmd_status(args: argparse.Namespace) -> int:
    from core.runtime import open_services
    from core.status import build_status, unreadable_report
    from core.statusview import render_text
    from core.supervisor import attached_settings

    settings = attached_settings(load_settings())
    configure_logging("WARNING")
    services = None
    try:
        services = open_services(settings)
    except SettingsError as exc:
        fail(str(exc), STATUS_USAGE)
    except Exception as exc:  # Postgres cannot be reached: the state cannot be read
        report = unreadable_report(settings, exc)
    try:
        if services is not None:
            report = build_status(services, settings)
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print(render_text(report, services.pool if services is not None else None))
    finally:
        if services is not None:
            services.close()
    if not report["postgres"]["up"]:
        return STATUS_UNREADABLE
    return STATUS_HEALTHY if report["healthy"] else STATUS_UNHEALTHY


def cmd_migrate(args: argparse.Namespace) -> int:
    from core import state

    def run(services: Any, settings: Settings) -> int:
        applied = state.migrate(services.pool)
        print("applied: " + ", ".join(applied) if applied else "up to date")
        return 0

    return with_services(run)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from sandbox.__main__ import main as sandbox_main

    return sandbox_main(args.rest)


def cmd_scopes(args: argparse.Namespace) -> int:
    from core import scopes

    def run(services: Any, settings: Settings) -> int:
        if args.action == "list":
            rows = scopes.list_scopes(services.pool, args.source)
            for row in rows:
                flag = "active  " if row["active"] else "inactive"
                last = row["last_success_at"].isoformat(timespec="seconds") if row["last_success_at"] else "never"
                print(f"{row['source']:<10} {row['key']:<30} {flag} last success {last}  {row['name']}")
            if not rows:
                print("no scopes yet (the reconciler discovers them on its first pass)")
            return 0
        if not args.source or not args.keys:
            fail(f"scopes {args.action} needs SOURCE and at least one KEY")
        if args.source not in SOURCE_NAMES:
            fail(f"unknown source {args.source!r}; one of {', '.join(SOURCE_NAMES)}")
        done = scopes.set_active(services.pool, args.source, args.keys, args.action == "activate")
        missing = sorted(set(args.keys) - set(done))
        for key in done:
            print(f"{args.action}d {args.source} {key}")
        if args.action == "deactivate" and args.purge and done:
            from core import queue

            refs = [ref for key in done for ref in scopes.purge_refs(services.pool, args.source, key)]
            queue.enqueue(services.broker, refs)
            print(f"purging {len(refs)} document(s)")
        if missing:
            print(f"unknown scope(s): {', '.join(missing)} (see 'vector-sync scopes list')", file=sys.stderr)
            return 1
        return 0

    return with_services(run)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from core import queue

    def run(services: Any, settings: Settings) -> int:
        if args.action == "list":
            letters = queue.dead_letters(services.broker)
            for letter in letters:
                ids = ", ".join(f"{r['source']}:{r['id']}" for r in letter["refs"][:5])
                more = f" (+{len(letter['refs']) - 5})" if len(letter["refs"]) > 5 else ""
                print(f"{letter['message_id']}  retries={letter['retries']}  {ids}{more}  {' '.join(letter['error'])}")
            print(f"{len(letters)} dead letter(s)")
            return 0
        count = queue.replay_dead_letters(services.broker, args.ids or None)
        print(f"replayed {count} message(s)")
        return 0

    return with_services(run)


def cmd_backfill(args: argparse.Namespace) -> int:
    from reconciler.backfill import backfill_command

    return backfill_command(args)


#: ``vector-sync verify`` exit codes: clean, drift found, usage error, audit incomplete (a
#: listing failed, or a scope was busy: audited by another process or listed by a backfill).
VERIFY_CLEAN, VERIFY_DRIFT, VERIFY_USAGE, VERIFY_INCOMPLETE = 0, 1, 2, 3


def cmd_verify(args: argparse.Namespace) -> int:
    import asyncio

    from core import verify
    from core.runtime import SourceSet

    if args.scope is not None and not args.source:
        fail("--scope needs SOURCE (e.g. vector-sync verify jira --scope SUBS)", VERIFY_USAGE)

    def run(services: Any, settings: Settings) -> int:
        if args.source and not settings.source(args.source).configured:
            fail(f"{args.source} is not configured: set its credentials (see docs/configuration.md)",
                 VERIFY_USAGE)

        async def audit() -> list[verify.Report]:
            sources = SourceSet(settings, services.pool)
            try:
                auditor = verify.Auditor(services, sources, verify.owner_name(), repair=args.repair)
                targets = await asyncio.to_thread(auditor.targets, args.source, args.scope)
                return await auditor.run_all(targets)
            finally:
                await sources.aclose()

        try:
            reports = asyncio.run(audit())
        except VectorSyncError as exc:
            fail(str(exc), VERIFY_USAGE)
            raise  # unreachable
        result = verify.summary(reports)
        if not any(r.scope is not None for r in reports):
            print("no active scopes to audit (the reconciler discovers them; see 'vector-sync scopes list')",
                  file=sys.stderr)
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        else:
            print(render_verify(reports, args.repair))
        if result["failed"] or result["skipped"]:
            return VERIFY_INCOMPLETE
        return VERIFY_DRIFT if result["drift"] else VERIFY_CLEAN

    return with_services(run)


def render_verify(reports: list[Any], repair: bool) -> str:
    from core.verify import CATEGORIES

    header = f"{'SOURCE':<10} {'SCOPE':<28} {'MISSING':>7} {'STALE':>6} {'GHOST':>6} {'ORPHANS':>7}  RESULT"
    lines = [header]
    notes: list[str] = []
    for r in reports:
        counts = {c: len(r.found[c]) for c in CATEGORIES}
        scope = r.scope if r.scope is not None else "(whole index)"
        cells = ("-", "-", "-", str(counts["orphan_vectors"])) if r.scope is None else (
            str(counts["missing"]), str(counts["stale"]), str(counts["ghost"]), "-")
        if r.status != "succeeded":
            cells = ("-", "-", "-", "-")
            result = f"{r.status}: {r.error}"
        elif r.drift:
            result = "DRIFT"
        else:
            result = "ok"
        if r.status == "succeeded" and r.compares == "ids":
            result += " (ids only)"
        lines.append(f"{r.source:<10} {scope:<28} {cells[0]:>7} {cells[1]:>6} {cells[2]:>6} {cells[3]:>7}  {result}")
        for c in CATEGORIES:
            if r.found[c]:
                sample = ", ".join(sorted(r.found[c])[:10])
                more = f" (+{len(r.found[c]) - 10} more)" if len(r.found[c]) > 10 else ""
                notes.append(f"  {r.source} {scope} {c}: {sample}{more}")
        if repair and any(r.repaired.values()):
            done = ", ".join(f"{k} {v}" for k, v in r.repaired.items() if v)
            notes.append(f"  {r.source} {scope} repaired: {done}")
    drift = sum(r.drift for r in reports)
    incomplete = sum(1 for r in reports if r.status != "succeeded")
    tail = f"drift: {drift}" + (f", {incomplete} audit(s) incomplete" if incomplete else "")
    if repair and drift:
        tail += " (repairs enqueued: sync for missing/stale, confirmed deletes for ghosts; orphan vectors deleted)"
    return "\n".join(lines + notes + [tail])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vector-sync", description="Keep a vector index truthful about your SaaS tools.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run receiver, worker and reconciler (embedded defaults)").set_defaults(fn=cmd_up)
    status = sub.add_parser("status", help="print the status report")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(fn=cmd_status)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)
    sandbox = sub.add_parser("sandbox", help="serve the SaaS simulators", add_help=False)
    sandbox.add_argument("rest", nargs=argparse.REMAINDER)
    sandbox.set_defaults(fn=cmd_sandbox)
    scopes = sub.add_parser("scopes", help="list, activate or deactivate scopes")
    scopes.add_argument("action", choices=["list", "activate", "deactivate"])
    scopes.add_argument("source", nargs="?")
    scopes.add_argument("keys", nargs="*")
    scopes.add_argument("--purge", action="store_true", help="with deactivate: delete the scope's documents")
    scopes.set_defaults(fn=cmd_scopes)
    dead = sub.add_parser("dead-letters", help="list or replay jobs that exhausted their retries")
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("ids", nargs="*", help="message ids to replay (default: all)")
    dead.set_defaults(fn=cmd_dead_letters)
    backfill = sub.add_parser("backfill", help="load history scope by scope, resumably")
    backfill.add_argument("source", choices=SOURCE_NAMES)
    backfill.add_argument("--scope", action="append", default=[], help="scope key (repeatable; default all active)")
    window = backfill.add_mutually_exclusive_group()
    window.add_argument("--days", type=int, help="only what changed in the last N days")
    window.add_argument("--all", action="store_true", help="everything (the default)")
    backfill.add_argument("--resume", action="store_true", help="continue the last unfinished backfill")
    backfill.add_argument("--sample", type=int, default=20, help="documents read back from the index to verify")
    backfill.add_argument("--wait", type=float, default=1800.0,
                          help="seconds to wait for the workers to index what was listed")
    backfill.set_defaults(fn=cmd_backfill)
    verify = sub.add_parser("verify", help="audit the index against the sources (drift), and repair")
    verify.add_argument("source", nargs="?", choices=SOURCE_NAMES, help="one source (default: all, plus the index)")
    verify.add_argument("--scope", help="one scope key of SOURCE")
    verify.add_argument("--repair", action="store_true", help="enqueue what fixes the drift found")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(fn=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = args.fn(args)
    except SettingsError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
