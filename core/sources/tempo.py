"""Tempo (API v4) connector: worklogs, polled only (Tempo has no webhooks).

One account scope. ``changes`` asks ``GET /4/worklogs?updatedFrom=<since>`` (the reconciler has
already taken its overlap off ``since``), or, for a backfill (``since`` None), the whole
``from``/``to`` date range, and follows ``metadata.next`` until it is absent; the checkpoint is the
next URL. Listings return whole Documents in ``Ref.document``, so workers need not ask Tempo
(5 requests/s) a second time.

v4 gives an issue *id* and an author accountId only. Each issue id is resolved to key, summary and
project through Jira's ``POST /rest/api/3/issue/bulkfetch`` (at most 100 per call, cached in
memory for the life of the connector). A worklog whose description names an issue key
(``SUBS-12``) is attributed to that issue when Jira knows it: people log time on a catch-all issue
and say in the text what they worked on. Only worklogs whose (attributed) project is an active
Jira scope are emitted; the others are counted in ``stats`` and logged, never silently dropped.

Deletions: Tempo has no feed of deleted worklogs. ``fetch`` answers Gone on 404 (and for a
worklog now on an inactive project); ``live_ids`` lists the ids in a recent startDate window
(``live_days``, default 60) — deletions of older worklogs are caught only by a full re-list.
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import httpx

from core.documents import Document, Gone, Ref
from core.errors import NotConfigured, PermanentSourceError, TransientSourceError
from core.http import Limiter, SourceHTTP
from core.ratelimit import RedisRateLimiter
from core.settings import DEFAULT_RATE_LIMIT, SourceSettings, parse_rate
from core.sources.base import Page, Scope, SourceContext, WebhookResult

log = logging.getLogger(__name__)

NAME = "tempo"
SCOPE = Scope(NAME, "account", "Tempo account")
#: Worklogs per page: Tempo's maximum (5000). A page is a few megabytes at most, and one
#: request instead of five matters more under Tempo's 5 requests/s (docs/sources/tempo.md).
PAGE_SIZE = 5000
#: Issues per Jira bulkfetch call (Jira's maximum).
BULK_MAX = 100
#: Where a backfill starts when no date is given.
BACKFILL_FROM = date(2000, 1, 1)
#: Days of startDate ``live_ids`` covers by default.
LIVE_DAYS = 60
ISSUE_KEY = re.compile(r"(?<![A-Za-z0-9])([A-Z][A-Z0-9]+-\d+)(?![A-Za-z0-9])")


@dataclass(frozen=True)
class Issue:
    """What Jira says about one issue: enough to title and file a worklog."""

    id: str
    key: str
    summary: str
    project_key: str
    project_name: str = ""


def build(
    settings: SourceSettings,
    client: httpx.AsyncClient,
    limiter: Limiter | None = None,
    context: SourceContext | None = None,
    *,
    jira_limiter: Limiter | None = None,
    live_days: int | None = None,
) -> TempoSource:
    # The reconciler prunes every stored worklog that live_ids does not list, so its listing
    # must be complete: a full re-list costs ~3 requests per 12,000 worklogs at 5,000 a page.
    # A recent window (live_days) is only safe for callers that prune within that window.
    return TempoSource(settings, client, limiter, context, jira_limiter=jira_limiter,
                       live_days=live_days)


class TempoSource:
    name = NAME
    pushes = False

    def __init__(
        self,
        settings: SourceSettings,
        client: httpx.AsyncClient,
        limiter: Limiter | None = None,
        context: SourceContext | None = None,
        *,
        jira_limiter: Limiter | None = None,
        live_days: int | None = LIVE_DAYS,
    ) -> None:
        self.context = context
        self.live_days = live_days
        self.page_size = PAGE_SIZE
        self.base_url = settings.get("TEMPO_API_URL").rstrip("/")
        self.jira_url = settings.get("JIRA_URL").rstrip("/")
        self.http = SourceHTTP(
            NAME, client, base_url=self.base_url, limiter=limiter,
            headers={"Authorization": f"Bearer {settings.secret('TEMPO_API_TOKEN')}"},
        )
        self.jira = SourceHTTP(
            "jira", client, base_url=self.jira_url,
            auth=(settings.get("JIRA_EMAIL"), settings.secret("JIRA_API_TOKEN")),
            limiter=jira_limiter or _jira_budget(limiter),
        )
        self._issues: dict[str, Issue | None] = {}  # id or key → Issue (None: Jira has none)
        #: Worklogs left out, by reason ("inactive_project", "unresolved_issue").
        self.stats: collections.Counter[str] = collections.Counter()

    # --- polling ----------------------------------------------------------------------------
    async def scopes(self) -> list[Scope]:
        return [SCOPE]

    async def changes(
        self, scope: Scope, since: float | None, checkpoint: str | None
    ) -> AsyncIterator[Page]:
        """Pages of whole worklog Documents updated at or after ``since`` (epoch s)."""
        url: str | None = self._checked(checkpoint) if checkpoint else self._first_url(since)
        while url:
            body = await self._get_json(url)
            worklogs = body.get("results") or []
            refs = [Ref(NAME, doc.id, scope.key, event_at=doc.updated_at, document=doc)
                    for doc in await self._documents(worklogs)]
            url = (body.get("metadata") or {}).get("next")
            stamps = [_epoch(w.get("updatedAt")) for w in worklogs]
            yield Page(refs, url, max((s for s in stamps if s is not None), default=None))

    async def live_ids(self, scope: Scope) -> AsyncIterator[str]:
        """Ids of the worklogs ``changes`` would emit, with a startDate in the last ``live_days``
        (all dates when None). Worklogs of inactive projects are left out, so pruning removes
        them once their project is deactivated."""
        start = BACKFILL_FROM if self.live_days is None else _today() - timedelta(days=self.live_days)
        url: str | None = self._list_url({"from": start.isoformat(), "to": _far_future()})
        while url:
            body = await self._get_json(url)
            for doc in await self._documents(body.get("results") or []):
                yield doc.id
            url = (body.get("metadata") or {}).get("next")

    async def fetch(self, ref: Ref) -> Document | Gone:
        response = await self.http.get(f"/4/worklogs/{ref.id}")
        if response.status_code in (404, 410):
            return Gone(NAME, ref.id)
        worklog = _json(response)
        await self._resolve(_wanted([worklog]))
        issue = self._issue_for(worklog)
        if issue is None:
            raise PermanentSourceError(NAME, f"worklog {ref.id}: its Jira issue is not visible")
        active = await self._active_projects()
        if active is not None and issue.project_key not in active:
            return Gone(NAME, ref.id)  # its project is no longer synced: remove it
        return _to_document(worklog, issue, self.jira_url)

    # --- Tempo does not push ----------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        raise NotConfigured("tempo has no webhooks")

    def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        raise NotConfigured("tempo has no webhooks")

    # --- helpers ----------------------------------------------------------------------------
    def _first_url(self, since: float | None) -> str:
        if since is None:
            return self._list_url({"from": BACKFILL_FROM.isoformat(), "to": _far_future()})
        return self._list_url({"updatedFrom": _stamp(since)})

    def _list_url(self, params: dict[str, str]) -> str:
        return f"{self.base_url}/4/worklogs?{urlencode({**params, 'limit': self.page_size})}"

    def _checked(self, url: str) -> str:
        # A checkpoint is a URL we stored; never send the token anywhere but Tempo.
        if not url.startswith(f"{self.base_url}/"):
            raise PermanentSourceError(NAME, "checkpoint is not a Tempo URL; restart the listing")
        return url

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self.http.get(self._checked(url))
        if response.status_code >= 400:
            raise PermanentSourceError(NAME, f"listing failed: {response.status_code}",
                                       response.status_code)
        return _json(response)

    async def _documents(self, worklogs: list[dict[str, Any]]) -> list[Document]:
        await self._resolve(_wanted(worklogs))
        active = await self._active_projects()
        docs = []
        for worklog in worklogs:
            issue = self._issue_for(worklog)
            if issue is None:
                self._skip("unresolved_issue", worklog)
            elif active is not None and issue.project_key not in active:
                self._skip("inactive_project", worklog)
            else:
                docs.append(_to_document(worklog, issue, self.jira_url))
        return docs

    def _skip(self, reason: str, worklog: Mapping[str, Any]) -> None:
        self.stats[reason] += 1
        log.info("tempo: skipped worklog %s (%s)", worklog.get("tempoWorklogId"), reason)

    async def _active_projects(self) -> set[str] | None:
        """Active Jira project keys; None (no filter) when there is no context to ask."""
        if self.context is None:
            return None
        return {scope.key for scope in await self.context.active_scopes("jira")}

    def _issue_for(self, worklog: Mapping[str, Any]) -> Issue | None:
        named = _named_key(worklog)
        if named and self._issues.get(named):
            return self._issues[named]
        return self._issues.get(str((worklog.get("issue") or {}).get("id")))

    async def _resolve(self, wanted: set[str]) -> None:
        """Fill the cache for ids/keys not seen yet, ≤100 per bulkfetch call."""
        missing = sorted(w for w in wanted if w not in self._issues)
        for start in range(0, len(missing), BULK_MAX):
            batch = missing[start: start + BULK_MAX]
            response = await self.jira.post("/rest/api/3/issue/bulkfetch", json={
                "issueIdsOrKeys": batch, "fields": ["summary", "project"]})
            if response.status_code >= 400:
                raise TransientSourceError("jira", f"bulkfetch failed: {response.status_code}",
                                           response.status_code)
            for raw in _json(response).get("issues") or []:
                issue = _issue(raw)
                self._issues[issue.id] = self._issues[issue.key] = issue
            for asked in batch:
                # Neither returned nor reported: Jira has no such issue (or we may not see it).
                self._issues.setdefault(asked, None)


# --- pure functions -------------------------------------------------------------------------
def _to_document(worklog: Mapping[str, Any], issue: Issue, jira_url: str = "") -> Document:
    """One worklog as a Document: "<author> logged 1h 30m on KEY-12 (<summary>) on <date>: …"."""
    seconds = int(worklog.get("timeSpentSeconds") or 0)
    author = str((worklog.get("author") or {}).get("accountId") or "")
    day = str(worklog.get("startDate") or "")
    description = " ".join(str(worklog.get("description") or "").split())
    spent = format_duration(seconds)
    text = f"{author} logged {spent} on {issue.key} ({issue.summary}) on {day}"
    text += f": {description}" if description else "."
    return Document(
        source=NAME,
        id=str(worklog["tempoWorklogId"]),
        scope=SCOPE.key,
        title=f"{issue.key} worklog: {spent} on {day}",
        text=text,
        updated_at=_epoch(worklog.get("updatedAt")) or 0.0,
        url=f"{jira_url}/browse/{issue.key}" if jira_url else str(worklog.get("self") or ""),
        author=author,
        metadata={
            "issue_key": issue.key,
            "issue_id": issue.id,
            "issue_summary": issue.summary,
            "project_key": issue.project_key,
            "seconds": seconds,
            "billable_seconds": int(worklog.get("billableSeconds") or 0),
            "date": day,
            "author_account_id": author,
            "logged_issue_id": str((worklog.get("issue") or {}).get("id") or ""),
        },
    )


def format_duration(seconds: int) -> str:
    """5400 → "1h 30m", 3600 → "1h", 900 → "15m", 45 → "45s"."""
    if seconds < 60:
        return f"{seconds}s"
    hours, minutes = divmod(seconds // 60, 60)
    parts = [f"{hours}h"] if hours else []
    if minutes:
        parts.append(f"{minutes}m")
    return " ".join(parts)


def _issue(raw: Mapping[str, Any]) -> Issue:
    fields = raw.get("fields") or {}
    project = fields.get("project") or {}
    return Issue(id=str(raw["id"]), key=str(raw["key"]), summary=str(fields.get("summary") or ""),
                 project_key=str(project.get("key") or ""), project_name=str(project.get("name") or ""))


def _named_key(worklog: Mapping[str, Any]) -> str | None:
    match = ISSUE_KEY.search(str(worklog.get("description") or ""))
    return match.group(1) if match else None


def _wanted(worklogs: list[Mapping[str, Any]]) -> set[str]:
    wanted = {str((w.get("issue") or {}).get("id")) for w in worklogs if (w.get("issue") or {}).get("id")}
    return wanted | {k for k in map(_named_key, worklogs) if k}


def _stamp(epoch: float) -> str:
    """``updatedFrom``'s format: yyyy-MM-dd'T'HH:mm:ss'Z', floored to the second (inclusive)."""
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(raw: Any) -> float | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _far_future() -> str:
    # Worklogs may be planned ahead; a year covers what teams log in advance.
    return (_today() + timedelta(days=366)).isoformat()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise TransientSourceError(NAME, f"non-JSON answer ({response.status_code})",
                                   response.status_code) from None
    if not isinstance(body, dict):
        raise TransientSourceError(NAME, "answer is not a JSON object", response.status_code)
    return body


def _jira_budget(limiter: Limiter | None) -> Limiter | None:
    """Count issue lookups against Jira's shared budget when Tempo's is in Redis too."""
    if isinstance(limiter, RedisRateLimiter):
        return RedisRateLimiter(limiter.redis, "jira", parse_rate(DEFAULT_RATE_LIMIT["jira"]),
                                max_wait=limiter.max_wait)
    return None


def _today() -> date:
    """Today in UTC, so windows do not depend on the machine's time zone."""
    return datetime.now(timezone.utc).date()
