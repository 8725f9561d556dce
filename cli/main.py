"""The ``vector-sync`` command (typer). Every command has ``--help``; ``vector-sync --help``
lists them. Output is a coloured table in a terminal and stable plain lines otherwise.

    vector-sync up                    run everything on one machine (embedded defaults)
    vector-sync status [--json] [--watch]
    vector-sync check SOURCE          credentials and permissions, before the first poll
    vector-sync backfill SOURCE ...   load history, resumably (a live view per scope)
    vector-sync verify [SOURCE] [--scope KEY] [--repair] [--json]
    vector-sync scopes list|activate|deactivate|access ...
    vector-sync runs [--source S] [--kind K]
    vector-sync keys create|list|revoke
    vector-sync search "query" [...]
    vector-sync mcp | dead-letters list|replay | notion-token clear | sandbox ... | migrate

``--url URL --key KEY`` (or VECTOR_SYNC_URL / VECTOR_SYNC_KEY) drives a running deployment
through its API instead of this machine's database: status, scopes, runs, dead-letters,
backfill, search, notion-token.

Exit codes: 0 success, 1 a failure or something unknown (a scope, a dead letter, a key), 2 bad
usage or configuration (one line naming it; never a stack trace).
"""

from __future__ import annotations

import enum
import json
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from cli.output import print_table
from cli.remote import Remote
from cli.services import with_services
from core.errors import SettingsError, VectorSyncError
from core.process import fail, load_settings
from core.settings import SOURCE_NAMES, Settings

#: Choices (typer validates them: an unknown source is a usage error, exit 2).
Source = enum.Enum("Source", {name: name for name in SOURCE_NAMES}, type=str)
Role = enum.Enum("Role", {"admin": "admin", "search": "search"}, type=str)
Mode = enum.Enum("Mode", {"hybrid": "hybrid", "vector": "vector"}, type=str)


def val(choice: Any) -> Any:
    """The plain string(s) of a choice (an Enum member, a list of them, or None)."""
    if isinstance(choice, list):
        return [val(c) for c in choice]
    return choice.value if isinstance(choice, enum.Enum) else choice

app = typer.Typer(
    name="vector-sync", help="Keep a vector index truthful about your SaaS tools.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass(frozen=True)
class Target:
    """Where one-shot commands act: this machine's database (url None) or a deployment's API."""

    url: str | None
    key: str | None


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("vector-sync")
    except PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        print(f"vector-sync {version()}")
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(
        "--url", envvar="VECTOR_SYNC_URL", metavar="URL",
        help="Drive a running deployment through its API (e.g. https://sync.example.com).")] = None,
    key: Annotated[str | None, typer.Option(
        "--key", envvar="VECTOR_SYNC_KEY", metavar="KEY", show_default=False,
        help="API key for --url: an admin key (a search key is enough for search).")] = None,
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    if url and not key:  # VECTOR_SYNC_KEY_FILE, as for every secret
        import os

        from core.settings import read_secret_files

        try:
            key = read_secret_files(os.environ).get("VECTOR_SYNC_KEY", "").strip() or None
        except SettingsError as exc:
            fail(str(exc))
    ctx.obj = Target(url or None, key or None)


def remote_of(ctx: typer.Context) -> Remote | None:
    target: Target = ctx.find_root().obj
    return Remote(target.url, target.key) if target and target.url else None


def local_only(ctx: typer.Context, command: str) -> None:
    target: Target = ctx.find_root().obj
    if target and target.url:
        fail(f"{command} works on this machine only (it needs the database or the source credentials); "
             "drop --url / VECTOR_SYNC_URL")


def finish(code: int) -> None:
    raise typer.Exit(code)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --- up, migrate, sandbox, mcp ---------------------------------------------------------------


@app.command()
def up(ctx: typer.Context) -> None:
    """Run receiver, workers and reconciler on this machine (embedded defaults; Ctrl-C stops)."""
    local_only(ctx, "up")
    from core.supervisor import up as run_up

    finish(run_up(load_settings()))


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Apply the database migrations and exit."""
    local_only(ctx, "migrate")
    from core import state

    def run(services: Any, settings: Settings) -> int:
        applied = state.migrate(services.pool)
        print("applied: " + ", ".join(applied) if applied else "up to date")
        return 0

    finish(with_services(run))


@app.command(add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sandbox(ctx: typer.Context) -> None:
    """Serve the SaaS simulators (options: vector-sync sandbox --help)."""
    from sandbox.__main__ import main as sandbox_main

    finish(sandbox_main(list(ctx.args), prog="vector-sync sandbox"))


@app.command()
def mcp(ctx: typer.Context) -> None:
    """MCP server over stdio (search, get_document) as the key in VECTOR_SYNC_API_KEY."""
    local_only(ctx, "mcp")
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

    finish(with_services(run))


# --- status ---------------------------------------------------------------------------------

@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Redraw every --interval seconds until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between redraws with --watch.")] = 2.0,
    count: Annotated[int, typer.Option(min=0, help="With --watch: stop after this many reports (0: never).")] = 0,
) -> None:
    """The status report (exit 0 healthy, 1 not healthy, 3 the state cannot be read)."""
    from cli.status import watch_status

    remote = remote_of(ctx)
    finish(watch_status(remote, as_json, watch, interval, count))


# --- check ----------------------------------------------------------------------------------


@app.command()
def check(
    ctx: typer.Context,
    source: Annotated[Source, typer.Argument(help="The source to check.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check a source's credentials and permissions now, before the first poll.

    Says who the token is, what it can see and which scopes or permissions are missing.
    Exit 0 usable, 1 a problem (refused, missing permission, nothing visible), 2 not configured.
    """
    local_only(ctx, "check")
    from cli.check import run_check

    finish(run_check(load_settings(), val(source), as_json))


# --- scopes ---------------------------------------------------------------------------------

scopes_app = typer.Typer(help="List scopes (projects, channels, repos), activate or deactivate them, set access.",
                         no_args_is_help=True)
app.add_typer(scopes_app, name="scopes")

SourceArg = Annotated[Source, typer.Argument(help="jira, slack, github, notion, tempo or fireflies.")]
KeysArg = Annotated[list[str], typer.Argument(help="Scope keys or names (a Slack channel: C0123, #general or general).")]


def _scope_rows(remote: Remote | None, services: Any, source: str | None) -> list[dict[str, Any]]:
    if remote is not None:
        return list(remote.get("/api/scopes", params={"source": source} if source else None)["scopes"])
    from core import scopes

    return scopes.list_scopes(services.pool, source)


def _resolve(rows: list[dict[str, Any]], keys: list[str]) -> tuple[list[str], list[str]]:
    from core.scopes import resolve_keys

    return resolve_keys(rows, keys)


def _unknown_scopes(missing: list[str]) -> int:
    print(f"unknown scope(s): {', '.join(missing)} (see 'vector-sync scopes list')", file=sys.stderr)
    return 1


def _when(value: Any) -> str:
    if not value:
        return "never"
    if isinstance(value, str):
        return value.split(".")[0].replace("T", " ")[:19]
    return value.isoformat(timespec="seconds")


@scopes_app.command("list")
def scopes_list(
    ctx: typer.Context,
    source: Annotated[Source | None, typer.Argument(help="Only this source.")] = None,
    keys: Annotated[list[str] | None, typer.Argument(help="Only these scopes (keys or names).")] = None,
) -> None:
    """List the scopes the reconciler knows, with state and last success."""
    source = val(source)
    remote = remote_of(ctx)

    def run(services: Any, settings: Settings | None) -> int:
        rows = _scope_rows(remote, services, source)
        missing: list[str] = []
        if keys:
            found, missing = _resolve(rows, keys)
            rows = [r for r in rows if r["key"] in found]
        plain = []
        table = []
        for row in rows:
            flag = "active  " if row["active"] else "inactive"
            last = _when(row["last_success_at"])
            plain.append(f"{row['source']:<10} {row['key']:<30} {flag} last success {last}  {row['name']}")
            error = row.get("last_error") or ""
            table.append([row["source"], row["key"], row["name"] or "", flag.strip(), last,
                          (f"failing: {error}" if error else "")[:80]])
        if not rows and not missing:
            print("no scopes yet (the reconciler discovers them on its first pass)")
        else:
            print_table(["SOURCE", "SCOPE", "NAME", "STATE", "LAST SUCCESS", "LAST ERROR"], table, plain)
        return _unknown_scopes(missing) if missing else 0

    finish(_run(remote, run))


def _change_scopes(ctx: typer.Context, source: str, keys: list[str], activate: bool, purge: bool) -> int:
    remote = remote_of(ctx)
    action = "activate" if activate else "deactivate"

    def run(services: Any, settings: Settings | None) -> int:
        found, missing = _resolve(_scope_rows(remote, services, source), keys)
        purged = 0
        if found and remote is not None:
            body = remote.post(f"/api/scopes/{source}/{action}", {"keys": found, "purge": purge}, ok=(200, 404))
            done, purged = body["changed"], body.get("purged", 0)
        elif found:
            from core import queue, scopes

            done = scopes.set_active(services.pool, source, found, activate)
            if purge and done:
                refs = [ref for key in done for ref in scopes.purge_refs(services.pool, source, key)]
                queue.enqueue(services.broker, refs)
                purged = len(refs)
        else:
            done = []
        for key in done:
            print(f"{action}d {source} {key}")
        if purge and done:
            print(f"purging {purged} document(s)")
        missing += sorted(set(found) - set(done))
        return _unknown_scopes(missing) if missing else 0

    return _run(remote, run)


@scopes_app.command("activate")
def scopes_activate(ctx: typer.Context, source: SourceArg, keys: KeysArg) -> None:
    """Start syncing these scopes (the reconciler polls them from its next pass)."""
    finish(_change_scopes(ctx, val(source), keys, True, False))


@scopes_app.command("deactivate")
def scopes_deactivate(
    ctx: typer.Context, source: SourceArg, keys: KeysArg,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the scopes' documents from the index.")] = False,
) -> None:
    """Stop syncing these scopes (what is indexed stays unless --purge)."""
    finish(_change_scopes(ctx, val(source), keys, False, purge))


@scopes_app.command("access")
def scopes_access(
    ctx: typer.Context, source: SourceArg, keys: KeysArg,
    restrict: Annotated[str | None, typer.Option(metavar="EMAILS", help="Only these principals (comma-separated).")] = None,
    public: Annotated[bool, typer.Option("--public", help="The whole workspace may read them.")] = False,
    inherit: Annotated[bool, typer.Option("--inherit", help="Back to what the source says.")] = False,
) -> None:
    """Set who may read these scopes' documents, then re-sync them so the index follows."""
    local_only(ctx, "scopes access")
    source = val(source)
    from core import access, queue, state
    from core.documents import Ref, split_doc_id

    modes = [m for m, on in (("restrict", restrict is not None), ("public", public), ("inherit", inherit)) if on]
    if len(modes) != 1:
        fail("scopes access needs exactly one of --restrict EMAIL[,EMAIL...], --public or --inherit")
    access_type = {"restrict": "restricted", "public": "public", "inherit": None}[modes[0]]
    members = [m for m in (restrict or "").split(",") if m.strip()]

    def run(services: Any, settings: Settings) -> int:
        found, missing = _resolve(_scope_rows(None, services, source), keys)
        try:
            done = access.set_scope_access(services.pool, source, found, access_type, members) if found else []
        except ValueError as exc:
            fail(str(exc))
        refs = [Ref(source=source, id=split_doc_id(d)[1], scope=key)
                for key in done for d in state.live_document_ids(services.pool, source, key)]
        if refs:
            queue.enqueue(services.broker, refs)
        for key in done:
            what = access_type or "inherited from the source"
            listed = f" to {', '.join(sorted({m.strip().lower() for m in members}))}" if members else ""
            print(f"{source} {key}: {what}{listed}; re-syncing {len(refs)} document(s)")
        missing += sorted(set(found) - set(done))
        return _unknown_scopes(missing) if missing else 0

    finish(with_services(run))


def _run(remote: Remote | None, fn: Any) -> int:
    """``fn(services, settings)`` on this machine's services, or ``fn(None, None)`` with --url."""
    if remote is None:
        return with_services(fn)
    try:
        return int(fn(None, None))
    finally:
        remote.close()


# --- runs -----------------------------------------------------------------------------------


@app.command()
def runs(
    ctx: typer.Context,
    source: Annotated[Source | None, typer.Option(help="Only this source.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind: reconcile, backfill, prune, verify.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many (newest first).")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The newest runs (reconcile, backfill, prune, verify) with their counters and errors."""
    source = val(source)
    remote = remote_of(ctx)

    def run(services: Any, settings: Settings | None) -> int:
        if remote is not None:
            params = {k: v for k, v in (("source", source), ("kind", kind)) if v}
            rows = remote.get("/api/runs", params=params)["runs"][:limit]
        else:
            from core.runs import list_runs

            rows = _jsonable(list_runs(services.pool, source, kind, limit))
        if as_json:
            print(json.dumps(rows, indent=2))
            return 0
        plain, table = [], []
        for r in rows:
            counters = r.get("counters") or {}
            summary = ", ".join(f"{k} {v}" for k, v in counters.items() if isinstance(v, int | float) and v)[:70]
            started = _when(r.get("started_at"))
            plain.append(f"{r['id']:>6} {r['kind']:<9} {r['source'] or '-':<10} {r['scope'] or '-':<24} "
                         f"{r['status']:<9} {started}  {summary}  {r.get('error') or ''}".rstrip())
            table.append([str(r["id"]), r["kind"], r["source"] or "-", r["scope"] or "-", r["status"], started,
                          summary, (r.get("error") or "")[:60]])
        print_table(["ID", "KIND", "SOURCE", "SCOPE", "STATUS", "STARTED", "COUNTERS", "ERROR"], table, plain)
        print(f"{len(rows)} run(s)")
        return 0

    finish(_run(remote, run))


# --- keys -----------------------------------------------------------------------------------

keys_app = typer.Typer(help="API keys: admin keys, or search keys bound to a principal.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    role: Annotated[Role | None, typer.Option(help="admin or search.")] = None,
    principal: Annotated[str | None, typer.Option(help="The email a search key searches as.")] = None,
    trusted: Annotated[bool, typer.Option("--trusted", help="May search on behalf of a user (as_user).")] = False,
    name: Annotated[str, typer.Option(help="A label.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with the token).")] = False,
) -> None:
    """Create a key; its token is shown once."""
    local_only(ctx, "keys")
    from core import apikeys

    if not role:
        fail("keys create needs --role admin|search")

    def run(services: Any, settings: Settings) -> int:
        try:
            key, token = apikeys.create_key(services.pool, val(role), principal, trusted=trusted, name=name)
        except ValueError as exc:
            fail(str(exc))
        if as_json:
            print(json.dumps({"id": key.id, "role": key.role, "principal": key.principal,
                              "trusted": key.trusted, "name": key.name, "token": token}))
        else:
            who = key.principal or "no principal"
            print(f"created {key.role} key {key.id} ({who}{', trusted' if key.trusted else ''})")
            print(f"token (shown once, store it now): {token}")
        return 0

    finish(with_services(run))


@keys_app.command("list")
def keys_list(
    ctx: typer.Context,
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List keys (never their tokens)."""
    local_only(ctx, "keys")
    from core import apikeys

    def run(services: Any, settings: Settings) -> int:
        rows = apikeys.list_keys(services.pool, include_revoked=include_revoked)
        if as_json:
            print(json.dumps(rows, indent=2))
            return 0
        plain, table = [], []
        for row in rows:
            state_ = f"revoked {row['revoked_at']}" if row["revoked_at"] else f"last used {row['last_used_at'] or 'never'}"
            plain.append(f"{row['id']}  {row['role']:<6} {row['principal'] or '-':<30} "
                         f"{'trusted ' if row['trusted'] else ''}{row['name']}  {state_}")
            table.append([row["id"], row["role"], row["principal"] or "-", "yes" if row["trusted"] else "",
                          row["name"], state_])
        print_table(["ID", "ROLE", "PRINCIPAL", "TRUSTED", "NAME", "STATE"], table, plain)
        print(f"{len(rows)} key(s)")
        return 0

    finish(with_services(run))


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(metavar="ID", help="The key id.")]) -> None:
    """Revoke a key (exit 1 when no live key has that id)."""
    local_only(ctx, "keys")
    from core import apikeys

    def run(services: Any, settings: Settings) -> int:
        if not apikeys.revoke(services.pool, key_id):
            print(f"no live key {key_id!r} (see 'vector-sync keys list')", file=sys.stderr)
            return 1
        print(f"revoked {key_id}")
        return 0

    finish(with_services(run))


# --- search ---------------------------------------------------------------------------------


@app.command()
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to search for.")],
    source: Annotated[list[Source] | None, typer.Option(help="Only this source (repeatable).")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="Only this scope key (repeatable).")] = None,
    as_user: Annotated[str | None, typer.Option(help="Search as this email sees it.")] = None,
    include_restricted: Annotated[bool, typer.Option("--include-restricted", help="Everything, whoever may read it.")] = False,
    top_k: Annotated[int, typer.Option(help="How many results.")] = 10,
    mode: Annotated[Mode, typer.Option(help="hybrid or vector.")] = Mode.hybrid,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the API's body).")] = False,
) -> None:
    """Search the index (the same search as the API).

    As the local operator: public documents, what --as-user may read, or everything with
    --include-restricted. With --url, as the --key (a search key is enough).
    """
    data: dict[str, Any] = {"q": query, "top_k": top_k, "mode": val(mode), "include_restricted": include_restricted}
    for name, value in (("source", val(source)), ("scope", scope), ("as_user", as_user)):
        if value:
            data[name] = value
    remote = remote_of(ctx)
    if remote is not None:
        try:
            body = remote.post("/api/search", data)
        finally:
            remote.close()
    else:
        body = with_services(lambda services, settings: _local_search(services, settings, data))
    if as_json:
        print(json.dumps(body, indent=2, default=str))
        finish(0)
    for n, hit in enumerate(body["results"], start=1):
        flags = " ".join(f for f, on in (("restricted", hit["access_type"] != "public"),
                                         ("STALE", hit["stale"])) if on)
        print(f"{n:>2}. {hit['title'][:90]}  [{hit['source']}/{hit['scope']}] {flags}".rstrip())
        print(f"    {hit['url'] or hit['document_id']}  score {hit['score']:.4f}  as of {hit['as_of'] or '?'}")
    if not body["results"]:
        print(f"no results ({body['access']})")
    finish(0)


def _local_search(services: Any, settings: Settings, data: dict[str, Any]) -> Any:
    import asyncio

    from core import access
    from core import search as core_search
    from core.embeddings import build_embedder

    try:
        query = core_search.parse(data)
        view = access.view_for(None, query.as_user, query.include_restricted)
    except ValueError as exc:
        fail(str(exc))

    async def go() -> dict[str, Any]:
        embedder = build_embedder(settings)
        try:
            return await core_search.search(services, embedder, settings, query, view)
        finally:
            await embedder.aclose()

    try:
        return asyncio.run(go())
    except VectorSyncError as exc:
        fail(f"search failed: {exc}", 1)


# --- dead letters, notion token -------------------------------------------------------------

dead_app = typer.Typer(help="Jobs that exhausted their retries: list them, replay them.", no_args_is_help=True)
app.add_typer(dead_app, name="dead-letters")


def _letters(remote: Remote | None, services: Any) -> list[dict[str, Any]]:
    if remote is not None:
        return list(remote.get("/api/dead-letters")["dead_letters"])
    from core import queue

    return queue.dead_letters(services.broker)


@dead_app.command("list")
def dead_list(ctx: typer.Context) -> None:
    """List the dead letters, newest first, with their documents and last error."""
    remote = remote_of(ctx)

    def run(services: Any, settings: Settings | None) -> int:
        letters = _letters(remote, services)
        plain, table = [], []
        for letter in letters:
            ids = ", ".join(f"{r['source']}:{r['id']}" for r in letter["refs"][:5])
            more = f" (+{len(letter['refs']) - 5})" if len(letter["refs"]) > 5 else ""
            error = " ".join(letter["error"]) if isinstance(letter["error"], list) else str(letter["error"])
            plain.append(f"{letter['message_id']}  retries={letter['retries']}  {ids}{more}  {error}")
            table.append([letter["message_id"], str(letter["retries"]), ids + more, error[:80]])
        print_table(["MESSAGE", "RETRIES", "DOCUMENTS", "ERROR"], table, plain)
        print(f"{len(letters)} dead letter(s)")
        return 0

    finish(_run(remote, run))


@dead_app.command("replay")
def dead_replay(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, typer.Argument(metavar="ID", help="Message ids (default: all).")] = None,
) -> None:
    """Re-enqueue dead letters (all, or the ids given; exit 1 for an id that is not one)."""
    remote = remote_of(ctx)

    def run(services: Any, settings: Settings | None) -> int:
        missing: list[str] = []
        wanted = list(dict.fromkeys(ids or []))
        if wanted:
            known = {letter["message_id"] for letter in _letters(remote, services)}
            missing = [i for i in wanted if i not in known]
            wanted = [i for i in wanted if i in known]
        if ids and not wanted:
            count = 0
        elif remote is not None:
            count = remote.post("/api/dead-letters/replay", {"message_ids": wanted} if ids else {})["replayed"]
        else:
            from core import queue

            count = queue.replay_dead_letters(services.broker, wanted if ids else None)
        print(f"replayed {count} message(s)")
        if missing:
            print(f"no dead letter {', '.join(repr(m) for m in missing)} (see 'vector-sync dead-letters list')",
                  file=sys.stderr)
            return 1
        return 0

    finish(_run(remote, run))


token_app = typer.Typer(help="The Notion webhook verification token.", no_args_is_help=True)
app.add_typer(token_app, name="notion-token")


@token_app.command("clear")
def token_clear(ctx: typer.Context) -> None:
    """Forget a recorded Notion verification token (the next verification request is recorded)."""
    remote = remote_of(ctx)
    if remote is not None:
        try:
            body = remote.call("DELETE", "/api/admin/verification-token/notion")[1]
        finally:
            remote.close()
        print("cleared the recorded notion verification token; the next verification request is recorded"
              if body["cleared"] else "no notion verification token was recorded; nothing to clear")
        finish(0)
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

    finish(with_services(run))


# --- backfill, verify -----------------------------------------------------------------------


@app.command()
def backfill(
    ctx: typer.Context,
    source: SourceArg,
    scope: Annotated[list[str] | None, typer.Option(help="Scope key or name (repeatable; default: all active).")] = None,
    days: Annotated[int | None, typer.Option(min=1, help="Only what changed in the last N days.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Everything (the default).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last unfinished backfill.")] = False,
    sample: Annotated[int, typer.Option(min=0, help="Documents read back from the index to verify.")] = 20,
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for the workers to index what was listed.")] = 1800.0,
    detach: Annotated[bool, typer.Option("--detach", help="With --url: queue it and return.")] = False,
) -> None:
    """Load a source's history scope by scope, resumably, with a live view.

    Per scope and in total: documents, rate, ETA, and "waiting for the rate budget" while the
    source's request budget holds it back; plain lines when not a terminal. With --url the
    deployment's reconciler runs it and this command follows the run.
    """
    from cli.backfill import BackfillArgs, backfill_command, remote_backfill

    if days is not None and everything:
        fail("--days and --all exclude each other")
    args = BackfillArgs(val(source), list(scope or []), days, resume, sample, wait)
    remote = remote_of(ctx)
    if remote is not None:
        if resume:
            fail("--resume works on this machine only; with --url the reconciler resumes backfills itself")
        try:
            finish(remote_backfill(remote, args, detach))
        finally:
            remote.close()
    finish(backfill_command(args))


@app.command()
def verify(
    ctx: typer.Context,
    source: Annotated[Source | None, typer.Argument(help="One source (default: all, plus the index).")] = None,
    scope: Annotated[str | None, typer.Option(help="One scope key or name of SOURCE.")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Enqueue what fixes the drift found.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Audit the index against the sources (drift), and repair.

    Exit 0 clean, 1 drift, 3 incomplete (a listing failed or a scope was busy).
    """
    local_only(ctx, "verify")
    from cli.verifying import VERIFY_USAGE, run_verify

    source = val(source)
    if scope is not None and not source:
        fail("--scope needs SOURCE (e.g. vector-sync verify jira --scope SUBS)", VERIFY_USAGE)
    finish(with_services(lambda services, settings: run_verify(services, settings, source, scope, repair, as_json)))


# --- entry point ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """``vector-sync``: exits with the command's code; usage errors exit 2 with click's message."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="vector-sync", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        code = 130
    except typer.TyperException as exc:  # usage errors (click's, vendored by typer): exit 2
        if isinstance(getattr(exc, "message", None), str):  # pydantic's prefix says nothing
            exc.message = exc.message.replace("Value error, ", "")
        exc.show()
        code = getattr(exc, "exit_code", 2)
    except SettingsError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
