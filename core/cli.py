"""The ``vector-sync`` command.

    vector-sync up                    run everything on one machine (embedded defaults)
    vector-sync status [--json]       the status report in a terminal
    vector-sync backfill SOURCE ...   load history, resumably
    vector-sync scopes list|activate|deactivate SOURCE [KEY ...]
    vector-sync dead-letters list|replay
    vector-sync notion-token clear    forget a recorded Notion verification token
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


def cmd_status(args: argparse.Namespace) -> int:
    from core.status import build_status
    from core.statusview import render_text

    def show(services: Any, settings: Settings) -> int:
        report = build_status(services, settings)
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print(render_text(report, services.pool))
        return 0 if report["all_fresh"] else 1

    return with_services(show)


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


def cmd_notion_token(args: argparse.Namespace) -> int:
    from core import state

    def run(services: Any, settings: Settings) -> int:
        if state.kv_delete(services.pool, "notion.verification_token"):
            print("cleared the recorded notion verification token; the next verification request is recorded")
        else:
            print("no notion verification token was recorded; nothing to clear")
        if settings.source("notion").secret("NOTION_WEBHOOK_TOKEN"):
            print("note: NOTION_WEBHOOK_TOKEN is set, so unsigned verification requests are refused; "
                  "unset it and restart to verify a new subscription")
        return 0

    return with_services(run)


def cmd_backfill(args: argparse.Namespace) -> int:
    from reconciler.backfill import backfill_command

    return backfill_command(args)


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
    token = sub.add_parser("notion-token", help="clear a recorded Notion webhook verification token")
    token.add_argument("action", choices=["clear"])
    token.set_defaults(fn=cmd_notion_token)
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
