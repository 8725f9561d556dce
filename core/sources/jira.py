"""Jira Cloud connector: one document per issue (id-stable across moves), scope = project key.

Listing follows the pattern that survives Jira's enhanced search (research/saas-apis.md §1.2)
with the fewest requests (docs/sources/jira.md has the arithmetic):

- a full listing (``since`` None, a backfill or a first pass) pages issue ids with
  ``POST /rest/api/3/search/jql`` at the id-only maximum (5,000 a page, ``nextPageToken``, no
  ``total``), then ``POST /rest/api/3/issue/bulkfetch`` (≤100 ids) for the full issues:
  ``ceil(n/5000) + ceil(n/100)`` requests. A backfill lists many projects in one JQL
  (``changes_many``), so bulkfetches are full across project boundaries.
- an incremental window (``updated >= since``) asks search for the fields themselves, 100 a
  page (the cap for anything beyond id/key): ``max(1, ceil(n/100))`` requests, one for the usual
  small window instead of a search and a bulkfetch.

Either way each page of a listing carries whole documents, so workers need not fetch them
again. An issue whose embedded ``comment`` field says it holds fewer comments than ``total``
gets the rest from ``GET /issue/{id}/comment``, so the text never drops comments silently.

Webhooks are admin webhooks with a secret: ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the
raw body>``; ``X-Atlassian-Webhook-Identifier`` is stable across retries (the dedupe key).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from typing import Any

import httpx

from core.documents import Document, Gone, Ref
from core.errors import (
    MalformedWebhook,
    NotConfigured,
    PermanentSourceError,
    TransientSourceError,
)
from core.http import Limiter, SourceHTTP
from core.settings import SourceSettings
from core.sources.base import Page, Scope, SourceContext, WebhookResult
from core.sources.webhooks import check_sha256_signature, header, ident, load_object, number, obj, text

NAME = "jira"
log = logging.getLogger(__name__)
#: Fields the connector reads; asking for fewer keeps bulkfetch responses small.
FIELDS = ["summary", "description", "comment", "status", "assignee", "reporter", "labels",
          "priority", "issuetype", "project", "created", "updated"]
#: Ids per search page when only ``id`` is asked for: Jira's id/key-only maximum.
IDS_PAGE = 5000
#: Ids per search page in ``live_ids`` (the same maximum).
LIVE_IDS_PAGE = IDS_PAGE
#: Issues per bulkfetch: Jira's maximum.
BULKFETCH_PAGE = 100
#: Issues per search page when fields are asked for: Jira's cap beyond id/key (it may answer
#: with fewer; the listing follows nextPageToken whatever the page size).
FIELDS_PAGE = 100
#: Projects per JQL in ``changes_many`` (keeps the JQL short; 72 projects fit in one).
MANY_PROJECTS = 100
#: Comments per ``GET /issue/{id}/comment`` page (Jira's documented maximum).
COMMENTS_PAGE = 5000
PROJECTS_PAGE = 50

SYNC_EVENTS = {"jira:issue_created", "jira:issue_updated", "comment_created", "comment_updated",
               "comment_deleted"}
SCOPE_EVENTS = {"project_deleted": "deleted", "project_soft_deleted": "deleted",
                "project_archived": "archived"}


# --- pure normalisation ---------------------------------------------------------------------


def parse_time(raw: str | None) -> float:
    """Jira's ``2024-01-01T10:00:00.000+0000`` (any offset) as epoch seconds; 0.0 if absent."""
    if not raw:
        return 0.0
    return datetime.strptime(raw, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def adf_to_text(node: Any, paragraph_sep: str = "\n\n") -> str:
    """Atlassian Document Format → plain text; blocks joined by ``paragraph_sep``.

    Accepts a plain string too (API v2 and some webhooks carry wiki text, not ADF).
    """
    if node is None:
        return ""
    if isinstance(node, str):
        return node.strip()
    blocks = _adf_blocks(node)
    return paragraph_sep.join(b for b in (b.strip() for b in blocks) if b)


_INLINE_CONTAINERS = {"paragraph", "heading", "codeBlock"}


def _adf_blocks(node: Mapping[str, Any]) -> list[str]:
    kind = node.get("type")
    if kind in _INLINE_CONTAINERS:
        return [_adf_inline(node.get("content") or [])]
    if kind == "listItem":
        inner = [b for child in node.get("content") or [] for b in _adf_blocks(child)]
        return ["- " + " ".join(inner)] if inner else []
    if kind == "tableRow":
        cells = [" ".join(_adf_blocks(cell)) for cell in node.get("content") or []]
        return [" | ".join(c for c in cells if c)]
    if kind in ("text", "mention", "emoji", "hardBreak", "inlineCard", "date", "status"):
        return [_adf_inline([node])]
    blocks: list[str] = []
    for child in node.get("content") or []:
        if isinstance(child, Mapping):
            blocks.extend(_adf_blocks(child))
    if kind in ("bulletList", "orderedList"):
        return ["\n".join(blocks)]  # a list stays one paragraph
    return blocks


def _adf_inline(nodes: list[Any]) -> str:
    out: list[str] = []
    for node in nodes:
        if not isinstance(node, Mapping):
            continue
        kind, attrs = node.get("type"), node.get("attrs") or {}
        if kind == "text":
            out.append(str(node.get("text", "")))
        elif kind == "hardBreak":
            out.append("\n")
        elif kind == "mention":
            out.append(str(attrs.get("text") or ""))
        elif kind == "emoji":
            out.append(str(attrs.get("text") or attrs.get("shortName") or ""))
        elif kind in ("inlineCard", "blockCard"):
            out.append(str(attrs.get("url") or ""))
        elif kind == "status":
            out.append(str(attrs.get("text") or ""))
        elif kind == "date" and str(attrs.get("timestamp", "")).isdigit():
            out.append(_day(int(attrs["timestamp"]) / 1000))
        else:
            out.append(_adf_inline(node.get("content") or []))
    return "".join(out)


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d")


def _minute(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _name(user: Any) -> str:
    return str(user.get("displayName") or "") if isinstance(user, Mapping) else ""


def _named(value: Any) -> str:
    return str(value.get("name") or "") if isinstance(value, Mapping) else ""


def comment_paragraph(comment: Mapping[str, Any]) -> str:
    """One comment as one paragraph (single newlines inside), with who and when."""
    who = _name(comment.get("author")) or "Unknown"
    when = _minute(parse_time(comment.get("created")))
    body = adf_to_text(comment.get("body"), paragraph_sep="\n")
    edited = " (edited)" if comment.get("updated") and comment.get("updated") != comment.get("created") else ""
    return f"Comment by {who} on {when}{edited}:\n{body}"


def to_document(raw: Mapping[str, Any], base_url: str) -> Document:
    """A Jira issue bean (with FIELDS) as a Document; pure.

    Text: key and summary, a line on type/project/reporter, the description, then each comment
    as its own paragraph. Status, assignee and the like change often and live in metadata, so a
    transition re-upserts metadata without re-embedding.
    """
    fields = raw.get("fields") or {}
    key = str(raw.get("key") or "")
    summary = str(fields.get("summary") or "")
    project = fields.get("project") or {}
    reporter = _name(fields.get("reporter"))
    created = parse_time(fields.get("created"))
    issue_type = _named(fields.get("issuetype"))
    intro = f"{issue_type or 'Issue'} in project {project.get('name') or project.get('key', '')}"
    if reporter:
        intro += f", reported by {reporter}"
    if created:
        intro += f" on {_day(created)}"
    comments = (fields.get("comment") or {}).get("comments") or []
    parts = [f"{key}: {summary}", intro + ".", adf_to_text(fields.get("description"))]
    parts += [comment_paragraph(c) for c in comments]
    metadata: dict[str, Any] = {
        "key": key,
        "project": str(project.get("key") or ""),
        "project_name": str(project.get("name") or ""),
        "status": _named(fields.get("status")),
        "assignee": _name(fields.get("assignee")),
        "reporter": reporter,
        "labels": [str(label) for label in fields.get("labels") or []],
        "priority": _named(fields.get("priority")),
        "issue_type": issue_type,
        "created_at": created,
        "comments": len(comments),
    }
    return Document(
        source=NAME,
        id=str(raw["id"]),
        scope=metadata["project"],
        title=f"{key}: {summary}" if key else summary,
        text="\n\n".join(p for p in parts if p),
        updated_at=parse_time(fields.get("updated")),
        url=f"{base_url.rstrip('/')}/browse/{key}" if key else "",
        author=reporter,
        metadata=metadata,
    )


def jql_for(scope_key: str | list[str], since: float | None = None, order: bool = True) -> str:
    """``project = "KEY" [AND updated >= <epoch ms>] [ORDER BY updated ASC]``; a list of keys
    gives ``project in ("A", "B")``.

    Epoch milliseconds sidestep the account time zone that quoted JQL dates are read in.
    """
    if isinstance(scope_key, list):
        jql = "project in (" + ", ".join(f'"{_quote(k)}"' for k in scope_key) + ")"
    else:
        jql = f'project = "{_quote(scope_key)}"'
    if since is not None:
        jql += f" AND updated >= {int(since * 1000)}"
    return jql + (" ORDER BY updated ASC" if order else "")


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def reset_after(response: httpx.Response) -> float | None:
    """Seconds until Jira's ``X-RateLimit-Reset`` when a 429 lacks ``Retry-After``."""
    if response.status_code != 429 or "retry-after" in response.headers:
        return None
    raw = response.headers.get("x-ratelimit-reset")
    if not raw:
        return None
    for fmt in ("%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            when = datetime.strptime(raw, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        return max(1.0, when.timestamp() - datetime.now(timezone.utc).timestamp())
    return None


# --- the connector --------------------------------------------------------------------------


class JiraSource:
    name = NAME
    pushes = True
    #: Scopes ``changes_many`` takes at once (a backfill batches its projects by this many).
    MANY_SCOPES = MANY_PROJECTS

    def __init__(self, settings: SourceSettings, client: httpx.AsyncClient,
                 limiter: Limiter | None = None, context: SourceContext | None = None) -> None:
        self.settings = settings
        self.base_url = settings.get("JIRA_URL").rstrip("/")
        self.context = context
        self.http = SourceHTTP(
            NAME, client, base_url=self.base_url,
            auth=(settings.get("JIRA_EMAIL"), str(settings.secret("JIRA_API_TOKEN"))),
            headers={"Accept": "application/json"}, limiter=limiter, reset_after=reset_after,
        )

    # --- polling ----------------------------------------------------------------------------
    async def scopes(self) -> list[Scope]:
        scopes: list[Scope] = []
        start = 0
        while True:
            response = await self.http.get("/rest/api/3/project/search",
                                            params={"startAt": start, "maxResults": PROJECTS_PAGE})
            body = self._json(response, "project search")
            values = body.get("values") or []
            scopes += [Scope(NAME, str(p["key"]), str(p.get("name") or p["key"])) for p in values]
            if body.get("isLast", True) or not values:
                return scopes
            start += len(values)

    async def changes(self, scope: Scope, since: float | None,
                      checkpoint: str | None) -> AsyncIterator[Page]:
        jql = jql_for(scope.key, since)
        pages = self._full_listing(jql, checkpoint) if since is None else self._window(jql, checkpoint)
        async for page in pages:
            yield page

    async def changes_many(self, scopes: list[Scope], since: float | None,
                           checkpoint: str | None) -> AsyncIterator[Page]:
        """``changes`` for several projects in one listing (a backfill's): one JQL over all of
        them, so search pages and bulkfetches are full across project boundaries. Each ref
        carries its own project as its scope. At most ``MANY_PROJECTS`` keys."""
        if not scopes or len(scopes) > MANY_PROJECTS:
            raise ValueError(f"changes_many takes 1 to {MANY_PROJECTS} projects, not {len(scopes)}")
        async for page in self._full_listing(jql_for([s.key for s in scopes], since), checkpoint):
            yield page

    async def _window(self, jql: str, checkpoint: str | None) -> AsyncIterator[Page]:
        """Search pages that carry the fields themselves: one request per page of ≤100."""
        token = checkpoint
        while True:
            body, token = await self._search_resuming(jql, token, checkpoint, FIELDS_PAGE, FIELDS)
            checkpoint = None
            docs = [to_document(issue, self.base_url) for issue in body.get("issues") or []]
            docs = await self._complete_comments(docs, body.get("issues") or [])
            token = body.get("nextPageToken")
            yield _page(docs, token)
            if not token:
                return

    async def _full_listing(self, jql: str, checkpoint: str | None) -> AsyncIterator[Page]:
        """Id-only search pages of up to 5,000, each bulkfetched 100 at a time; one Page per
        bulkfetch. The checkpoint after a page inside a search page names that search page's
        own token and how far into it the listing got (the last id too, so an id page that
        shifted meanwhile resumes after that id, not after a count)."""
        token, skip, last = _decode_checkpoint(checkpoint)
        while True:
            body, used = await self._search_resuming(jql, token, checkpoint, IDS_PAGE, ["id"])
            if used != token:  # the saved token was refused: listing from the start
                skip, last = 0, None
            token, checkpoint = used, None
            ids = [str(issue["id"]) for issue in body.get("issues") or []]
            following = body.get("nextPageToken")
            start = min(skip, len(ids))
            if last is not None and last in ids:
                start = ids.index(last) + 1
            skip, last = 0, None
            if start >= len(ids):
                yield Page(refs=[], checkpoint=following)
            for at in range(start, len(ids), BULKFETCH_PAGE):
                batch = ids[at : at + BULKFETCH_PAGE]
                docs = await self._bulkfetch(batch)
                end = at + len(batch)
                resume = following if end >= len(ids) else _encode_checkpoint(token, end, batch[-1])
                yield _page(docs, resume)
            if not following:
                return
            token = following

    async def _search_resuming(self, jql: str, token: str | None, resumed: str | None, size: int,
                               fields: list[str]) -> tuple[dict[str, Any], str | None]:
        """One search page; returns it and the token it was asked with. Page tokens expire
        (~7 days): a refused token that came from a saved checkpoint restarts the listing, which
        is idempotent, instead of failing the scope forever."""
        try:
            return await self._search(jql, token, size, fields), token
        except PermanentSourceError as exc:
            if not resumed or not token or exc.status != 400:
                raise
            log.warning("jira: checkpoint refused (%s); listing from the start", exc.detail[:120])
            return await self._search(jql, None, size, fields), None

    async def live_ids(self, scope: Scope) -> AsyncIterator[str]:
        jql = jql_for(scope.key, order=False)
        token: str | None = None
        while True:
            body = await self._search(jql, token, LIVE_IDS_PAGE)
            for issue in body.get("issues") or []:
                yield str(issue["id"])
            token = body.get("nextPageToken")
            if not token:
                return

    async def fetch(self, ref: Ref) -> Document | Gone:
        response = await self.http.get(f"/rest/api/3/issue/{ref.id}",
                                       params={"fields": ",".join(FIELDS)})
        if response.status_code == 404:
            return Gone(NAME, ref.id)
        return to_document(self._json(response, f"issue {ref.id}"), self.base_url)

    async def _search(self, jql: str, token: str | None, max_results: int,
                      fields: list[str] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"jql": jql, "fields": fields or ["id"], "maxResults": max_results}
        if token:
            payload["nextPageToken"] = token
        response = await self.http.post("/rest/api/3/search/jql", json=payload)
        return self._json(response, "search")

    async def _bulkfetch(self, ids: list[str]) -> list[Document]:
        """Full issues for ``ids``; an id Jira leaves out was deleted meanwhile (pruning's job)."""
        docs: list[Document] = []
        for start in range(0, len(ids), BULKFETCH_PAGE):
            batch = ids[start : start + BULKFETCH_PAGE]
            response = await self.http.post("/rest/api/3/issue/bulkfetch",
                                            json={"issueIdsOrKeys": batch, "fields": FIELDS})
            body = self._json(response, "bulkfetch")
            if body.get("issueErrors"):
                # Jira reports retriable per-issue failures here; never drop them silently.
                raise TransientSourceError(NAME, f"bulkfetch issueErrors: {str(body['issueErrors'])[:300]}")
            issues = body.get("issues") or []
            docs += await self._complete_comments([to_document(i, self.base_url) for i in issues], issues)
        return docs

    async def _complete_comments(self, docs: list[Document], issues: list[Any]) -> list[Document]:
        """Re-read the issues whose embedded ``comment`` field holds fewer comments than its
        ``total`` (Jira may cut the embedded list short) with every comment, paged from
        ``GET /issue/{id}/comment``. Costs nothing when every list is whole."""
        out: list[Document] = []
        for doc, issue in zip(docs, issues):
            field = ((issue.get("fields") or {}).get("comment") or {}) if isinstance(issue, Mapping) else {}
            held = field.get("comments") or []
            total = field.get("total")
            if not isinstance(total, int) or total <= len(held):
                out.append(doc)
                continue
            comments = await self._all_comments(str(issue["id"]))
            whole = {**issue, "fields": {**issue["fields"], "comment": {
                "comments": comments, "total": len(comments), "maxResults": len(comments), "startAt": 0}}}
            out.append(to_document(whole, self.base_url))
        return out

    async def _all_comments(self, issue_id: str) -> list[Any]:
        comments: list[Any] = []
        while True:
            response = await self.http.get(f"/rest/api/3/issue/{issue_id}/comment",
                                           params={"startAt": len(comments), "maxResults": COMMENTS_PAGE,
                                                   "orderBy": "created"})
            body = self._json(response, f"comments of issue {issue_id}")
            page = body.get("comments") or []
            comments += page
            total = body.get("total")
            if not page or not isinstance(total, int) or len(comments) >= total:
                return comments

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 400:  # 404/410 pass through SourceHTTP; here they are errors
            raise TransientSourceError(NAME, f"{what}: {response.status_code} {response.text[:200]}",
                                       response.status_code)
        try:
            body = response.json()
        except ValueError as exc:
            raise TransientSourceError(NAME, f"{what}: response is not JSON") from exc
        if not isinstance(body, dict):
            raise TransientSourceError(NAME, f"{what}: unexpected response shape")
        return body

    # --- webhooks ---------------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        secret = str(self.settings.secret("JIRA_WEBHOOK_SECRET"))
        if not secret:
            raise NotConfigured("JIRA_WEBHOOK_SECRET is not set; Jira webhooks are refused")
        check_sha256_signature(headers, body, secret=secret, header_name="X-Hub-Signature", source=NAME)

    def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        payload = load_object(body, NAME)
        delivery = header(headers, "X-Atlassian-Webhook-Identifier") or None
        event = text(payload, "webhookEvent", NAME)
        stamp = number(payload, "timestamp", NAME)
        event_at = stamp / 1000 if stamp is not None else None
        if event in SCOPE_EVENTS:
            key = text(obj(payload, "project", NAME), "key", NAME, "project.key")
            if not key:
                raise MalformedWebhook(f"{event} without project.key")
            return WebhookResult(delivery_id=delivery, scope_events=[(SCOPE_EVENTS[event], key)])
        if event not in SYNC_EVENTS and event != "jira:issue_deleted":
            return WebhookResult(delivery_id=delivery, note=f"ignored Jira event {event or '(none)'}")
        issue = obj(payload, "issue", NAME)
        issue_id = ident(issue, "id", NAME, "issue.id")
        if event.startswith("comment_") and not issue_id:
            # A comment event names its issue in comment.self too (…/issue/{id}/comment/{id}),
            # e.g. a comment_deleted cascading from a deleted issue.
            issue = _issue_of_comment(obj(payload, "comment", NAME)) or {}
            issue_id = ident(issue, "id", NAME, "issue.id")
        if not issue_id:
            raise MalformedWebhook(f"{event} without issue.id")
        fields = obj(issue, "fields", NAME, "issue.fields")
        project = text(obj(fields, "project", NAME, "issue.fields.project"), "key", NAME, "issue.fields.project.key")
        op = "delete" if event == "jira:issue_deleted" else "sync"
        ref = Ref(NAME, issue_id, project, op, event_at)
        if event in ("jira:issue_created", "jira:issue_updated") and event_at is not None and whole_issue(issue):
            ref = dataclasses.replace(ref, payload={"issue": dict(issue)})
        return WebhookResult(refs=[ref], delivery_id=delivery)

    async def from_payload(self, ref: Ref) -> Document | Gone:
        """The document from the issue its webhook carried: no request at all. A payload this
        cannot read is fetched instead."""
        issue = (ref.payload or {}).get("issue")
        if not isinstance(issue, Mapping) or not whole_issue(issue):
            return await self.fetch(ref)
        try:
            return to_document(issue, self.base_url)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.info("jira: %s payload not usable (%s: %s); fetching it", ref.id, type(exc).__name__, exc)
            return await self.fetch(ref)


def whole_issue(issue: Mapping[str, Any]) -> bool:
    """Whether an issue a webhook carried holds everything a fetch reads: every field of
    FIELDS, the description and comments in the document format the REST API v3 returns (a
    wiki-markup string would make another text, and the two would flap), and every comment
    (the comment field is a page: ``total`` beyond it means some are missing)."""
    fields = issue.get("fields")
    if not isinstance(fields, Mapping) or not issue.get("key") or any(f not in fields for f in FIELDS):
        return False
    if fields.get("description") is not None and not isinstance(fields["description"], Mapping):
        return False
    page = fields.get("comment")
    if not isinstance(page, Mapping) or not isinstance(page.get("comments"), list):
        return False
    comments = page["comments"]
    if isinstance(page.get("total"), int) and page["total"] > len(comments):
        return False
    return all(isinstance(c, Mapping) and (c.get("body") is None or isinstance(c.get("body"), Mapping))
               for c in comments)


def _page(docs: list[Document], checkpoint: str | None) -> Page:
    refs = [Ref(NAME, d.id, d.scope, "sync", d.updated_at, d) for d in docs]
    return Page(refs=refs, checkpoint=checkpoint, high_water=max((d.updated_at for d in docs), default=None))


def _encode_checkpoint(token: str | None, done: int, last: str) -> str:
    """Part-way through an id page: the token that page was asked with, ids done, last id."""
    return json.dumps({"t": token, "n": done, "last": last}, separators=(",", ":"))


def _decode_checkpoint(checkpoint: str | None) -> tuple[str | None, int, str | None]:
    """(token, ids to skip, last id done) from a checkpoint; a bare string is a page token
    (what a page that ended a search page saves, and what older releases saved)."""
    if not checkpoint:
        return None, 0, None
    if checkpoint.startswith("{"):
        try:
            raw = json.loads(checkpoint)
        except ValueError:
            raw = None
        if isinstance(raw, dict):
            token = raw.get("t")
            done = raw.get("n")
            last = raw.get("last")
            return (str(token) if token else None, done if isinstance(done, int) and done > 0 else 0,
                    str(last) if last else None)
    return checkpoint, 0, None


_COMMENT_SELF = re.compile(r"/rest/api/[23]/issue/(\d+)/comment/")


def _issue_of_comment(comment: Any) -> dict[str, Any] | None:
    """``{"id": …}`` of the issue a comment's ``self`` URL names, or None."""
    found = _COMMENT_SELF.search(str(comment.get("self") or "")) if isinstance(comment, Mapping) else None
    return {"id": found.group(1)} if found else None


def build(settings: SourceSettings, client: httpx.AsyncClient, limiter: Limiter | None = None,
          context: SourceContext | None = None) -> JiraSource:
    return JiraSource(settings, client, limiter, context)
