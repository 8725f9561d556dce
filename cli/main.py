"""The ``vector-sync`` command.

    vector-sync up                    run everything on one machine (embedded defaults)
    vector-sync status [--json]       the status report in a terminal
    vector-sync backfill SOURCE ...   load history, resumably
    vector-sync verify [SOURCE] [--scope KEY] [--repair] [--json]
                                      the drift audit (exit 0 clean, 1 drift, 3 incomplete)
    vector-sync scopes list|activate|deactivate SOURCE [KEY ...]
    vector-sync scopes access SOURCE KEY --restrict a@x,b@y | --public | --inherit
    vector-sync keys create|list|revoke   API keys (admin, or search bound to a principal)
    vector-sync search "query" [--source S] [--scope K] [--as-user EMAIL] [--top-k N] [--json]
    vector-sync mcp                   MCP server over stdio (key: VECTOR_SYNC_API_KEY)
    vector-sync dead-letters list|replay
    vector-sync notion-token clear    forget a recorded Notion verification token
    vector-sync sandbox ...           the simulators (same as python -m sandbox)
    vector-sync migrate               apply database migrations and exit

Bad configuration prints one line naming the variable and exits 2; no stack traces.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.errors import SettingsError, VectorSyncError
from core.logs import configure_logging
from core.process import fail, load_settings
from core.settings import SOURCE_NAMES, Settings
from cli.services import with_services



# --- commands -------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from core.supervisor import up

    return up(load_settings())


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
        if args.action == "access":
            return scope_access(services, args)
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


def scope_access(services: Any, args: argparse.Namespace) -> int:
    """Operator-set access for scopes, then a re-sync so the index follows."""
    from core import access, queue
    from core.documents import Ref, split_doc_id
    from core import state

    modes = [m for m in ("restrict", "public", "inherit") if getattr(args, m)]
    if len(modes) != 1:
        fail("scopes access needs exactly one of --restrict EMAIL[,EMAIL...], --public or --inherit")
    access_type = {"restrict": "restricted", "public": "public", "inherit": None}[modes[0]]
    members = [m for m in (args.restrict or "").split(",") if m.strip()]
    try:
        done = access.set_scope_access(services.pool, args.source, args.keys, access_type, members)
    except ValueError as exc:
        fail(str(exc))
    refs = [Ref(source=args.source, id=split_doc_id(d)[1], scope=key)
            for key in done for d in state.live_document_ids(services.pool, args.source, key)]
    if refs:
        queue.enqueue(services.broker, refs)
    for key in done:
        what = access_type or "inherited from the source"
        listed = f" to {', '.join(sorted({m.strip().lower() for m in members}))}" if members else ""
        print(f"{args.source} {key}: {what}{listed}; re-syncing {len(refs)} document(s)")
    missing = sorted(set(args.keys) - set(done))
    if missing:
        print(f"unknown scope(s): {', '.join(missing)} (see 'vector-sync scopes list')", file=sys.stderr)
        return 1
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from core import apikeys

    def run(services: Any, settings: Settings) -> int:
        if args.action == "create":
            if not args.role:
                fail("keys create needs --role admin|search")
            try:
                key, token = apikeys.create_key(services.pool, args.role, args.principal,
                                                trusted=args.trusted, name=args.name or "")
            except ValueError as exc:
                fail(str(exc))
            if args.json:
                print(json.dumps({"id": key.id, "role": key.role, "principal": key.principal,
                                  "trusted": key.trusted, "name": key.name, "token": token}))
            else:
                who = key.principal or "no principal"
                print(f"created {key.role} key {key.id} ({who}{', trusted' if key.trusted else ''})")
                print(f"token (shown once, store it now): {token}")
            return 0
        if args.action == "list":
            rows = apikeys.list_keys(services.pool, include_revoked=args.all)
            if args.json:
                print(json.dumps(rows, indent=2))
                return 0
            for row in rows:
                state_ = f"revoked {row['revoked_at']}" if row["revoked_at"] else f"last used {row['last_used_at'] or 'never'}"
                print(f"{row['id']}  {row['role']:<6} {row['principal'] or '-':<30} "
                      f"{'trusted ' if row['trusted'] else ''}{row['name']}  {state_}")
            print(f"{len(rows)} key(s)")
            return 0
        if not args.id:
            fail("keys revoke needs the key ID (see 'vector-sync keys list')")
        if not apikeys.revoke(services.pool, args.id):
            print(f"no live key {args.id!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.id}")
        return 0

    return with_services(run)


def cmd_search(args: argparse.Namespace) -> int:
    """The same search as the API (core.search), as the local operator: public documents, or
    what --as-user may read, or everything with --include-restricted."""
    import asyncio

    from core import access, search
    from core.embeddings import build_embedder

    def run(services: Any, settings: Settings) -> int:
        data: dict[str, Any] = {"q": args.query, "top_k": args.top_k, "mode": args.mode,
                                "include_restricted": args.include_restricted}
        if args.source:
            data["source"] = args.source
        if args.scope:
            data["scope"] = args.scope
        if args.as_user:
            data["as_user"] = args.as_user
        try:
            query = search.parse(data)
            view = access.view_for(None, query.as_user, query.include_restricted)
        except ValueError as exc:
            fail(str(exc))

        async def go() -> dict[str, Any]:
            embedder = build_embedder(settings)
            try:
                return await search.search(services, embedder, settings, query, view)
            finally:
                await embedder.aclose()

        try:
            body = asyncio.run(go())
        except VectorSyncError as exc:
            fail(f"search failed: {exc}", 1)
        if args.json:
            print(json.dumps(body, indent=2, default=str))
            return 0
        for n, hit in enumerate(body["results"], start=1):
            flags = " ".join(f for f, on in (("restricted", hit["access_type"] != "public"),
                                             ("STALE", hit["stale"])) if on)
            print(f"{n:>2}. {hit['title'][:90]}  [{hit['source']}/{hit['scope']}] {flags}".rstrip())
            print(f"    {hit['url'] or hit['document_id']}  score {hit['score']:.4f}  as of {hit['as_of'] or '?'}")
        if not body["results"]:
            print(f"no results ({body['access']})")
        return 0

    return with_services(run)


def cmd_mcp(args: argparse.Namespace) -> int:
    """The MCP server over stdio, as the key in VECTOR_SYNC_API_KEY (resolved on every call)."""
    import os

    from core import apikeys
    from core.embeddings import build_embedder
    from core.mcp_tools import build_server

    from core.settings import read_secret_files

    try:  # VECTOR_SYNC_API_KEY_FILE too, as for every secret
        token = read_secret_files(os.environ).get("VECTOR_SYNC_API_KEY", "").strip()
    except SettingsError as exc:
        fail(str(exc))
    if not token:
        fail("VECTOR_SYNC_API_KEY is not set: vector-sync mcp needs a search key (vector-sync keys create)")

    def run(services: Any, settings: Settings) -> int:
        env_admin = str(settings.admin_api_key) or None
        if apikeys.resolve(services.pool, token, env_admin) is None:
            fail("VECTOR_SYNC_API_KEY is not a live API key")

        async def key_of(ctx: Any) -> Any:
            import asyncio

            key = await asyncio.to_thread(apikeys.resolve, services.pool, token, env_admin)
            if key is None:
                raise PermissionError("VECTOR_SYNC_API_KEY was revoked")
            return key

        embedder = build_embedder(settings)
        build_server(services, settings, embedder, key_of).run("stdio")
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
    from cli.backfill import backfill_command

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
    scopes.add_argument("action", choices=["list", "activate", "deactivate", "access"])
    scopes.add_argument("source", nargs="?")
    scopes.add_argument("keys", nargs="*")
    scopes.add_argument("--purge", action="store_true", help="with deactivate: delete the scope's documents")
    scopes.add_argument("--restrict", metavar="EMAILS", help="with access: only these principals (comma-separated)")
    scopes.add_argument("--public", action="store_true", help="with access: the whole workspace")
    scopes.add_argument("--inherit", action="store_true", help="with access: back to what the source says")
    scopes.set_defaults(fn=cmd_scopes)
    keys = sub.add_parser("keys", help="create, list or revoke API keys")
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument("id", nargs="?", help="with revoke: the key id")
    keys.add_argument("--role", choices=["admin", "search"], help="with create")
    keys.add_argument("--principal", help="with create: the email the key searches as")
    keys.add_argument("--trusted", action="store_true", help="with create: may search on behalf of a user (as_user)")
    keys.add_argument("--name", help="with create: a label")
    keys.add_argument("--all", action="store_true", help="with list: include revoked keys")
    keys.add_argument("--json", action="store_true", help="print JSON")
    keys.set_defaults(fn=cmd_keys)
    find = sub.add_parser("search", help="search the index (the same search as the API)")
    find.add_argument("query")
    find.add_argument("--source", action="append", help="only this source (repeatable)")
    find.add_argument("--scope", action="append", help="only this scope key (repeatable)")
    find.add_argument("--as-user", help="search as this email sees it (restricted documents it may read)")
    find.add_argument("--include-restricted", action="store_true", help="everything, whoever may read it")
    find.add_argument("--top-k", type=int, default=10)
    find.add_argument("--mode", choices=["hybrid", "vector"], default="hybrid")
    find.add_argument("--json", action="store_true", help="print JSON (the API's body)")
    find.set_defaults(fn=cmd_search)
    sub.add_parser("mcp", help="MCP server over stdio (search, get_document) as VECTOR_SYNC_API_KEY").set_defaults(
        fn=cmd_mcp)
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
