"""GitHub: issues, pull requests (with their conversation, reviews and review comments) and
default-branch commits per repo.

Stable ids (lower-cased, since GitHub names are case-insensitive): ``{owner}/{repo}/issues/{n}``,
``{owner}/{repo}/pulls/{n}``, ``{owner}/{repo}/commits/{sha}``; the scope key is ``owner/repo``.

- Listing: ``/issues?state=all&since=…&sort=updated&direction=asc`` (it includes pull requests,
  told apart by their ``pull_request`` key; ``/pulls`` has no ``since``), then on incremental
  passes ``/pulls/comments?since=…`` (review comments edited since), then ``/commits?since=…``,
  all followed through ``Link: rel="next"``. The checkpoint is the listing and the next URL.
  Commits older than ``COMMIT_FILES_DAYS`` carry their document from the listing (no fetch).
- Fetch: an issue plus its comments; a PR plus its comments, reviews and review comments (a
  listing whose count the item gives as 0 is not asked); a recent commit with its changed files. 404 and 410
  (deleted), 301 (transferred away) and 422 "No commit found" are ``Gone``; anything else raises.
- Webhooks: ``X-Hub-Signature-256`` = HMAC-SHA256 of the raw body; GitHub never retries, so the
  reconciler is what catches a missed delivery.
- Rate limits: a 403/429 with ``x-ratelimit-remaining: 0`` waits until ``x-ratelimit-reset``; a
  secondary limit honours ``retry-after`` (else one minute), all through ``SourceHTTP``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx

from core.documents import Document, Gone, Ref
from core.errors import MalformedWebhook, NotConfigured, PermanentSourceError
from core.http import Limiter, SourceHTTP, retry_after
from core.settings import SourceSettings
from core.sources.base import Page, Scope, WebhookResult
from core.sources.webhooks import (
    check_sha256_signature, header, items, iso_time, load_object, obj, text,
)

log = logging.getLogger(__name__)

SOURCE = "github"
#: How long a repository's visibility and collaborator list are reused, seconds (a change
#: reaches the index within this, or at once through the ``member`` webhook and the pass).
ACCESS_TTL = 60.0
#: How long a login's public email is reused, seconds.
EMAIL_TTL = 3600.0
PER_PAGE = 100
#: Seconds to wait on a secondary limit that names no time (GitHub: "at least one minute").
SECONDARY_WAIT = 60.0
#: Commits older than this many days are indexed from the commit listing (message, author,
#: date) without their changed files, which only the per-commit detail lists: a first sync of
#: a long history then costs one request per 100 commits instead of one per commit.
COMMIT_FILES_DAYS = 90
_REF = re.compile(r"^(?P<repo>[^/]+/[^/]+)/(?P<kind>issues|pulls|commits)/(?P<key>[^/]+)$")


# --- pure helpers ------------------------------------------------------------------------------
def epoch(stamp: str | None) -> float:
    """GitHub ISO 8601 (``2024-01-01T00:00:00Z`` or with an offset) → epoch seconds; None → 0."""
    if not stamp:
        return 0.0
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def iso(seconds: float) -> str:
    """Epoch seconds → the ``YYYY-MM-DDTHH:MM:SSZ`` GitHub's ``since`` expects (floored)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


def repo_key(full_name: str) -> str:
    """The scope key: ``owner/repo`` lower-cased (GitHub treats names case-insensitively)."""
    return full_name.strip().lower()


def _day(stamp: str | None) -> str:
    return (stamp or "")[:10]


def _login(user: Mapping[str, Any] | None) -> str:
    return str((user or {}).get("login") or "")


def _paragraph(text: str | None) -> str:
    """Collapse blank lines so one comment stays one paragraph for the chunker."""
    return re.sub(r"\n\s*\n+", "\n", (text or "").strip())


def _comments_text(comments: list[Mapping[str, Any]]) -> list[str]:
    return [f"Comment by {_login(c.get('user')) or 'unknown'} on {_day(c.get('created_at'))}:\n"
            f"{_paragraph(c.get('body'))}" for c in comments]


def _updated(item: Mapping[str, Any], comments: list[Mapping[str, Any]]) -> float:
    """The newest of the item's and its comments' ``updated_at`` (epoch seconds)."""
    return max([epoch(item.get("updated_at"))] + [epoch(c.get("updated_at")) for c in comments])


def _labels(item: Mapping[str, Any]) -> list[str]:
    return [str(label["name"] if isinstance(label, Mapping) else label) for label in item.get("labels") or []]


def issue_to_document(repo: str, issue: Mapping[str, Any], comments: list[Mapping[str, Any]]) -> Document:
    """An issue and its comments → one Document (each comment its own paragraph)."""
    number, author, labels = int(issue["number"]), _login(issue.get("user")), _labels(issue)
    header = (f"Issue #{number} in {repo} · {issue.get('state', '')} · opened by {author or 'unknown'} "
              f"on {_day(issue.get('created_at'))}" + (f" · labels: {', '.join(labels)}" if labels else ""))
    parts = [str(issue.get("title") or ""), header, _paragraph(issue.get("body")), *_comments_text(comments)]
    return Document(
        source=SOURCE, id=f"{repo}/issues/{number}", scope=repo, title=str(issue.get("title") or ""),
        text="\n\n".join(p for p in parts if p), updated_at=_updated(issue, comments),
        url=str(issue.get("html_url") or ""), author=author,
        metadata={"kind": "issue", "repo": repo, "number": number, "state": str(issue.get("state", "")),
                  "labels": labels, "author": author, "comments": len(comments)},
    )


_REVIEW_STATES = {"APPROVED": "approved", "CHANGES_REQUESTED": "requested changes", "COMMENTED": "commented",
                  "DISMISSED": "dismissed"}


def _reviews_text(reviews: list[Mapping[str, Any]]) -> list[str]:
    """One paragraph per submitted review; a bare "commented" review (the wrapper GitHub makes
    around line comments) says nothing of its own and is left out."""
    out = []
    for review in reviews:
        state, body = str(review.get("state") or ""), _paragraph(review.get("body"))
        if state == "PENDING" or (state == "COMMENTED" and not body):
            continue
        line = (f"Review by {_login(review.get('user')) or 'unknown'} on {_day(review.get('submitted_at'))}: "
                f"{_REVIEW_STATES.get(state, state.lower())}")
        out.append(f"{line}\n{body}" if body else line)
    return out


def _review_comments_text(comments: list[Mapping[str, Any]]) -> list[str]:
    """Review comments as threads: each root comment (file, line, the diff line it is on), then
    its replies, each its own paragraph, in the order they were written."""
    roots = {c.get("id"): c for c in comments if not c.get("in_reply_to_id")}
    replies: dict[Any, list[Mapping[str, Any]]] = {}
    for c in comments:
        if c.get("in_reply_to_id"):
            parent = c["in_reply_to_id"] if c["in_reply_to_id"] in roots else None
            replies.setdefault(parent, []).append(c)
    out = []
    ordered = sorted(roots.values(), key=lambda c: (str(c.get("created_at") or ""), int(c.get("id") or 0)))
    for root in ordered + ([{}] if None in replies else []):
        if root:
            line = root.get("line") or root.get("original_line")
            where = f"{root.get('path') or 'a file'}" + (f" line {line}" if line else "")
            hunk = [x for x in str(root.get("diff_hunk") or "").splitlines() if not x.startswith("@@")]
            quoted = f"\n> {hunk[-1][:200]}" if hunk else ""
            out.append(f"Review comment by {_login(root.get('user')) or 'unknown'} on {where} "
                       f"({_day(root.get('created_at'))}):{quoted}\n{_paragraph(root.get('body'))}")
        for reply in sorted(replies.get(root.get("id") if root else None, []),
                            key=lambda c: (str(c.get("created_at") or ""), int(c.get("id") or 0))):
            out.append(f"Reply by {_login(reply.get('user')) or 'unknown'} on "
                       f"{reply.get('path') or 'a file'} ({_day(reply.get('created_at'))}):\n"
                       f"{_paragraph(reply.get('body'))}")
    return out


def pull_to_document(repo: str, pull: Mapping[str, Any], comments: list[Mapping[str, Any]],
                     reviews: Sequence[Mapping[str, Any]] = (),
                     review_comments: Sequence[Mapping[str, Any]] = ()) -> Document:
    """A pull request (title, body, state, base/head), its conversation, its reviews and its
    review comments (threads on lines of the diff) → one Document."""
    number, author, labels = int(pull["number"]), _login(pull.get("user")), _labels(pull)
    state = "merged" if pull.get("merged_at") else str(pull.get("state", ""))
    head, base = (pull.get("head") or {}).get("ref", ""), (pull.get("base") or {}).get("ref", "")
    header = (f"Pull request #{number} in {repo} · {state}{' · draft' if pull.get('draft') else ''} · "
              f"{head} → {base} · opened by {author or 'unknown'} on {_day(pull.get('created_at'))}"
              + (f" · labels: {', '.join(labels)}" if labels else ""))
    parts = [str(pull.get("title") or ""), header, _paragraph(pull.get("body")), *_comments_text(comments),
             *_reviews_text(list(reviews)), *_review_comments_text(list(review_comments))]
    updated = max([_updated(pull, [*comments, *review_comments])]
                  + [epoch(r.get("submitted_at")) for r in reviews])
    return Document(
        source=SOURCE, id=f"{repo}/pulls/{number}", scope=repo, title=str(pull.get("title") or ""),
        text="\n\n".join(p for p in parts if p), updated_at=updated,
        url=str(pull.get("html_url") or ""), author=author,
        metadata={"kind": "pull", "repo": repo, "number": number, "state": state, "labels": labels,
                  "author": author, "head": head, "base": base, "merged": bool(pull.get("merged_at")),
                  "draft": bool(pull.get("draft")), "comments": len(comments), "reviews": len(reviews),
                  "review_comments": len(review_comments),
                  "approved_by": sorted({_login(r.get("user")) for r in reviews if r.get("state") == "APPROVED"})},
    )


def commit_to_document(repo: str, commit: Mapping[str, Any], now: float | None = None) -> Document:
    """A commit (message, author, date, changed files when the detail has them) → one Document.

    A commit older than ``COMMIT_FILES_DAYS`` is its message alone, even when the detail lists
    files, so the listing's document and a fetched one are the same (no re-embedding when one
    path replaces the other)."""
    sha, body = str(commit["sha"]), commit.get("commit") or {}
    person = body.get("author") or {}
    author = _login(commit.get("author")) or str(person.get("name") or "")
    message = str(body.get("message") or "")
    files = sorted((f.get("filename", ""), f.get("status", "")) for f in commit.get("files") or [])
    if not wants_files(_commit_date(commit), now):
        files = []
    lines = [f"Commit {sha[:12]} in {repo} by {author or 'unknown'} on {_day(person.get('date'))}", message]
    if files:
        lines.append("Files changed: " + ", ".join(f"{name} ({status})" for name, status in files))
    committed = (body.get("committer") or {}).get("date") or person.get("date")
    return Document(
        source=SOURCE, id=f"{repo}/commits/{sha}", scope=repo, title=message.split("\n", 1)[0][:200],
        text="\n\n".join(x for x in lines if x), updated_at=epoch(committed),
        url=str(commit.get("html_url") or ""), author=author,
        metadata={"kind": "commit", "repo": repo, "sha": sha, "author": author,
                  "files": [name for name, _ in files]},
    )


def wants_files(committed: float, now: float | None = None) -> bool:
    """Whether a commit of this date (epoch s) is indexed with its changed files."""
    return committed >= (time.time() if now is None else now) - COMMIT_FILES_DAYS * 86400


def rate_limit_wait(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds to wait when ``response`` is a GitHub rate limit (403/429), else None.

    Primary: ``x-ratelimit-remaining: 0`` → until ``x-ratelimit-reset`` (epoch s, +0.5 s since it
    is rounded). Secondary: ``retry-after``, else one minute. Any other 403 is a real refusal.
    """
    if response.status_code not in (403, 429):
        return None
    waited = retry_after(response, now)
    if waited is not None:
        return waited
    if response.headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in response.headers:
        reset = float(response.headers["x-ratelimit-reset"])
        return max(0.0, reset - (time.time() if now is None else now)) + 0.5
    if response.status_code == 429 or "secondary rate limit" in response.text.lower():
        return SECONDARY_WAIT
    return None


# --- the source --------------------------------------------------------------------------------
class GitHubSource:
    name = SOURCE
    pushes = True

    def __init__(self, settings: SourceSettings, client: httpx.AsyncClient, limiter: Limiter | None = None) -> None:
        self.settings = settings
        token = settings.secret("GITHUB_TOKEN")
        self.http = SourceHTTP(
            SOURCE, client, base_url=settings.get("GITHUB_API_URL") or "https://api.github.com",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                     "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "vector-sync"},
            limiter=limiter, reset_after=rate_limit_wait,
        )
        self._access: dict[str, tuple[float, tuple[str, tuple[str, ...]]]] = {}
        self._emails: dict[str, tuple[float, str]] = {}
        self._unlisted: set[str] = set()

    # --- reconciler side ----------------------------------------------------------------------
    async def scopes(self) -> list[Scope]:
        """The repos named in ``GITHUB_REPOS``; with none named, every repo the token can read."""
        configured = self.settings.scope_filter()
        if configured is not None:
            return [Scope(SOURCE, repo_key(r), r) for r in configured]
        found = []
        async for repo in self._items(f"/user/repos?per_page={PER_PAGE}"):
            found.append(Scope(SOURCE, repo_key(repo["full_name"]), repo["full_name"]))
        return found

    async def changes(self, scope: Scope, since: float | None, checkpoint: str | None) -> AsyncIterator[Page]:
        """Issues and PRs updated since ``since`` (oldest first), then (incremental passes only)
        the PRs whose review comments changed since then, then commits since then."""
        state = json.loads(checkpoint) if checkpoint else {"listing": "issues", "next": None}
        seen: set[str] = set()  # one ref per PR within a pass, however many listings name it
        if state["listing"] == "issues":
            params = {"state": "all", "sort": "updated", "direction": "asc", "per_page": PER_PAGE}
            url = state["next"] or self._url(scope.key, "issues", params, since)
            while url:
                response = await self._list(url)
                items, url = response.json(), _next(response)
                refs = [await self._listed_item_ref(scope.key, i) for i in items]
                seen.update(r.id for r in refs)
                high = max((epoch(i.get("updated_at")) for i in items), default=None)
                following = {"listing": "issues", "next": url} if url else {"listing": "review_comments", "next": None}
                yield Page(refs, json.dumps(following), high)
            state = {"listing": "review_comments", "next": None}
        if state["listing"] == "review_comments":
            # A review comment's edit does not move its PR's updated_at; this listing does see it.
            # A backfill (no since) already lists every PR through /issues.
            params = {"sort": "updated", "direction": "asc", "per_page": PER_PAGE}
            url = state["next"] or (self._url(scope.key, "pulls/comments", params, since) if since is not None else None)
            while url:
                response = await self._list(url)
                comments, url = response.json(), _next(response)
                refs = []
                for comment in comments:
                    ref = self._review_comment_ref(scope.key, comment)
                    if ref is not None and ref.id not in seen:
                        seen.add(ref.id)
                        refs.append(ref)
                high = max((epoch(c.get("updated_at")) for c in comments), default=None)
                following = {"listing": "review_comments", "next": url} if url else {"listing": "commits", "next": None}
                yield Page(refs, json.dumps(following), high)
            state = {"listing": "commits", "next": None}
        url = state["next"] or self._url(scope.key, "commits", {"per_page": PER_PAGE}, since)
        while url:
            response = await self._list(url, empty_ok=True)
            commits, url = (response.json() if response.status_code == 200 else []), _next(response)
            refs = [await self._commit_ref(scope.key, c) for c in commits]
            high = max((_commit_date(c) for c in commits), default=None)
            yield Page(refs, json.dumps({"listing": "commits", "next": url}) if url else None, high)

    async def _listed_item_ref(self, repo: str, item: Mapping[str, Any]) -> Ref:
        """A listed issue without comments carries its document: the list answer is the issue
        itself, so the worker need not ask again (one request saved per such issue). A pull
        request (reviews) or an issue with comments is fetched by the worker for what the
        list lacks."""
        ref = self._item_ref(repo, item)
        if "pull_request" in item or item.get("comments") != 0:
            return ref
        return dataclasses.replace(ref, document=await self._with_access(repo, issue_to_document(repo, item, [])))

    async def _commit_ref(self, repo: str, commit: Mapping[str, Any]) -> Ref:
        """A listed commit: an old one carries its document (the listing holds all it is
        indexed with, so no fetch); a recent one is fetched by the worker for its files."""
        at = _commit_date(commit)
        ref = Ref(SOURCE, f"{repo}/commits/{commit['sha']}", repo, event_at=at)
        if wants_files(at):
            return ref
        return dataclasses.replace(ref, document=await self._with_access(repo, commit_to_document(repo, commit)))

    @staticmethod
    def _review_comment_ref(repo: str, comment: Mapping[str, Any]) -> Ref | None:
        match = re.search(r"/pulls/(\d+)$", str(comment.get("pull_request_url") or ""))
        if match is None:
            return None
        return Ref(SOURCE, f"{repo}/pulls/{match[1]}", repo, event_at=epoch(comment.get("updated_at")) or None)

    async def live_ids(self, scope: Scope) -> AsyncIterator[str]:
        """Every issue and PR number (state=all) and every default-branch commit sha."""
        async for item in self._items(self._url(scope.key, "issues", {"state": "all", "per_page": PER_PAGE})):
            yield self._item_ref(scope.key, item).id
        async for commit in self._items(self._url(scope.key, "commits", {"per_page": PER_PAGE}), empty_ok=True):
            yield f"{scope.key}/commits/{commit['sha']}"

    # --- worker side --------------------------------------------------------------------------
    async def fetch(self, ref: Ref) -> Document | Gone:
        match = _REF.match(ref.id)
        if not match:
            raise PermanentSourceError(SOURCE, f"not a GitHub document id: {ref.id!r}")
        repo, kind, key = match["repo"], match["kind"], match["key"]
        if kind == "commits":
            return await self._fetch_commit(ref, repo, key)
        path = f"/repos/{repo}/{'issues' if kind == 'issues' else 'pulls'}/{key}"
        # Never follow a 301: a transferred issue lives under another id now.
        response = await self.http.get(path, follow_redirects=False)
        if response.status_code in (301, 404, 410) or not _same_repo(response, repo):
            return Gone(SOURCE, ref.id)
        return await self._with_access(repo, await self._assemble(repo, kind, key, response.json()))

    async def _assemble(self, repo: str, kind: str, key: str, item: Mapping[str, Any]) -> Document:
        """An issue or pull request and what hangs off it (comments; reviews and review
        comments) as one Document: the same whether ``item`` was fetched or came in a webhook."""
        # The item says how many comments it has: none means no request for them.
        comments = await self._all(f"/repos/{repo}/issues/{key}/comments?per_page={PER_PAGE}", item.get("comments"))
        if kind == "issues":
            return issue_to_document(repo, item, comments)
        reviews = await self._all(f"/repos/{repo}/pulls/{key}/reviews?per_page={PER_PAGE}")
        review_comments = await self._all(f"/repos/{repo}/pulls/{key}/comments?per_page={PER_PAGE}",
                                          item.get("review_comments"))
        return pull_to_document(repo, item, comments, reviews, review_comments)

    async def from_payload(self, ref: Ref) -> Document | Gone:
        """The document from the issue or pull request its webhook carried (``ref.payload``),
        asking GitHub only for what a payload lacks: comments (none when the item counts 0),
        reviews and review comments; and a private repository's readers (cached). A payload
        this cannot read, or an item gone since (404 on its comments), is fetched instead."""
        match = _REF.match(ref.id)
        payload = ref.payload or {}
        item = payload.get("item")
        if not match or match["kind"] == "commits" or not isinstance(item, Mapping):
            return await self.fetch(ref)
        repo, kind, key = match["repo"], match["kind"], match["key"]
        try:
            document = await self._assemble(repo, kind, key, item)
        except PermanentSourceError as exc:
            if exc.status in (404, 410):
                return await self.fetch(ref)
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.info("github: %s payload not usable (%s: %s); fetching it", ref.id, type(exc).__name__, exc)
            return await self.fetch(ref)
        if payload.get("private") is False:
            return document  # the webhook says the repository is public: readable by everyone
        return await self._with_access(repo, document)

    async def _all(self, url: str, count: Any = None) -> list[dict[str, Any]]:
        """Every item of a listing; nothing asked when ``count`` (the parent's own tally) is 0."""
        if count == 0 and not isinstance(count, bool):
            return []
        return [c async for c in self._items(url)]

    # --- access -------------------------------------------------------------------------------
    async def _with_access(self, repo: str, document: Document) -> Document:
        access_type, listed = await self.repo_access(repo)
        if access_type == "public":
            return document
        return dataclasses.replace(document, access_type="restricted", access_list=listed)

    async def repo_access(self, repo: str, fresh: bool = False) -> tuple[str, tuple[str, ...]]:
        """``("public", ())`` for a public repository; a private one is restricted to its
        collaborators as emails (a login without a public email stays ``github:{login}``,
        which matches nobody unless an operator lists it). When the token may not list the
        collaborators (403/404), restricted to nobody but admins until the operator sets the
        scope's access (``vector-sync scopes access``): fail closed, never public."""
        cached = self._access.get(repo)
        if cached and not fresh and time.monotonic() - cached[0] < ACCESS_TTL:
            return cached[1]
        response = await self.http.get(f"/repos/{repo}")
        if response.status_code != 200:
            raise PermanentSourceError(SOURCE, f"GET /repos/{repo} answered {response.status_code}",
                                       response.status_code)
        if not response.json().get("private"):
            answer: tuple[str, tuple[str, ...]] = ("public", ())
        else:
            logins = await self._collaborators(repo)
            if logins is None:
                # Once per process and repo: the operator's override (which wins in the
                # pipeline) is the fix, and the connector cannot see it.
                if repo not in self._unlisted:
                    self._unlisted.add(repo)
                    log.warning("github: %s is private and its access could not be listed (collaborators "
                                "refused for this token); indexed restricted to admins until an operator "
                                "sets it: vector-sync scopes access github %s --restrict EMAILS", repo, repo)
                answer = ("restricted", ())
            else:
                answer = ("restricted", tuple(sorted({await self._email(login) for login in logins})))
        self._access[repo] = (time.monotonic(), answer)
        return answer

    async def scope_access(self, scope: Scope) -> list[str] | None:
        """The membership refresh (each reconcile pass): a private repository's readers, read
        afresh, for the reconciler to compare with what it recorded; None for a public one."""
        access_type, listed = await self.repo_access(scope.key, fresh=True)
        return None if access_type == "public" else list(listed)

    async def _collaborators(self, repo: str) -> list[str] | None:
        """Every collaborator's login (paged), or None when the token may not list them."""
        logins: list[str] = []
        url: str | None = f"/repos/{repo}/collaborators?per_page={PER_PAGE}"
        while url:
            try:
                response = await self.http.get(url)
            except PermanentSourceError as exc:
                if exc.status == 403:
                    return None
                raise
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise PermanentSourceError(SOURCE, f"GET {url} answered {response.status_code}", response.status_code)
            logins += [str(c["login"]) for c in response.json() if c.get("login")]
            url = _next(response)
        return logins

    async def _email(self, login: str) -> str:
        """A login's public email, lower-cased (cached); ``github:{login}`` when none is visible."""
        cached = self._emails.get(login)
        if cached and time.monotonic() - cached[0] < EMAIL_TTL:
            return cached[1]
        response = await self.http.get(f"/users/{login}")
        email = str(response.json().get("email") or "").strip().lower() if response.status_code == 200 else ""
        principal = email if "@" in email else f"github:{login.lower()}"
        self._emails[login] = (time.monotonic(), principal)
        return principal

    async def _fetch_commit(self, ref: Ref, repo: str, sha: str) -> Document | Gone:
        try:
            response = await self.http.get(f"/repos/{repo}/commits/{sha}")
        except PermanentSourceError as exc:
            # 422 "No commit found for SHA" and 409 "Git Repository is empty" mean it is not there.
            if exc.status == 409 or (exc.status == 422 and "no commit found" in exc.detail.lower()):
                return Gone(SOURCE, ref.id)
            raise
        if response.status_code in (404, 410):
            return Gone(SOURCE, ref.id)
        return await self._with_access(repo, commit_to_document(repo, response.json()))

    # --- gap repair ---------------------------------------------------------------------------
    async def failed_deliveries(self, hook: str, since: float) -> list[dict[str, Any]]:
        """The newest attempt of every delivery of ``hook`` (``orgs/{org}/hooks/{id}`` or
        ``repos/{owner}/{repo}/hooks/{id}``) made at or after ``since`` (epoch s) of which no
        attempt succeeded, oldest first. One listing page of 100 per request, newest first, read
        back only as far as ``since``. Needs the hook's read permission (classic token:
        ``admin:org_hook`` / ``admin:repo_hook``)."""
        attempts: dict[str, list[dict[str, Any]]] = {}
        url: str | None = f"/{hook.strip('/')}/deliveries?per_page={PER_PAGE}"
        while url:  # newest first: stop at the first page that reaches back past ``since``
            response = await self._list(url)
            rows = response.json()
            for row in rows:
                attempts.setdefault(str(row.get("guid") or ""), []).append(row)
            url = _next(response) if rows and epoch(rows[-1].get("delivered_at")) >= since else None
        failed = []
        for guid, rows in attempts.items():
            recent = [r for r in rows if epoch(r.get("delivered_at")) >= since]
            if not guid or not recent or any(200 <= int(r.get("status_code") or 0) < 300 for r in rows):
                continue
            failed.append(max(recent, key=lambda r: int(r["id"])))
        return sorted(failed, key=lambda r: int(r["id"]))

    async def redeliver(self, hook: str, delivery: Mapping[str, Any]) -> bool:
        """Ask GitHub to send ``delivery`` again (same bytes, same ``X-GitHub-Delivery``, so one
        that arrives twice is enqueued once); False when GitHub refuses (a 4xx: too old, hook
        gone), for the caller to enqueue what it named instead."""
        try:
            response = await self.http.post(f"/{hook.strip('/')}/deliveries/{delivery['id']}/attempts")
        except PermanentSourceError:
            return False
        return 200 <= response.status_code < 300

    async def delivery_refs(self, hook: str, delivery: Mapping[str, Any]) -> list[Ref]:
        """What a delivery named, read from its stored request (``GET …/deliveries/{id}``) and
        parsed as the receiver would: the refs to enqueue when it cannot be redelivered."""
        response = await self._list(f"/{hook.strip('/')}/deliveries/{delivery['id']}")
        request = response.json().get("request") or {}
        headers = {str(k).lower(): str(v) for k, v in (request.get("headers") or {}).items()}
        headers.setdefault("x-github-event", str(response.json().get("event") or ""))
        headers["content-type"] = "application/json"  # the payload comes back as JSON either way
        body = json.dumps(request.get("payload") or {}).encode()
        try:
            return list(parse_webhook(headers, body).refs)
        except MalformedWebhook as exc:
            log.warning("github: delivery %s cannot be parsed for repair: %s", delivery.get("guid"), exc)
            return []

    async def redeliver_failed(self, hook: str, since: float) -> list[str]:
        """Redeliver every failed delivery of ``hook`` since ``since``; their GUIDs. GitHub never
        redelivers by itself (the reconciler's gap repair, reconciler/redeliver.py, calls the
        parts above with a claim per delivery, so none is redelivered twice)."""
        redelivered = []
        for delivery in await self.failed_deliveries(hook, since):
            if await self.redeliver(hook, delivery):
                redelivered.append(str(delivery["guid"]))
        return redelivered

    # --- receiver side ------------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        secret = self.settings.secret("GITHUB_WEBHOOK_SECRET")
        if not secret:
            raise NotConfigured("GITHUB_WEBHOOK_SECRET is not set; refusing GitHub webhooks")
        verify_signature(secret, headers, body)

    def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        return parse_webhook(headers, body)

    # --- plumbing -----------------------------------------------------------------------------
    def _url(self, repo: str, listing: str, params: dict[str, Any], since: float | None = None) -> str:
        if since is not None:
            params = {**params, "since": iso(since)}
        return f"/repos/{repo}/{listing}?{urlencode(params)}"

    async def _list(self, url: str, empty_ok: bool = False) -> httpx.Response:
        """One listing page; a 404 repo raises (it is never "everything was deleted")."""
        try:
            response = await self.http.get(url)
        except PermanentSourceError as exc:
            if empty_ok and exc.status == 409:  # an empty repository has no commits yet
                return httpx.Response(409, request=httpx.Request("GET", self.http.url(url)))
            raise
        if response.status_code != 200:
            raise PermanentSourceError(SOURCE, f"GET {url} answered {response.status_code}", response.status_code)
        return response

    async def _items(self, url: str, empty_ok: bool = False) -> AsyncIterator[dict[str, Any]]:
        next_url: str | None = url
        while next_url:
            response = await self._list(next_url, empty_ok)
            if response.status_code != 200:
                return
            for item in response.json():
                yield item
            next_url = _next(response)

    @staticmethod
    def _item_ref(repo: str, item: Mapping[str, Any]) -> Ref:
        kind = "pulls" if "pull_request" in item else "issues"
        return Ref(SOURCE, f"{repo}/{kind}/{item['number']}", repo, event_at=epoch(item.get("updated_at")))


def _next(response: httpx.Response) -> str | None:
    return response.links.get("next", {}).get("url")


def _commit_date(commit: Mapping[str, Any]) -> float:
    body = commit.get("commit") or {}
    return epoch((body.get("committer") or {}).get("date") or (body.get("author") or {}).get("date"))


def _same_repo(response: httpx.Response, repo: str) -> bool:
    """False when a redirect was followed anyway and the item now lives in another repo."""
    if response.status_code != 200:
        return True
    api = str(response.json().get("url") or "")
    return not api or f"/repos/{repo}/" in api.lower()


# --- webhooks (pure) ---------------------------------------------------------------------------
def verify_signature(secret: str, headers: Mapping[str, str], body: bytes) -> None:
    """Raise InvalidWebhook unless ``X-Hub-Signature-256`` is HMAC-SHA256(secret, raw body)."""
    check_sha256_signature(headers, body, secret=secret, header_name="X-Hub-Signature-256", source=SOURCE)


def _payload(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The JSON payload, whether sent as JSON or form-encoded (``payload=<json>``)."""
    if "x-www-form-urlencoded" in header(headers, "Content-Type") or body.startswith(b"payload="):
        try:
            raw = parse_qs(body.decode(), strict_parsing=True)["payload"][0]
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise MalformedWebhook(f"GitHub webhook form body has no payload: {exc}") from None
        return load_object(raw.encode("utf-8", "surrogatepass"), "GitHub")
    return load_object(body, "GitHub")


def parse_webhook(headers: Mapping[str, str], body: bytes) -> WebhookResult:
    """A verified delivery → refs to sync/delete, scope events, or the ping reply."""
    event = header(headers, "X-GitHub-Event")
    delivery = header(headers, "X-GitHub-Delivery") or None
    if not event:
        raise MalformedWebhook("missing X-GitHub-Event header")
    payload = _payload(headers, body)
    if event == "ping":
        return WebhookResult(delivery_id=delivery, reply=(200, b'{"ok":true}', "application/json"),
                             note=f"ping from hook {str(payload.get('hook_id'))[:40]}")
    full_name = text(obj(payload, "repository", SOURCE), "full_name", SOURCE, "repository.full_name")
    if not full_name.strip():
        return WebhookResult(delivery_id=delivery, note=f"{event} without a repository ignored")
    repo = repo_key(full_name)
    handler = _HANDLERS.get(event)
    if handler is None:
        return WebhookResult(delivery_id=delivery, note=f"event {event!r} is not synced")
    try:
        result = handler(repo, payload)
    except (KeyError, TypeError, ValueError) as exc:  # a guard: the readers below name fields
        raise MalformedWebhook(f"GitHub {event} payload is missing {exc}") from None
    return dataclasses.replace(result, delivery_id=delivery)


def _number(item: Mapping[str, Any], path: str) -> int:
    """An issue or pull request number: a positive whole number."""
    value = item.get("number")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 10**12:
        raise MalformedWebhook(f"github: '{path}.number' must be a positive whole number")
    return value


def _required(payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj(payload, key, SOURCE)
    if not value:
        raise MalformedWebhook(f"github: payload is missing '{key}'")
    return value


def _item_sync(repo: str, item: Mapping[str, Any], kind: str, event_at: float | None, path: str) -> Ref:
    return Ref(SOURCE, f"{repo}/{kind}/{_number(item, path)}", repo, event_at=event_at)


def _carrying(ref: Ref, payload: Mapping[str, Any], item: Mapping[str, Any]) -> Ref:
    """``ref`` with the webhook's own issue or pull request object, for ``from_payload``, and
    whether the repository is private (a public one then needs no request for its access).
    Only with an event time: without one the version cannot be ordered, so it is fetched."""
    if ref.event_at is None:
        return ref
    private = obj(payload, "repository", SOURCE).get("private")
    return dataclasses.replace(ref, payload={"item": dict(item),
                                             "private": private if isinstance(private, bool) else None})


def _on_issues(repo: str, payload: dict[str, Any]) -> WebhookResult:
    action, issue = text(payload, "action", SOURCE), _required(payload, "issue")
    kind = "pulls" if issue.get("pull_request") else "issues"
    if action == "deleted":
        return WebhookResult([Ref(SOURCE, f"{repo}/{kind}/{_number(issue, 'issue')}", repo, op="delete")])
    if action == "transferred":
        refs = [Ref(SOURCE, f"{repo}/issues/{_number(issue, 'issue')}", repo, op="delete")]
        changes = obj(payload, "changes", SOURCE)
        new_issue = obj(changes, "new_issue", SOURCE, "changes.new_issue")
        new_repo = text(obj(changes, "new_repository", SOURCE, "changes.new_repository"), "full_name", SOURCE,
                        "changes.new_repository.full_name")
        if new_issue and new_repo.strip():  # the issue lives on under its new repo's id
            target = repo_key(new_repo)
            at = iso_time(new_issue, "updated_at", SOURCE, "changes.new_issue.updated_at") or None
            refs.append(_item_sync(target, new_issue, "issues", at, "changes.new_issue"))
        return WebhookResult(refs)
    at = iso_time(issue, "updated_at", SOURCE, "issue.updated_at") or None
    ref = _item_sync(repo, issue, kind, at, "issue")
    # An issue event carries the whole issue (a pull request's issue face lacks head and base).
    return WebhookResult([_carrying(ref, payload, issue) if kind == "issues" else ref])


def _on_comment(repo: str, payload: dict[str, Any]) -> WebhookResult:
    issue, comment = _required(payload, "issue"), obj(payload, "comment", SOURCE)
    kind = "pulls" if issue.get("pull_request") else "issues"
    # A deletion's payload predates it; no event time, so the worker always re-fetches.
    deleted = text(payload, "action", SOURCE) == "deleted"
    at = None if deleted else iso_time(comment, "updated_at", SOURCE, "comment.updated_at") or None
    ref = _item_sync(repo, issue, kind, at, "issue")
    if kind != "issues" or deleted:
        return WebhookResult([ref])
    # A new or edited comment's event carries its whole issue: only the comments are asked for,
    # even when the issue's count says 0 (a comment exists: the count must be behind).
    return WebhookResult([_carrying(ref, payload, {**issue, "comments": issue.get("comments") or None})])


def _on_pull(repo: str, payload: dict[str, Any]) -> WebhookResult:
    pull = _required(payload, "pull_request")
    at = iso_time(pull, "updated_at", SOURCE, "pull_request.updated_at") or None
    # The pull request itself rides along; its conversation, reviews and review comments do not.
    return WebhookResult([_carrying(_item_sync(repo, pull, "pulls", at, "pull_request"), payload, pull)])


def _on_review(repo: str, payload: dict[str, Any]) -> WebhookResult:
    """``pull_request_review`` submitted, edited or dismissed: the PR's document holds its reviews.
    Only a submission carries a time of its own (``submitted_at``); an edit or a dismissal is
    always re-fetched."""
    pull, review = _required(payload, "pull_request"), obj(payload, "review", SOURCE)
    action = text(payload, "action", SOURCE)
    at = iso_time(review, "submitted_at", SOURCE, "review.submitted_at") if action == "submitted" else None
    return WebhookResult([_item_sync(repo, pull, "pulls", at or None, "pull_request")])


def _on_review_comment(repo: str, payload: dict[str, Any]) -> WebhookResult:
    """``pull_request_review_comment`` created, edited or deleted: re-sync the PR (a deleted
    comment leaves its text; the payload predates the deletion, so no event time)."""
    pull, comment = _required(payload, "pull_request"), obj(payload, "comment", SOURCE)
    deleted = text(payload, "action", SOURCE) == "deleted"
    at = None if deleted else iso_time(comment, "updated_at", SOURCE, "comment.updated_at")
    return WebhookResult([_item_sync(repo, pull, "pulls", at or None, "pull_request")])


def _on_push(repo: str, payload: dict[str, Any]) -> WebhookResult:
    ref = text(payload, "ref", SOURCE)
    if payload.get("deleted"):
        return WebhookResult(note=f"branch deletion {ref} in {repo}: nothing to sync")
    default = text(obj(payload, "repository", SOURCE), "default_branch", SOURCE,
                   "repository.default_branch") or "main"
    if ref != f"refs/heads/{default}":
        # Only the default branch is indexed, matching what live_ids lists for pruning.
        return WebhookResult(note=f"push to {ref} in {repo} ignored (not {default})")
    refs = []
    for n, commit in enumerate(items(payload, "commits", SOURCE)):
        if not isinstance(commit, Mapping):
            raise MalformedWebhook(f"github: 'commits[{n}]' must be an object")
        sha = text(commit, "id", SOURCE, f"commits[{n}].id")
        if not sha:
            raise MalformedWebhook(f"github: 'commits[{n}].id' is missing")
        at = iso_time(commit, "timestamp", SOURCE, f"commits[{n}].timestamp") or None
        refs.append(Ref(SOURCE, f"{repo}/commits/{sha}", repo, event_at=at))
    return WebhookResult(refs)


def _on_repository(repo: str, payload: dict[str, Any]) -> WebhookResult:
    action = text(payload, "action", SOURCE)
    if action in ("archived", "unarchived", "deleted"):
        return WebhookResult(scope_events=[(action, repo)])
    if action in ("privatized", "publicized"):
        return WebhookResult(scope_events=[("access", repo)], note=f"repository.{action}")
    return WebhookResult(note=f"repository.{action} for {repo} ignored")


def _on_member(repo: str, payload: dict[str, Any]) -> WebhookResult:
    """A collaborator added, removed or given another role: who may read the repo changed."""
    action = text(payload, "action", SOURCE)
    return WebhookResult(scope_events=[("access", repo)], note=f"member.{action}")


_HANDLERS = {"issues": _on_issues, "issue_comment": _on_comment, "pull_request": _on_pull,
             "pull_request_review": _on_review, "pull_request_review_comment": _on_review_comment,
             "push": _on_push, "repository": _on_repository, "member": _on_member}


def build(settings: SourceSettings, client: httpx.AsyncClient, limiter: Limiter | None = None,
          context: Any = None) -> GitHubSource:
    """The GitHub connector; ``context`` is unused (scopes come from GITHUB_REPOS)."""
    return GitHubSource(settings, client, limiter)
