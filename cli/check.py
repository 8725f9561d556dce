"""``vector-sync check SOURCE``: ask the source, now, whether the configured credentials work:
who the token is, what it can see, which OAuth scopes or permissions are missing, and whether
the configured scopes (JIRA_PROJECTS, SLACK_CHANNELS, GITHUB_REPOS) exist for it. The calls are
each API's own identity and listing endpoints (docs/operations.md lists them), so the answer
comes before anyone waits for a poll. Nothing is written anywhere; no database is needed.

Exit 0 usable, 1 a problem found (each printed as ``PROBLEM``), 2 not configured.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from cli.output import is_terminal
from core.errors import VectorSyncError
from core.process import fail
from core.settings import Settings, SourceSettings
from core.sources import build_source

#: Slack bot scopes vector-sync needs, and those that only some features need.
SLACK_REQUIRED = {
    "channels:read": "list public channels",
    "channels:history": "read public channels' messages",
    "users:read": "name message authors",
}
SLACK_OPTIONAL = {
    "groups:read": "list private channels the bot is in",
    "groups:history": "read private channels' messages",
    "channels:join": "join public channels by itself (otherwise invite the bot)",
    "users:read.email": "restrict private channels' documents to their members' emails",
}
#: The most a check lists of one kind (a sample, not an inventory).
SHOWN = 8


@dataclass
class Findings:
    source: str
    lines: list[tuple[str, str]] = field(default_factory=list)  # (kind, text); kind: ok, info, PROBLEM

    def ok(self, text: str) -> None:
        self.lines.append(("ok", text))

    def info(self, text: str) -> None:
        self.lines.append(("info", text))

    def problem(self, text: str) -> None:
        self.lines.append(("PROBLEM", text))

    @property
    def problems(self) -> int:
        return sum(1 for kind, _ in self.lines if kind == "PROBLEM")


def sample(items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def run_check(settings: Settings, source: str, as_json: bool) -> int:
    config = settings.source(source)
    if not config.configured:
        fail(f"{source} is not configured: set its credentials (see docs/configuration.md)")
    findings = asyncio.run(_check(settings, config))
    if as_json:
        print(json.dumps({"source": source, "usable": not findings.problems,
                          "findings": [{"kind": k, "text": t} for k, t in findings.lines]}, indent=2))
    else:
        _print(findings)
    return 1 if findings.problems else 0


def _print(findings: Findings) -> None:
    verdict = (f"{findings.source}: usable" if not findings.problems else
               f"{findings.source}: {findings.problems} problem(s); fix them before the first poll")
    if is_terminal():
        from cli.output import console

        out = console()
        styles = {"ok": "green", "info": "cyan", "PROBLEM": "bold red"}
        for kind, text in findings.lines:
            out.print(f"[{styles[kind]}]{kind:>7}[/] {text}", highlight=False, markup=True)
        out.print(f"[{'green' if not findings.problems else 'bold red'}]{verdict}[/]", markup=True)
        return
    for kind, text in findings.lines:
        print(f"{findings.source}: {kind}: {text}")
    print(verdict)


async def _check(settings: Settings, config: SourceSettings) -> Findings:
    findings = Findings(config.name)
    async with httpx.AsyncClient(timeout=httpx.Timeout(settings.http_timeout, connect=5.0)) as client:
        src: Any = build_source(config, client)
        try:
            await CHECKS[config.name](src, config, findings)
        except VectorSyncError as exc:
            findings.problem(_explain(str(exc), config, getattr(exc, "status", None)))
        except httpx.HTTPError as exc:
            findings.problem(f"cannot reach it: {type(exc).__name__}: {exc}")
    return findings


#: Slack's ``error`` codes for a token that is wrong, revoked or expired.
SLACK_AUTH_ERRORS = ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired")


def _explain(message: str, config: SourceSettings, status: int | None = None) -> str:
    """A failed request; a refused one names the settings to look at."""
    from core.settings import SOURCE_CREDENTIALS

    names = " and ".join(v for v in SOURCE_CREDENTIALS[config.name] if not v.endswith("_URL"))
    if status == 401 or any(code in message for code in SLACK_AUTH_ERRORS):
        return f"the credentials were refused ({message}); check {names}"
    if status == 403:
        return f"the token lacks a permission this call needs ({message}); check what {names} may do"
    return message


# --- per source -----------------------------------------------------------------------------


async def check_jira(src: Any, config: SourceSettings, out: Findings) -> None:
    me = (await src.http.get("/rest/api/3/myself")).json()
    out.ok(f"authenticated as {me.get('displayName') or '?'} <{me.get('emailAddress') or '?'}> "
           f"(account {me.get('accountId') or '?'}) on {config.get('JIRA_URL')}")
    perms = (await src.http.get("/rest/api/3/mypermissions", params={"permissions": "BROWSE_PROJECTS"})).json()
    if not ((perms.get("permissions") or {}).get("BROWSE_PROJECTS") or {}).get("havePermission"):
        out.problem("no 'Browse projects' permission in any project: the token can read no issue "
                    "(ask a Jira admin to add this account to the projects' Browse permission)")
    projects = await src.scopes()
    keys = [s.key for s in projects]
    _visible(out, "project", keys, config, "JIRA_PROJECTS",
             "a typo, or this account may not browse it")


async def check_slack(src: Any, config: SourceSettings, out: Findings) -> None:
    response = await src.http.post("/auth.test")
    body = response.json()
    if not body.get("ok"):
        out.problem(_explain(f"auth.test: {body.get('error')}", config))
        return
    who = f"bot {body.get('user')} ({body.get('user_id')}" + (f", bot id {body['bot_id']}" if body.get("bot_id") else "")
    out.ok(f"authenticated as {who}) in workspace {body.get('team')} ({body.get('team_id')}, {body.get('url')})")
    granted = {s.strip() for s in (response.headers.get("x-oauth-scopes") or "").split(",") if s.strip()}
    if not response.headers.get("x-oauth-scopes"):
        out.info("Slack did not say which scopes the token has (no x-oauth-scopes header)")
    else:
        out.ok(f"token scopes: {', '.join(sorted(granted))}")
        for scope, why in SLACK_REQUIRED.items():
            if scope not in granted:
                out.problem(f"missing scope {scope} (needed to {why}); add it under OAuth & Permissions "
                            "and reinstall the app")
        for scope, why in SLACK_OPTIONAL.items():
            if scope not in granted:
                out.info(f"missing optional scope {scope} (to {why})")
    if "channels:read" in granted or not granted:
        channels = await _slack_channels(src)
        member = [c for c in channels if c.get("is_member")]
        out.ok(f"sees {len(channels)} channel(s), a member of {len(member)}: "
               f"{sample(['#' + str(c.get('name')) for c in channels])}")
        wanted = config.scope_filter()
        if wanted is not None:
            by_name = {str(c.get("name")).lower(): c["id"] for c in channels}
            ids = {c["id"] for c in channels}
            missing = [w for w in wanted if w not in ids and w.lstrip("#").lower() not in by_name]
            for w in missing:
                out.problem(f"SLACK_CHANNELS names {w}, which the bot cannot see (a typo, archived, or a "
                            "private channel the bot was not invited to)")
        if not channels:
            out.problem("the bot sees no channel: invite it to the channels to sync")


async def _slack_channels(src: Any) -> list[dict[str, Any]]:
    """conversations.list without joining anything (the connector joins; a check must not)."""
    channels: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"types": "public_channel,private_channel", "exclude_archived": "true", "limit": 200}
        if cursor:
            params["cursor"] = cursor
        body = (await src.http.get("/conversations.list", params=params)).json()
        if not body.get("ok"):
            raise VectorSyncError(f"conversations.list: {body.get('error')}"
                                  + (f" (needs {body['needed']})" if body.get("needed") else ""))
        channels += body.get("channels") or []
        cursor = (body.get("response_metadata") or {}).get("next_cursor")
        if not cursor:
            return channels


async def check_github(src: Any, config: SourceSettings, out: Findings) -> None:
    response = await src.http.get("/user")
    me = response.json()
    out.ok(f"authenticated as {me.get('login')} ({me.get('name') or me.get('type') or 'user'})")
    header = response.headers.get("x-oauth-scopes")
    if header is None:
        out.info("a fine-grained token (or a GitHub App): permissions are per repository, checked below")
        granted: set[str] | None = None
    else:
        granted = {s.strip() for s in header.split(",") if s.strip()}
        out.ok(f"token scopes: {', '.join(sorted(granted)) or '(none)'}")
        if "repo" not in granted:
            out.info("no 'repo' scope: private repositories are invisible to this token")
    await _github_hook(src, config, out)
    wanted = config.scope_filter()
    if wanted is None:
        repos = [r["full_name"] for r in (await src.http.get("/user/repos", params={"per_page": 100})).json()]
        out.ok(f"sees {len(repos)}{'+' if len(repos) == 100 else ''} repositories: {sample(repos)}")
        if not repos:
            out.problem("the token sees no repository: grant it access to the repositories to sync")
        return
    for name in wanted:
        answer = await src.http.get(f"/repos/{name}")
        if answer.status_code == 404:
            hint = "add the 'repo' scope" if granted is not None and "repo" not in granted else "grant the token access"
            out.problem(f"GITHUB_REPOS names {name}, which the token cannot see (a typo, or private: {hint})")
            continue
        repo = answer.json()
        out.ok(f"{repo.get('full_name')}: {'private' if repo.get('private') else 'public'}, readable")


async def _github_hook(src: Any, config: SourceSettings, out: Findings) -> None:
    """GITHUB_HOOK (gap repair): the token must read the hook's deliveries."""
    hook = config.get("GITHUB_HOOK")
    if not hook:
        out.info("GITHUB_HOOK is not set: no gap repair, a lost webhook waits for the next poll")
        return
    try:
        status = (await src.http.get(f"/{hook}/deliveries", params={"per_page": 1})).status_code
    except VectorSyncError as exc:
        status = getattr(exc, "status", None) or 0
    if status == 200:
        out.ok(f"GITHUB_HOOK {hook}: deliveries readable; failed ones are redelivered every "
               f"{float(config.get('GITHUB_REDELIVERY_INTERVAL') or 60):g}s")
    else:
        out.problem(f"GITHUB_HOOK names {hook}, whose deliveries the token cannot read ({status}: a wrong "
                    f"hook id, or the token lacks admin:org_hook / admin:repo_hook, fine-grained: Webhooks)")


async def check_notion(src: Any, config: SourceSettings, out: Findings) -> None:
    me = (await src.http.get("/v1/users/me")).json()
    bot = me.get("bot") or {}
    workspace = bot.get("workspace_name") or "?"
    out.ok(f"authenticated as integration {me.get('name') or me.get('id')} in workspace {workspace}")
    found = (await src.http.post("/v1/search", json={"page_size": 100})).json()
    results = found.get("results") or []
    titles = [_notion_title(r) for r in results]
    more = "+" if found.get("has_more") else ""
    if not results:
        out.problem("no page or database is shared with the integration: in Notion, open each top "
                    "page to sync, then ... → Connections → add this integration")
    else:
        out.ok(f"sees {len(results)}{more} pages and databases: {sample(titles)}")


def _notion_title(item: dict[str, Any]) -> str:
    for prop in (item.get("properties") or {}).values():
        if isinstance(prop, dict) and prop.get("type") == "title":
            return "".join(t.get("plain_text", "") for t in prop.get("title") or []) or item.get("id", "?")
    title = item.get("title")
    if isinstance(title, list):
        return "".join(t.get("plain_text", "") for t in title) or item.get("id", "?")
    return str(item.get("id", "?"))


async def check_tempo(src: Any, config: SourceSettings, out: Findings) -> None:
    # Tempo has no "who am I" endpoint: the worklog listing the connector uses is the test.
    body = (await src.http.get("/4/worklogs", params={"limit": 1})).json()
    count = (body.get("metadata") or {}).get("count", len(body.get("results") or []))
    out.ok(f"the token reads worklogs ({'at least one' if count else 'none yet'} visible)")
    if not config.get("JIRA_URL"):
        out.info("JIRA_URL is not set: worklogs are indexed without their Jira issue's link")
        return
    me = (await src.jira.get("/rest/api/3/myself")).json()
    out.ok(f"Jira look-ups as {me.get('displayName') or '?'} on {config.get('JIRA_URL')}")


async def check_fireflies(src: Any, config: SourceSettings, out: Findings) -> None:
    data = await src._query("query { user { user_id email name is_admin num_transcripts } }", {})
    user = (data or {}).get("user") or {}
    out.ok(f"authenticated as {user.get('name') or '?'} <{user.get('email') or '?'}> "
           f"({'admin' if user.get('is_admin') else 'member'}, {user.get('num_transcripts', '?')} transcripts)")
    listed = await src._query("query { transcripts(limit: 1) { id } }", {})
    if not (listed or {}).get("transcripts"):
        out.info("no transcript is visible yet (meetings appear once Fireflies has processed them)")
    else:
        out.ok("transcripts are readable")


def _visible(out: Findings, noun: str, keys: list[str], config: SourceSettings, var: str, why: str) -> None:
    out.ok(f"sees {len(keys)} {noun}(s): {sample(keys)}")
    if not keys:
        out.problem(f"the token sees no {noun}: nothing would be synced")
    wanted = config.scope_filter()
    for key in wanted or []:
        if key not in keys:
            out.problem(f"{var} names {key}, which the token cannot see ({why})")


CHECKS: dict[str, Callable[[Any, SourceSettings, Findings], Awaitable[None]]] = {
    "jira": check_jira, "slack": check_slack, "github": check_github, "notion": check_notion,
    "tempo": check_tempo, "fireflies": check_fireflies,
}
