"""A GitHub REST API (v3) and webhook simulator: repos, issues, pull requests, comments, commits.

What it models, faithfully enough to keep the connector honest (see docs/sandbox/github.md):

- Auth: ``Authorization: Bearer|token <t>``; a wrong token is 401 ``Bad credentials``; no token
  is an anonymous caller (60/h), who sees the seeded *private* repos as 404, as GitHub does.
- ``/issues`` lists issues **and pull requests** (``pull_request`` key), ``state`` defaults to
  ``open``, ``since`` is "updated at or after"; ``/pulls`` has **no** ``since``; ``per_page``
  defaults to 30 and is capped at 100; paging is by ``page`` with a ``Link`` header
  (prev/next/last/first; absent when everything fits on one page).
- A transferred issue answers 301 with ``Location`` (target repo seeded) or 404 (target not
  visible); a deleted issue answers 410 Gone; an unknown commit 422 "No commit found for SHA".
- Every response carries ``x-ratelimit-*``. The primary budget is ``knobs.rate_limit`` requests
  per window (per hour by default; None = 5,000, 0 = unlimited); once spent, 403 (or 429) with
  ``x-ratelimit-remaining: 0``. A secondary-limit mode answers 403 with ``retry-after``.
- The control API (under ``/_sandbox/``) changes state and fires the webhook GitHub would send,
  signed with ``X-Hub-Signature-256`` (and legacy ``X-Hub-Signature``), **never retried**;
  a past delivery can be redelivered with the same ``X-GitHub-Delivery``, and ``ping`` sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.base import Knobs, Simulator

DOCS = "https://docs.github.com/rest"
TOKEN = "ghp_sandboxTokenForVectorSync0000000000"
#: Who the token is (``GET /user``).
TOKEN_LOGIN = "vector-sync-bot"
#: The classic token's OAuth scopes, sent back in ``X-OAuth-Scopes`` on every authenticated
#: answer. ``PUT /_sandbox/github/token {"scopes": [...]}`` changes them; ``null`` makes it a
#: fine-grained token (no ``X-OAuth-Scopes`` header). Without ``repo`` a classic token sees
#: private repositories as 404, as GitHub does.
TOKEN_SCOPES = ("read:org", "repo")
WEBHOOK_SECRET = "sandbox-github-webhook-secret"
HOOK_ID = 424242
ORG = "acme"
#: Seed clock: every seeded item is dated in the 180 days before this instant (2025-01-01Z).
SEED_END = 1_735_689_600
DEFAULT_PRIMARY_LIMIT = 5000
ANONYMOUS_LIMIT = 60

Handler = Callable[[Request], Awaitable[Response]]


# --- small helpers ---------------------------------------------------------------------------
def iso(epoch: float) -> str:
    """Epoch seconds → GitHub's ``YYYY-MM-DDTHH:MM:SSZ`` (second resolution, UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def parse_iso(raw: str) -> float | None:
    """ISO 8601 (``Z``, offsets, fractions or a bare date) → epoch seconds; None if invalid."""
    try:
        parsed = datetime.fromisoformat(raw.strip().replace("z", "Z"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def sign(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    """GitHub's webhook signature header value: ``sha256=<hex HMAC of the raw body>``."""
    digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()
    return f"{algorithm}={digest}"


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    """GitHub's error body: ``message``, ``documentation_url`` and (lately) ``status``."""
    return JSONResponse({"message": message, **extra, "documentation_url": DOCS, "status": str(status)}, status)


def validation_failed(resource: str, field_name: str) -> JSONResponse:
    return error(422, "Validation Failed",
                 errors=[{"resource": resource, "field": field_name, "code": "invalid"}])


# --- state -----------------------------------------------------------------------------------
@dataclass
class Comment:
    id: int
    user: str
    body: str
    created_at: float
    updated_at: float


@dataclass
class Review:
    """A submitted pull request review (``state`` APPROVED, CHANGES_REQUESTED, COMMENTED, DISMISSED)."""

    id: int
    user: str
    body: str
    state: str
    submitted_at: float
    commit_id: str


@dataclass
class ReviewComment:
    """A comment on a line of a pull request's diff; a reply has ``in_reply_to_id``."""

    id: int
    review_id: int
    user: str
    body: str
    path: str
    line: int
    diff_hunk: str
    created_at: float
    updated_at: float
    commit_id: str
    in_reply_to_id: int | None = None


@dataclass
class Issue:
    """An issue, or a pull request when ``head`` is set (they share one number space)."""

    number: int
    id: int
    title: str
    body: str
    user: str
    created_at: float
    updated_at: float
    labels: list[str] = field(default_factory=list)
    state: str = "open"
    state_reason: str | None = None
    closed_at: float | None = None
    comments: list[Comment] = field(default_factory=list)
    head: str | None = None
    base: str = "main"
    merged_at: float | None = None
    draft: bool = False
    reviews: list[Review] = field(default_factory=list)
    review_comments: list[ReviewComment] = field(default_factory=list)
    deleted: bool = False
    #: ``(owner/repo, number)`` after a transfer.
    moved_to: tuple[str, int] | None = None

    @property
    def is_pull(self) -> bool:
        return self.head is not None

    @property
    def visible(self) -> bool:
        return not self.deleted and self.moved_to is None

    def touch(self, now: float) -> None:
        self.updated_at = max(now, self.updated_at)


@dataclass
class Commit:
    sha: str
    message: str
    author: str
    email: str
    date: float
    parents: list[str]
    files: list[tuple[str, str, int, int]]  # filename, status, additions, deletions


@dataclass
class Repo:
    owner: str
    name: str
    id: int
    created_at: float
    archived: bool = False
    deleted: bool = False
    issues: dict[int, Issue] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)  # oldest first; the last is HEAD
    by_sha: dict[str, Commit] = field(default_factory=dict)
    default_branch: str = "main"
    #: Visibility, and who may read a private repository (login → role name); with
    #: ``collaborators_listable`` False the token may not list them (403, as for a token
    #: without push access), with ``collaborators_status`` choosing 403 or 404.
    private: bool = False
    collaborators: dict[str, str] = field(default_factory=dict)
    collaborators_listable: bool = True
    collaborators_status: int = 403

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def next_number(self) -> int:
        return max(self.issues, default=0) + 1

    def add_commit(self, commit: Commit) -> None:
        self.commits.append(commit)
        self.by_sha[commit.sha] = commit


@dataclass
class RateWindow:
    """One caller's primary budget: ``used`` requests since ``start`` (epoch seconds)."""

    start: float
    used: int = 0


# --- seed vocabulary -------------------------------------------------------------------------
_USERS = ["octocat", "mona", "hubot", "alice-dev", "bob-ops", "carol-pm", "dan-qa"]
_TOPICS = ["SUBS billing", "invoice rounding", "login timeout", "webhook retries", "search ranking",
           "CSV export", "rate limiter", "dark mode", "onboarding email", "audit log",
           "Pinecone upsert", "Jira pagination", "Slack threads", "token refresh", "cache eviction"]
_VERBS = ["Fix", "Investigate", "Improve", "Refactor", "Document", "Speed up", "Harden", "Remove"]
_LABELS = ["bug", "enhancement", "documentation", "billing", "performance", "security", "good first issue"]
_SENTENCES = [
    "We decided to keep the current behaviour until the migration lands.",
    "Customers on the annual plan see the wrong total after a mid-cycle upgrade.",
    "The root cause is a missing timeout on the outbound HTTP call.",
    "Repro: create two subscriptions, cancel one, then export the invoices.",
    "This blocks the Q3 release; please prioritise.",
    "Agreed with finance that amounts round half-even to the cent.",
    "Added a regression test and a metric for the retry count.",
    "Pagination returned the same page repeatedly when the cursor expired.",
]
_FILES = ["billing/invoice.py", "billing/rounding.py", "api/auth.py", "api/webhooks.py",
          "search/rank.py", "docs/README.md", "web/src/App.tsx", "ops/deploy.yaml"]


class GitHubSimulator(Simulator):
    name = "github"

    def __init__(self, knobs: Knobs | None = None) -> None:
        super().__init__(knobs)
        self.token = TOKEN
        self.token_scopes: set[str] | None = set(TOKEN_SCOPES)
        self.secret = WEBHOOK_SECRET
        self.repos: dict[str, Repo] = {}
        #: Repositories outside the sandbox (transfer targets the token cannot read).
        self.outside: dict[str, Repo] = {}
        self._ids = 1000
        #: Primary budget per caller ("token" or "anonymous"); ``window`` seconds long.
        self.window = 3600.0
        self.limit_status = 403
        self.secondary_remaining = 0
        self.secondary_retry_after = 1
        self.budgets: dict[str, RateWindow] = {}
        self.content_type = "json"  # the hook's content_type: "json" or "form"
        #: When set, ``POST …/deliveries/{id}/attempts`` answers this status (GitHub refuses to
        #: redeliver what is older than its retention, for one) instead of sending it again.
        #: ``PUT /_sandbox/github/hook {"refuse_redelivery": 422}``; null sends again.
        self.refuse_redelivery: int | None = None
        self.requests = 0
        #: Public profile emails by login (GET /users/{login} ``email``; None when hidden).
        self.emails: dict[str, str | None] = {}

    # --- configuration ----------------------------------------------------------------------
    def env(self, base_url: str) -> dict[str, str]:
        return {
            "GITHUB_API_URL": base_url,
            "GITHUB_TOKEN": self.token,
            "GITHUB_WEBHOOK_SECRET": self.secret,
            "GITHUB_REPOS": ",".join(r.full_name for r in self.repos.values() if not r.deleted),
        }

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    # --- seeding ----------------------------------------------------------------------------
    def seed(self, profile: str, rng: random.Random, world: dict[str, Any]) -> None:
        """``small``: 2 repos, 20 issues/PRs, 20 commits; ``scale``: 6 repos, 3,000 and 6,000."""
        sizes = {"empty": (0, 0, 0), "small": (2, 10, 10), "scale": (6, 500, 1000)}
        if profile not in sizes:
            raise ValueError(f"unknown seed profile {profile!r}")
        repos, items, commits = sizes[profile]
        names = ["api", "web", "billing", "search", "infra", "docs"]
        for i in range(repos):
            repo = Repo(ORG, names[i], self.next_id(), SEED_END - 400 * 86400)
            self.repos[repo.full_name] = repo
            self._seed_commits(repo, commits, rng)
            self._seed_items(repo, items, rng)
        world["github_repos"] = [r.full_name for r in self.repos.values()]

    def _seed_items(self, repo: Repo, count: int, rng: random.Random) -> None:
        for number in range(1, count + 1):
            created = SEED_END - rng.randint(86400, 180 * 86400)
            topic = rng.choice(_TOPICS)
            item = Issue(
                number=number, id=self.next_id(), title=f"{rng.choice(_VERBS)} {topic}",
                body=" ".join(rng.sample(_SENTENCES, 2)), user=rng.choice(_USERS),
                created_at=created, updated_at=created,
                labels=sorted(rng.sample(_LABELS, rng.randint(0, 2))),
            )
            if rng.random() < 0.4:
                item.head = f"feature/{topic.lower().replace(' ', '-')}-{number}"
                item.draft = rng.random() < 0.1
            for _ in range(rng.randint(0, 3)):
                at = item.updated_at + rng.randint(60, 86400)
                item.comments.append(Comment(self.next_id(), rng.choice(_USERS),
                                             rng.choice(_SENTENCES), at, at))
                item.updated_at = at
            if item.is_pull:  # its own generator, so the seeded issues stay as they were
                self._seed_reviews(repo, item, random.Random(f"reviews:{repo.full_name}:{number}"))
            if rng.random() < 0.35:
                item.updated_at += rng.randint(60, 86400)
                item.state, item.closed_at = "closed", item.updated_at
                item.state_reason = None if item.is_pull else "completed"
                if item.is_pull and rng.random() < 0.8:
                    item.merged_at = item.closed_at
            repo.issues[number] = item

    def _seed_reviews(self, repo: Repo, pull: Issue, rng: random.Random) -> None:
        """0-2 reviews, each with 0-2 line comments (a reply now and then)."""
        head = repo.commits[-1].sha if repo.commits else "0" * 40
        for _ in range(rng.randint(0, 2)):
            at = pull.updated_at + rng.randint(60, 86400)
            review = Review(self.next_id(), rng.choice(_USERS), rng.choice(["", *_SENTENCES]),
                            rng.choice(["APPROVED", "CHANGES_REQUESTED", "COMMENTED"]), at, head)
            pull.reviews.append(review)
            for _ in range(rng.randint(0, 2)):
                root = ReviewComment(self.next_id(), review.id, review.user, rng.choice(_SENTENCES),
                                     rng.choice(_FILES), rng.randint(1, 200), "@@ -1,3 +1,4 @@\n+changed line",
                                     at, at, head)
                pull.review_comments.append(root)
                if rng.random() < 0.3:
                    pull.review_comments.append(ReviewComment(
                        self.next_id(), review.id, pull.user, rng.choice(_SENTENCES), root.path, root.line,
                        root.diff_hunk, at + 60, at + 60, head, in_reply_to_id=root.id))
            pull.updated_at = max(pull.updated_at, at + 60)

    def _seed_commits(self, repo: Repo, count: int, rng: random.Random) -> None:
        at = SEED_END - 180 * 86400
        for i in range(count):
            at += rng.randint(60, max(61, 180 * 86400 // max(count, 1)))
            user = rng.choice(_USERS)
            files = [(f, rng.choice(["modified", "modified", "added"]), rng.randint(1, 40), rng.randint(0, 20))
                     for f in sorted(rng.sample(_FILES, rng.randint(1, 3)))]
            message = f"{rng.choice(_VERBS)} {rng.choice(_TOPICS)}\n\n{rng.choice(_SENTENCES)}"
            self._commit(repo, message, user, at, files, f"seed:{i}")

    def _commit(self, repo: Repo, message: str, user: str, at: float,
                files: list[tuple[str, str, int, int]], salt: str) -> Commit:
        parent = [repo.commits[-1].sha] if repo.commits else []
        sha = hashlib.sha1(f"{repo.full_name}:{salt}:{message}:{at}".encode()).hexdigest()
        commit = Commit(sha, message, user, f"{user}@example.com", at, parent, files)
        repo.add_commit(commit)
        return commit

    # --- routes -----------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        api = self._api
        prefix = "/repos/{owner}/{repo}"
        return [
            Route("/rate_limit", api(self.get_rate_limit, counts=False), methods=["GET"]),
            Route("/user", api(self.get_authenticated_user), methods=["GET"]),
            Route("/user/repos", api(self.list_user_repos), methods=["GET"]),
            Route(prefix, api(self.get_repo), methods=["GET"]),
            Route(f"{prefix}/issues", api(self.list_issues), methods=["GET"]),
            Route(f"{prefix}/issues/comments", api(self.list_repo_comments), methods=["GET"]),
            Route(f"{prefix}/issues/{{number:int}}", api(self.get_issue), methods=["GET"]),
            Route(f"{prefix}/issues/{{number:int}}/comments", api(self.list_issue_comments), methods=["GET"]),
            Route(f"{prefix}/pulls", api(self.list_pulls), methods=["GET"]),
            Route(f"{prefix}/pulls/comments", api(self.list_repo_review_comments), methods=["GET"]),
            Route(f"{prefix}/pulls/{{number:int}}", api(self.get_pull), methods=["GET"]),
            Route(f"{prefix}/pulls/{{number:int}}/reviews", api(self.list_reviews), methods=["GET"]),
            Route(f"{prefix}/pulls/{{number:int}}/comments", api(self.list_review_comments), methods=["GET"]),
            Route(f"{prefix}/commits", api(self.list_commits), methods=["GET"]),
            Route(f"{prefix}/commits/{{sha}}", api(self.get_commit), methods=["GET"]),
            Route(f"{prefix}/collaborators", api(self.list_collaborators), methods=["GET"]),
            Route("/users/{login}", api(self.get_user), methods=["GET"]),
            Route("/orgs/{org}/hooks/{hook_id:int}/deliveries", api(self.list_hook_deliveries), methods=["GET"]),
            Route("/orgs/{org}/hooks/{hook_id:int}/deliveries/{delivery_id:int}",
                  api(self.get_hook_delivery), methods=["GET"]),
            Route("/orgs/{org}/hooks/{hook_id:int}/deliveries/{delivery_id:int}/attempts",
                  api(self.redeliver_attempt), methods=["POST"]),
            Route("/{path:path}", api(self.not_found),
                  methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
        ]

    def _api(self, handler: Handler, counts: bool = True) -> Handler:
        """Wrap a handler with auth, the rate limits and the ``x-ratelimit-*`` headers."""

        async def endpoint(request: Request) -> Response:
            self.requests += 1
            caller, refused = self._authenticate(request)
            if refused is not None:  # a bad token is charged to the anonymous budget
                self._rate_headers(refused, *self._budget("anonymous"))
                return refused
            budget, limit = self._budget(caller)
            if self.secondary_remaining > 0:
                self.secondary_remaining -= 1
                response: Response = self._secondary_limited()
            elif counts and limit and budget.used >= limit:
                response = error(
                    self.limit_status,
                    f"API rate limit exceeded for {caller}. (But here's the good news: "
                    "Authenticated requests get a higher rate limit.)",
                )
            else:
                if counts:
                    budget.used += 1
                request.state.caller = caller
                response = await handler(request)
            self._rate_headers(response, budget, limit)
            if caller == "token" and self.token_scopes is not None:
                response.headers["x-oauth-scopes"] = ", ".join(sorted(self.token_scopes))
                response.headers["x-accepted-oauth-scopes"] = "repo" if "/repos/" in request.url.path else ""
            return response

        return endpoint

    def _authenticate(self, request: Request) -> tuple[str, Response | None]:
        raw = request.headers.get("authorization", "")
        if not raw:
            return "anonymous", None
        scheme, _, token = raw.partition(" ")
        if scheme.lower() not in ("bearer", "token") or not hmac.compare_digest(token.strip(), self.token):
            return "", error(401, "Bad credentials")
        return "token", None

    def _budget(self, caller: str) -> tuple[RateWindow, int]:
        """The caller's window (rolled over when elapsed) and its limit (0 = unlimited)."""
        now = time.time()
        budget = self.budgets.setdefault(caller, RateWindow(now))
        if now >= budget.start + self.window:
            budget.start, budget.used = now, 0
        if caller == "anonymous":
            return budget, ANONYMOUS_LIMIT
        knob = self.knobs.rate_limit
        if knob is None:
            return budget, DEFAULT_PRIMARY_LIMIT
        return budget, max(1, round(knob)) if knob > 0 else 0  # 0 = unlimited

    def _rate_headers(self, response: Response, budget: RateWindow, limit: int) -> None:
        shown = limit or DEFAULT_PRIMARY_LIMIT  # unlimited still shows GitHub's usual figure
        response.headers["x-ratelimit-limit"] = str(shown)
        response.headers["x-ratelimit-remaining"] = str(max(0, shown - budget.used) if limit else shown)
        response.headers["x-ratelimit-used"] = str(budget.used)
        response.headers["x-ratelimit-reset"] = str(math.ceil(budget.start + self.window))
        response.headers["x-ratelimit-resource"] = "core"

    def _secondary_limited(self) -> Response:
        response = JSONResponse(
            {"message": "You have exceeded a secondary rate limit. Please wait a few minutes "
                        "before you try again.",
             "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
                                  "#about-secondary-rate-limits"},
            403,
        )
        response.headers["retry-after"] = str(self.secondary_retry_after)
        return response

    def _repo(self, request: Request) -> Repo | None:
        """The repository named in the path, if the caller can see it (private → token only)."""
        key = f"{request.path_params['owner']}/{request.path_params['repo']}".lower()
        repo = self.repos.get(key)
        if repo is None or repo.deleted or request.state.caller != "token":
            return None
        if repo.private and not self._sees_private():
            return None
        return repo

    def _sees_private(self) -> bool:
        """A classic token needs the ``repo`` scope for private repositories (a fine-grained one
        is granted repositories, which the sandbox models as all of them)."""
        return self.token_scopes is None or "repo" in self.token_scopes

    # --- API handlers -----------------------------------------------------------------------
    async def not_found(self, request: Request) -> Response:
        return error(404, "Not Found")

    async def get_rate_limit(self, request: Request) -> Response:
        budget, limit = self._budget(request.state.caller)
        core = {"limit": limit or DEFAULT_PRIMARY_LIMIT, "used": budget.used,
                "remaining": max(0, (limit or DEFAULT_PRIMARY_LIMIT) - budget.used),
                "reset": math.ceil(budget.start + self.window)}
        return JSONResponse({"resources": {"core": core}, "rate": core})

    async def list_user_repos(self, request: Request) -> Response:
        if request.state.caller != "token":
            return error(401, "Requires authentication")
        repos = [self.repo_json(r) for r in self.repos.values()
                 if not r.deleted and (not r.private or self._sees_private())]
        return self._paged(request, repos)

    async def get_authenticated_user(self, request: Request) -> Response:
        """GET /user: who the token is (401 "Requires authentication" without one)."""
        if request.state.caller != "token":
            return error(401, "Requires authentication")
        return JSONResponse({**self.user_json(TOKEN_LOGIN), "name": "vector-sync (sandbox)",
                             "email": None, "type": "User"})

    async def get_repo(self, request: Request) -> Response:
        repo = self._repo(request)
        return error(404, "Not Found") if repo is None else JSONResponse(self.repo_json(repo))

    async def list_collaborators(self, request: Request) -> Response:
        """GET /repos/{owner}/{repo}/collaborators: paged; refused (403 "Must have push
        access...", or 404) when the token may not list them."""
        repo = self._repo(request)
        if repo is None:
            return error(404, "Not Found")
        if not repo.collaborators_listable:
            if repo.collaborators_status == 404:
                return error(404, "Not Found")
            return error(403, "Must have push access to view repository collaborators.")
        people = [{**self.user_json(login), "role_name": role,
                   "permissions": {"pull": True, "triage": role != "read", "push": role in ("write", "maintain", "admin"),
                                   "maintain": role in ("maintain", "admin"), "admin": role == "admin"}}
                  for login, role in sorted(repo.collaborators.items())]
        return self._paged(request, people)

    async def get_user(self, request: Request) -> Response:
        """GET /users/{login}: ``email`` is the public profile email (null when hidden)."""
        login = request.path_params["login"]
        known = set(_USERS) | set(self.emails) | {c for r in self.repos.values() for c in r.collaborators}
        if login not in known:
            return error(404, "Not Found")
        return JSONResponse({**self.user_json(login), "name": login, "email": self.emails.get(login)})

    async def list_issues(self, request: Request) -> Response:
        repo = self._repo(request)
        if repo is None:
            return error(404, "Not Found")
        q = request.query_params
        state = q.get("state", "open")
        sort = q.get("sort", "created")
        direction = q.get("direction", "desc")
        since = parse_iso(q["since"]) if "since" in q else None
        if state not in ("open", "closed", "all"):
            return validation_failed("Issue", "state")
        if sort not in ("created", "updated", "comments") or direction not in ("asc", "desc"):
            return validation_failed("Issue", "sort" if sort not in ("created", "updated", "comments") else "direction")
        if "since" in q and since is None:
            return validation_failed("Issue", "since")
        wanted = [i for i in repo.issues.values() if i.visible and (state == "all" or i.state == state)
                  and (since is None or i.updated_at >= since)]
        labels = {x.strip() for x in q.get("labels", "").split(",") if x.strip()}
        if labels:
            wanted = [i for i in wanted if labels <= set(i.labels)]
        key = {"created": lambda i: (i.created_at, i.number), "updated": lambda i: (i.updated_at, i.number),
               "comments": lambda i: (len(i.comments), i.number)}[sort]
        wanted.sort(key=key, reverse=direction == "desc")
        return self._paged(request, wanted, lambda i: self.issue_json(repo, i))

    async def get_issue(self, request: Request) -> Response:
        repo = self._repo(request)
        number = request.path_params["number"]
        issue = repo.issues.get(number) if repo else None
        if repo is None or issue is None:
            return error(404, "Not Found")
        if issue.deleted:
            return error(410, "This issue was deleted")
        if issue.moved_to is not None:
            return self._moved(request, *issue.moved_to)
        return JSONResponse(self.issue_json(repo, issue))

    def _moved(self, request: Request, full_name: str, number: int) -> Response:
        """301 to the new home when the caller can read it, else 404 (GitHub's documented rule)."""
        target = self.repos.get(full_name)
        if target is None or target.deleted:
            return error(404, "Not Found")
        url = f"{self.base_url or str(request.base_url).rstrip('/')}/repos/{full_name}/issues/{number}"
        response = error(301, "Moved Permanently", url=url)
        response.headers["location"] = url
        return response

    async def list_issue_comments(self, request: Request) -> Response:
        repo = self._repo(request)
        issue = repo.issues.get(request.path_params["number"]) if repo else None
        if repo is None or issue is None or issue.moved_to is not None:
            return error(404, "Not Found")
        if issue.deleted:
            return error(410, "This issue was deleted")
        since = parse_iso(request.query_params["since"]) if "since" in request.query_params else None
        comments = [c for c in issue.comments if since is None or c.updated_at >= since]
        return self._paged(request, comments, lambda c: self.comment_json(repo, issue, c))

    async def list_repo_comments(self, request: Request) -> Response:
        repo = self._repo(request)
        if repo is None:
            return error(404, "Not Found")
        q = request.query_params
        since = parse_iso(q["since"]) if "since" in q else None
        if "since" in q and since is None:
            return validation_failed("IssueComment", "since")
        sort = q.get("sort", "created")
        pairs = [(i, c) for i in repo.issues.values() if i.visible for c in i.comments
                 if since is None or c.updated_at >= since]
        field_name = "updated_at" if sort == "updated" else "created_at"
        pairs.sort(key=lambda p: (getattr(p[1], field_name), p[1].id), reverse=q.get("direction", "asc") == "desc")
        return self._paged(request, pairs, lambda p: self.comment_json(repo, p[0], p[1]))

    async def list_pulls(self, request: Request) -> Response:
        """``since`` is not a parameter of this endpoint: GitHub ignores it, and so do we."""
        repo = self._repo(request)
        if repo is None:
            return error(404, "Not Found")
        q = request.query_params
        state = q.get("state", "open")
        sort = q.get("sort", "created")
        if state not in ("open", "closed", "all"):
            return validation_failed("PullRequest", "state")
        if sort not in ("created", "updated", "popularity", "long-running"):
            return validation_failed("PullRequest", "sort")
        # GitHub: direction defaults to desc for sort=created (or none given), else asc.
        direction = q.get("direction", "desc" if sort == "created" else "asc")
        pulls = [i for i in repo.issues.values() if i.is_pull and i.visible and (state == "all" or i.state == state)]
        key = {"created": lambda i: (i.created_at, i.number), "updated": lambda i: (i.updated_at, i.number),
               "popularity": lambda i: (len(i.comments), i.number),
               "long-running": lambda i: (-i.created_at, i.number)}[sort]
        pulls.sort(key=key, reverse=direction == "desc")
        return self._paged(request, pulls, lambda i: self.pull_json(repo, i))

    async def get_pull(self, request: Request) -> Response:
        repo = self._repo(request)
        pull = repo.issues.get(request.path_params["number"]) if repo else None
        if repo is None or pull is None or not pull.is_pull or not pull.visible:
            return error(404, "Not Found")
        data = self.pull_json(repo, pull)
        data |= {"comments": len(pull.comments), "review_comments": len(pull.review_comments),
                 "commits": 1, "changed_files": 1,
                 "mergeable": None if pull.state == "closed" else True}
        return JSONResponse(data)

    def _pull(self, request: Request) -> tuple[Repo, Issue] | None:
        repo = self._repo(request)
        pull = repo.issues.get(request.path_params["number"]) if repo else None
        if repo is None or pull is None or not pull.is_pull or not pull.visible:
            return None
        return repo, pull

    async def list_reviews(self, request: Request) -> Response:
        """GET /pulls/{n}/reviews: submitted reviews in chronological order (paged)."""
        found = self._pull(request)
        if found is None:
            return error(404, "Not Found")
        repo, pull = found
        return self._paged(request, pull.reviews, lambda r: self.review_json(repo, pull, r))

    async def list_review_comments(self, request: Request) -> Response:
        """GET /pulls/{n}/comments: the PR's review comments; ``sort`` created (default) or
        updated, ``direction`` (default asc), ``since`` (updated at or after)."""
        found = self._pull(request)
        if found is None:
            return error(404, "Not Found")
        repo, pull = found
        picked = self._review_comments(request, [(pull, c) for c in pull.review_comments])
        if isinstance(picked, Response):
            return picked
        return self._paged(request, picked, lambda p: self.review_comment_json(repo, p[0], p[1]))

    async def list_repo_review_comments(self, request: Request) -> Response:
        """GET /pulls/comments: every review comment in the repository, same parameters."""
        repo = self._repo(request)
        if repo is None:
            return error(404, "Not Found")
        pairs = [(i, c) for i in repo.issues.values() if i.is_pull and i.visible for c in i.review_comments]
        picked = self._review_comments(request, pairs)
        if isinstance(picked, Response):
            return picked
        return self._paged(request, picked, lambda p: self.review_comment_json(repo, p[0], p[1]))

    def _review_comments(self, request: Request, pairs: list[tuple[Issue, ReviewComment]]
                         ) -> list[tuple[Issue, ReviewComment]] | Response:
        q = request.query_params
        since = parse_iso(q["since"]) if "since" in q else None
        if "since" in q and since is None:
            return validation_failed("PullRequestReviewComment", "since")
        sort, direction = q.get("sort", "created"), q.get("direction", "asc")
        if sort not in ("created", "updated") or direction not in ("asc", "desc"):
            return validation_failed("PullRequestReviewComment", "sort" if sort not in ("created", "updated")
                                     else "direction")
        picked = [p for p in pairs if since is None or p[1].updated_at >= since]
        key = "updated_at" if sort == "updated" else "created_at"
        picked.sort(key=lambda p: (getattr(p[1], key), p[1].id), reverse=direction == "desc")
        return picked

    async def list_commits(self, request: Request) -> Response:
        repo = self._repo(request)
        if repo is None:
            return error(404, "Not Found")
        if not repo.commits:
            return error(409, "Git Repository is empty.")
        q = request.query_params
        history = self._history(repo, q.get("sha", repo.default_branch))
        if history is None:
            return error(404, "Not Found")
        since = parse_iso(q["since"]) if "since" in q else None
        until = parse_iso(q["until"]) if "until" in q else None
        if ("since" in q and since is None) or ("until" in q and until is None):
            return validation_failed("Commit", "since" if since is None else "until")
        picked = [c for c in history if (since is None or c.date >= since) and (until is None or c.date <= until)]
        return self._paged(request, picked, lambda c: self.commit_json(repo, c))

    def _history(self, repo: Repo, ref: str) -> list[Commit] | None:
        """Commits reachable from ``ref`` (branch name or sha), newest first."""
        if ref in (repo.default_branch, f"refs/heads/{repo.default_branch}"):
            end = len(repo.commits)
        else:
            matches = [i for i, c in enumerate(repo.commits) if c.sha.startswith(ref.lower())] if len(ref) >= 4 else []
            if len(matches) != 1:
                return None
            end = matches[0] + 1
        return repo.commits[:end][::-1]

    async def get_commit(self, request: Request) -> Response:
        repo = self._repo(request)
        if repo is None:
            return error(404, "Not Found")
        sha = request.path_params["sha"]
        commit = repo.by_sha.get(sha.lower())
        if commit is None and len(sha) >= 4:
            found = [c for c in repo.commits if c.sha.startswith(sha.lower())]
            commit = found[0] if len(found) == 1 else None
        if commit is None:
            return error(422, f"No commit found for SHA: {sha}")
        return JSONResponse(self.commit_json(repo, commit, detail=True))

    # --- the organisation hook's deliveries ("Redeliver failed deliveries") --------------------
    def _hook(self, request: Request) -> bool:
        return (request.state.caller == "token" and request.path_params["org"].lower() == ORG
                and request.path_params["hook_id"] == HOOK_ID)

    def _delivery_rows(self) -> list[dict[str, Any]]:
        """Every finished attempt, as GitHub lists them: ``id`` (per attempt), ``guid`` (the
        ``X-GitHub-Delivery``, shared by redeliveries), ``status_code`` (0 when the receiver
        could not be reached, as for a dropped webhook), ``redelivery``. Oldest first."""
        rows: list[dict[str, Any]] = []
        guids: set[str] = set()
        for n, sent in enumerate(self.webhooks.deliveries):
            in_flight = sent.status is None and not sent.dropped and not sent.error
            guid = sent.headers.get("X-GitHub-Delivery", "")
            if in_flight or not guid:
                continue
            code = sent.status or 0
            status = ("OK" if 200 <= code < 300 else f"Invalid HTTP Response: {code}") if code else \
                "failed to connect to host"
            payload = _delivered_payload(sent.body)
            rows.append({
                "id": n + 1, "guid": guid, "delivered_at": iso(sent.sent_at), "redelivery": guid in guids,
                "duration": 0.01, "status": status, "status_code": code,
                "event": sent.headers.get("X-GitHub-Event", ""), "action": payload.get("action"),
                "installation_id": None, "repository_id": (payload.get("repository") or {}).get("id"),
                "throttled_at": None,
            })
            guids.add(guid)
        return rows

    async def list_hook_deliveries(self, request: Request) -> Response:
        """GET /orgs/{org}/hooks/{hook_id}/deliveries: newest first, ``per_page`` (default 30,
        max 100), ``cursor`` paging through ``Link: rel="next"``, ``status`` success|failure."""
        if not self._hook(request):
            return error(404, "Not Found")
        q = request.query_params
        rows = self._delivery_rows()[::-1]
        if q.get("status") in ("success", "failure"):
            rows = [r for r in rows if (200 <= r["status_code"] < 300) == (q["status"] == "success")]
        cursor = q.get("cursor", "")
        if cursor:
            try:
                start = int(cursor.removeprefix("v1_"))
            except ValueError:
                return validation_failed("HookDelivery", "cursor")
            rows = [r for r in rows if r["id"] <= start]
        per_page = _int(q.get("per_page"), 30, 1, 100)
        page, rest = rows[:per_page], rows[per_page:]
        response = JSONResponse(page)
        if rest:
            url = request.url.include_query_params(cursor=f"v1_{rest[0]['id']}")
            response.headers["link"] = f'<{url}>; rel="next"'
        return response

    async def get_hook_delivery(self, request: Request) -> Response:
        """GET …/deliveries/{id}: one attempt with its ``request`` (headers and payload, as
        JSON whatever the hook's content type) and ``response``."""
        if not self._hook(request):
            return error(404, "Not Found")
        number = request.path_params["delivery_id"]
        row = next((r for r in self._delivery_rows() if r["id"] == number), None)
        if row is None:
            return error(404, "Not Found")
        sent = self.webhooks.deliveries[number - 1]
        headers = {k: v for k, v in sent.headers.items() if k.lower() != "content-type"}
        return JSONResponse({**row, "url": f"{self._api_base()}/orgs/{ORG}/hooks/{HOOK_ID}/deliveries/{number}",
                             "request": {"headers": headers, "payload": _delivered_payload(sent.body)},
                             "response": {"headers": {}, "payload": None}})

    async def redeliver_attempt(self, request: Request) -> Response:
        """POST …/deliveries/{id}/attempts: send that delivery again (same bytes, same
        ``X-GitHub-Delivery``); 202 Accepted (or ``refuse_redelivery``'s status)."""
        if not self._hook(request):
            return error(404, "Not Found")
        number = request.path_params["delivery_id"]
        if not 1 <= number <= len(self.webhooks.deliveries):
            return error(404, "Not Found")
        if self.refuse_redelivery:
            return validation_failed("HookDelivery", "id") if self.refuse_redelivery == 422 else \
                error(self.refuse_redelivery, "Redelivery refused")
        past = self.webhooks.deliveries[number - 1]
        self.webhooks.send_soon(past.body, dict(past.headers))
        return JSONResponse({}, 202)

    # --- paging -----------------------------------------------------------------------------
    def _paged(self, request: Request, items: list[Any], render: Callable[[Any], Any] | None = None) -> Response:
        """One page of ``items`` by ``page``/``per_page`` with GitHub's ``Link`` header."""
        per_page = _int(request.query_params.get("per_page"), 30, 1, 100)
        page = _int(request.query_params.get("page"), 1, 1, 10**9)
        last = max(1, math.ceil(len(items) / per_page))
        chunk = items[(page - 1) * per_page: page * per_page]
        response = JSONResponse([render(x) for x in chunk] if render else chunk)
        links = []
        if page > 1:
            links += [(min(page - 1, last), "prev")]
        if page < last:
            links += [(page + 1, "next"), (last, "last")]
        if page > 1:
            links += [(1, "first")]
        if links:
            response.headers["link"] = ", ".join(
                f'<{request.url.include_query_params(page=p)}>; rel="{rel}"' for p, rel in links
            )
        return response

    # --- JSON shapes ------------------------------------------------------------------------
    def _api_base(self) -> str:
        return self.base_url or "https://api.github.com"

    def user_json(self, login: str) -> dict[str, Any]:
        uid = int(hashlib.sha1(login.encode()).hexdigest()[:6], 16)
        return {"login": login, "id": uid, "node_id": f"U_{uid}", "type": "User", "site_admin": False,
                "url": f"{self._api_base()}/users/{login}", "html_url": f"https://github.com/{login}"}

    def repo_json(self, repo: Repo) -> dict[str, Any]:
        api = f"{self._api_base()}/repos/{repo.full_name}"
        pushed = repo.commits[-1].date if repo.commits else repo.created_at
        return {
            "id": repo.id, "node_id": f"R_{repo.id}", "name": repo.name, "full_name": repo.full_name,
            "private": repo.private, "visibility": "private" if repo.private else "public",
            "owner": {**self.user_json(repo.owner), "type": "Organization"},
            "html_url": f"https://github.com/{repo.full_name}", "url": api, "archived": repo.archived,
            "disabled": False, "default_branch": repo.default_branch, "created_at": iso(repo.created_at),
            "updated_at": iso(pushed), "pushed_at": iso(pushed),
            "open_issues_count": sum(1 for i in repo.issues.values() if i.visible and i.state == "open"),
        }

    def issue_json(self, repo: Repo, issue: Issue) -> dict[str, Any]:
        api = f"{self._api_base()}/repos/{repo.full_name}"
        html = f"https://github.com/{repo.full_name}/{'pull' if issue.is_pull else 'issues'}/{issue.number}"
        data: dict[str, Any] = {
            "url": f"{api}/issues/{issue.number}", "repository_url": api,
            "comments_url": f"{api}/issues/{issue.number}/comments", "html_url": html,
            "id": issue.id, "node_id": f"I_{issue.id}", "number": issue.number, "title": issue.title,
            "user": self.user_json(issue.user), "labels": [self._label(n) for n in issue.labels],
            "state": issue.state, "state_reason": issue.state_reason, "locked": False,
            "assignee": None, "assignees": [], "milestone": None, "comments": len(issue.comments),
            "created_at": iso(issue.created_at), "updated_at": iso(issue.updated_at),
            "closed_at": iso(issue.closed_at) if issue.closed_at else None,
            "author_association": "MEMBER", "body": issue.body,
        }
        if issue.is_pull:
            data["draft"] = issue.draft
            data["pull_request"] = {
                "url": f"{api}/pulls/{issue.number}", "html_url": html,
                "diff_url": f"{html}.diff", "patch_url": f"{html}.patch",
                "merged_at": iso(issue.merged_at) if issue.merged_at else None,
            }
        return data

    def _label(self, name: str) -> dict[str, Any]:
        lid = int(hashlib.sha1(name.encode()).hexdigest()[:6], 16)
        return {"id": lid, "node_id": f"LA_{lid}", "name": name, "color": "ededed", "default": False}

    def pull_json(self, repo: Repo, pull: Issue) -> dict[str, Any]:
        api = f"{self._api_base()}/repos/{repo.full_name}"
        head_sha = repo.commits[-1].sha if repo.commits else "0" * 40
        return {
            "url": f"{api}/pulls/{pull.number}", "id": pull.id + 10**7, "node_id": f"PR_{pull.id}",
            "html_url": f"https://github.com/{repo.full_name}/pull/{pull.number}",
            "issue_url": f"{api}/issues/{pull.number}", "number": pull.number, "state": pull.state,
            "locked": False, "title": pull.title, "user": self.user_json(pull.user), "body": pull.body,
            "labels": [self._label(n) for n in pull.labels],
            "created_at": iso(pull.created_at), "updated_at": iso(pull.updated_at),
            "closed_at": iso(pull.closed_at) if pull.closed_at else None,
            "merged_at": iso(pull.merged_at) if pull.merged_at else None,
            "merged": pull.merged_at is not None, "draft": pull.draft,
            "head": {"label": f"{repo.owner}:{pull.head}", "ref": pull.head, "sha": head_sha},
            "base": {"label": f"{repo.owner}:{pull.base}", "ref": pull.base, "sha": head_sha},
            "author_association": "MEMBER",
        }

    def comment_json(self, repo: Repo, issue: Issue, comment: Comment) -> dict[str, Any]:
        api = f"{self._api_base()}/repos/{repo.full_name}"
        return {
            "id": comment.id, "node_id": f"IC_{comment.id}", "url": f"{api}/issues/comments/{comment.id}",
            "html_url": f"https://github.com/{repo.full_name}/issues/{issue.number}#issuecomment-{comment.id}",
            "issue_url": f"{api}/issues/{issue.number}", "body": comment.body,
            "user": self.user_json(comment.user), "created_at": iso(comment.created_at),
            "updated_at": iso(comment.updated_at), "author_association": "MEMBER",
        }

    def review_json(self, repo: Repo, pull: Issue, review: Review) -> dict[str, Any]:
        html = f"https://github.com/{repo.full_name}/pull/{pull.number}"
        return {
            "id": review.id, "node_id": f"PRR_{review.id}", "user": self.user_json(review.user),
            "body": review.body, "state": review.state, "html_url": f"{html}#pullrequestreview-{review.id}",
            "pull_request_url": f"{self._api_base()}/repos/{repo.full_name}/pulls/{pull.number}",
            "author_association": "MEMBER", "submitted_at": iso(review.submitted_at),
            "commit_id": review.commit_id,
        }

    def review_comment_json(self, repo: Repo, pull: Issue, comment: ReviewComment) -> dict[str, Any]:
        api = f"{self._api_base()}/repos/{repo.full_name}"
        data: dict[str, Any] = {
            "id": comment.id, "node_id": f"PRRC_{comment.id}", "url": f"{api}/pulls/comments/{comment.id}",
            "pull_request_review_id": comment.review_id, "diff_hunk": comment.diff_hunk, "path": comment.path,
            "position": comment.line, "original_position": comment.line, "commit_id": comment.commit_id,
            "original_commit_id": comment.commit_id, "user": self.user_json(comment.user), "body": comment.body,
            "created_at": iso(comment.created_at), "updated_at": iso(comment.updated_at),
            "html_url": f"https://github.com/{repo.full_name}/pull/{pull.number}#discussion_r{comment.id}",
            "pull_request_url": f"{api}/pulls/{pull.number}", "author_association": "MEMBER",
            "start_line": None, "original_start_line": None, "start_side": None,
            "line": comment.line, "original_line": comment.line, "side": "RIGHT", "subject_type": "line",
        }
        if comment.in_reply_to_id is not None:
            data["in_reply_to_id"] = comment.in_reply_to_id
        return data

    def commit_json(self, repo: Repo, commit: Commit, detail: bool = False) -> dict[str, Any]:
        api = f"{self._api_base()}/repos/{repo.full_name}"
        person = {"name": commit.author, "email": commit.email, "date": iso(commit.date)}
        data: dict[str, Any] = {
            "sha": commit.sha, "node_id": f"C_{commit.sha[:12]}", "url": f"{api}/commits/{commit.sha}",
            "html_url": f"https://github.com/{repo.full_name}/commit/{commit.sha}",
            "commit": {"author": person, "committer": person, "message": commit.message,
                       "tree": {"sha": hashlib.sha1(commit.sha.encode()).hexdigest()}, "comment_count": 0,
                       "url": f"{api}/git/commits/{commit.sha}"},
            "author": self.user_json(commit.author), "committer": self.user_json(commit.author),
            "parents": [{"sha": p, "url": f"{api}/commits/{p}"} for p in commit.parents],
        }
        if detail:
            adds, dels = sum(f[2] for f in commit.files), sum(f[3] for f in commit.files)
            data["stats"] = {"total": adds + dels, "additions": adds, "deletions": dels}
            data["files"] = [{"filename": f, "status": s, "additions": a, "deletions": d, "changes": a + d}
                             for f, s, a, d in commit.files]
        return data

    # --- webhooks ---------------------------------------------------------------------------
    def emit(self, event: str, payload: dict[str, Any], repo: Repo | None = None,
             delivery: str | None = None) -> str:
        """Sign and send one webhook (fire and forget, never retried); returns its delivery GUID."""
        guid = delivery or str(uuid.uuid4())
        if repo is not None:
            payload.setdefault("repository", self.repo_json(repo))
            payload.setdefault("organization", {"login": repo.owner, "id": 1})
        payload.setdefault("sender", self.user_json(payload.pop("_sender", "octocat")))
        raw = json.dumps(payload, separators=(",", ":"))
        if self.content_type == "form":
            body, ctype = urlencode({"payload": raw}).encode(), "application/x-www-form-urlencoded"
        else:
            body, ctype = raw.encode(), "application/json"
        headers = {
            "Content-Type": ctype, "User-Agent": "GitHub-Hookshot/5f0e2a1", "X-GitHub-Event": event,
            "X-GitHub-Delivery": guid, "X-GitHub-Hook-ID": str(HOOK_ID),
            "X-GitHub-Hook-Installation-Target-Type": "organization",
            "X-GitHub-Hook-Installation-Target-ID": "1",
            "X-Hub-Signature": sign(self.secret, body, "sha1"),
            "X-Hub-Signature-256": sign(self.secret, body, "sha256"),
        }
        self.webhooks.send_soon(body, headers)  # no retry policy: GitHub never redelivers by itself
        return guid

    # --- control API ------------------------------------------------------------------------
    def control_routes(self) -> list[BaseRoute]:
        p = "/repos/{owner}/{repo}"
        return [
            Route("/truth", self.c_truth, methods=["GET"]),
            Route("/ping", self.c_ping, methods=["POST"]),
            Route("/ratelimit", self.c_ratelimit, methods=["PUT"]),
            Route("/hook", self.c_hook, methods=["PUT"]),
            Route("/deliveries/{guid}/redeliver", self.c_redeliver, methods=["POST"]),
            Route(p, self.c_delete_repo, methods=["DELETE"]),
            Route(f"{p}/archive", self.c_archive, methods=["POST"]),
            Route(f"{p}/access", self.c_access, methods=["PUT"]),
            Route("/token", self.c_token, methods=["PUT"]),
            Route("/users/{login}", self.c_user, methods=["PUT"]),
            Route(f"{p}/issues", self.c_create_issue, methods=["POST"]),
            Route(f"{p}/issues/comments/{{cid:int}}", self.c_edit_comment, methods=["PATCH", "DELETE"]),
            Route(f"{p}/issues/{{number:int}}", self.c_edit_issue, methods=["PATCH"]),
            Route(f"{p}/issues/{{number:int}}", self.c_delete_issue, methods=["DELETE"]),
            Route(f"{p}/issues/{{number:int}}/comments", self.c_add_comment, methods=["POST"]),
            Route(f"{p}/issues/{{number:int}}/transfer", self.c_transfer, methods=["POST"]),
            Route(f"{p}/pulls", self.c_open_pull, methods=["POST"]),
            Route(f"{p}/pulls/{{number:int}}", self.c_edit_pull, methods=["PATCH"]),
            Route(f"{p}/pulls/{{number:int}}/reviews", self.c_submit_review, methods=["POST"]),
            Route(f"{p}/pulls/{{number:int}}/reviews/{{rid:int}}", self.c_edit_review, methods=["PUT"]),
            Route(f"{p}/pulls/{{number:int}}/reviews/{{rid:int}}/dismissals", self.c_dismiss_review,
                  methods=["PUT"]),
            Route(f"{p}/pulls/{{number:int}}/comments", self.c_add_review_comment, methods=["POST"]),
            Route(f"{p}/pulls/comments/{{cid:int}}", self.c_edit_review_comment, methods=["PATCH", "DELETE"]),
            Route(f"{p}/push", self.c_push, methods=["POST"]),
        ]

    def _c_repo(self, request: Request) -> Repo | None:
        key = f"{request.path_params['owner']}/{request.path_params['repo']}".lower()
        repo = self.repos.get(key)
        return None if repo is None or repo.deleted else repo

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        return json.loads(raw) if raw.strip() else {}

    async def c_truth(self, request: Request) -> Response:
        """Ground truth per repo: live issue and PR numbers, commit shas, archived flag."""
        return JSONResponse({r.full_name: {
            "archived": r.archived, "deleted": r.deleted,
            "issues": sorted(n for n, i in r.issues.items() if i.visible and not i.is_pull),
            "pulls": sorted(n for n, i in r.issues.items() if i.visible and i.is_pull),
            "review_comments": sorted(c.id for i in r.issues.values() if i.visible and i.is_pull
                                      for c in i.review_comments),
            "commits": [c.sha for c in reversed(r.commits)],
        } for r in self.repos.values()})

    async def c_ping(self, request: Request) -> Response:
        payload = {"zen": "Keep it logically awesome.", "hook_id": HOOK_ID,
                   "hook": {"type": "Organization", "id": HOOK_ID, "name": "web", "active": True,
                            "events": ["issues", "issue_comment", "pull_request", "pull_request_review",
                                       "pull_request_review_comment", "push", "repository"],
                            "config": {"content_type": self.content_type, "insecure_ssl": "0",
                                       "url": self.webhooks.target or ""}}}
        return JSONResponse({"delivery": self.emit("ping", payload)})

    async def c_ratelimit(self, request: Request) -> Response:
        """``window`` seconds, ``used`` (set the count), ``status`` 403|429, ``secondary`` N refusals."""
        body = await self._body(request)
        if "window" in body:
            self.window = float(body["window"])
        if "status" in body:
            self.limit_status = int(body["status"])
        if "secondary" in body:
            self.secondary_remaining = int(body["secondary"])
            self.secondary_retry_after = int(body.get("retry_after", self.secondary_retry_after))
        if body.get("reset"):
            self.budgets.clear()
        if "used" in body:
            self._budget("token")[0].used = int(body["used"])
        return JSONResponse({"window": self.window, "status": self.limit_status,
                             "secondary": self.secondary_remaining})

    async def c_hook(self, request: Request) -> Response:
        """``content_type`` json|form; ``refuse_redelivery`` a status (or null)."""
        body = await self._body(request)
        if "refuse_redelivery" in body:
            refuse = body["refuse_redelivery"]
            if refuse is not None and (not isinstance(refuse, int) or not 400 <= refuse < 600):
                return JSONResponse({"error": "refuse_redelivery must be an HTTP error status or null"}, 400)
            self.refuse_redelivery = refuse
        if "content_type" in body or "refuse_redelivery" not in body:
            if body.get("content_type") not in ("json", "form"):
                return JSONResponse({"error": "content_type must be json or form"}, 400)
            self.content_type = body["content_type"]
        return JSONResponse({"content_type": self.content_type, "refuse_redelivery": self.refuse_redelivery})

    async def c_redeliver(self, request: Request) -> Response:
        """Send a past delivery again, byte for byte, with the same ``X-GitHub-Delivery``."""
        guid = request.path_params["guid"]
        for past in self.webhooks.deliveries:
            if past.headers.get("X-GitHub-Delivery") == guid:
                self.webhooks.send_soon(past.body, dict(past.headers))
                return JSONResponse({"delivery": guid})
        return JSONResponse({"error": f"no delivery {guid}"}, 404)

    async def c_delete_repo(self, request: Request) -> Response:
        repo = self._c_repo(request)
        if repo is None:
            return JSONResponse({"error": "no such repo"}, 404)
        payload = {"action": "deleted", "repository": self.repo_json(repo)}
        repo.deleted = True
        # Only organisation hooks hear of this (a repository hook is deleted with its repo).
        return JSONResponse({"delivery": self.emit("repository", payload, repo)})

    async def c_archive(self, request: Request) -> Response:
        repo = self._c_repo(request)
        if repo is None:
            return JSONResponse({"error": "no such repo"}, 404)
        archived = bool((await self._body(request)).get("archived", True))
        if archived == repo.archived:
            return JSONResponse({"archived": archived, "delivery": None})
        repo.archived = archived
        action = "archived" if archived else "unarchived"
        return JSONResponse({"archived": archived, "delivery": self.emit("repository", {"action": action}, repo)})

    async def c_access(self, request: Request) -> Response:
        """``{"private"?, "collaborators"?: {login: role} | [login], "listable"?, "status"?}``."""
        repo = self._c_repo(request)
        if repo is None:
            return JSONResponse({"error": "no such repo"}, 404)
        body = await self._body(request)
        if "private" in body:
            repo.private = bool(body["private"])
        people = body.get("collaborators")
        if isinstance(people, list):
            people = {str(login): "write" for login in people}
        if isinstance(people, dict):
            repo.collaborators = {str(k): str(v) for k, v in people.items()}
        if "listable" in body:
            repo.collaborators_listable = bool(body["listable"])
        if body.get("status") in (403, 404):
            repo.collaborators_status = int(body["status"])
        return JSONResponse({"private": repo.private, "collaborators": repo.collaborators,
                             "listable": repo.collaborators_listable})

    async def c_token(self, request: Request) -> Response:
        """``{"scopes": [...] | null}``: the token's OAuth scopes (null: a fine-grained token)."""
        body = await self._body(request)
        scopes = body.get("scopes")
        if scopes is not None and (not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes)):
            return JSONResponse({"error": "scopes must be a list of names or null"}, 400)
        self.token_scopes = None if scopes is None else set(scopes)
        return JSONResponse({"scopes": None if self.token_scopes is None else sorted(self.token_scopes)})

    async def c_user(self, request: Request) -> Response:
        """``{"email": "..." | null}``: the user's public profile email."""
        body = await self._body(request)
        email = body.get("email")
        self.emails[request.path_params["login"]] = str(email) if email else None
        return JSONResponse({"login": request.path_params["login"], "email": self.emails[request.path_params["login"]]})

    async def c_create_issue(self, request: Request) -> Response:
        repo = self._c_repo(request)
        if repo is None:
            return JSONResponse({"error": "no such repo"}, 404)
        body = await self._body(request)
        now = time.time()
        issue = Issue(repo.next_number(), self.next_id(), body.get("title", "Untitled"), body.get("body", ""),
                      body.get("user", "octocat"), now, now, labels=list(body.get("labels", [])))
        repo.issues[issue.number] = issue
        guid = self.emit("issues", {"action": "opened", "issue": self.issue_json(repo, issue),
                                    "_sender": issue.user}, repo)
        return JSONResponse({**self.issue_json(repo, issue), "delivery": guid}, 201)

    def _c_issue(self, request: Request, pull: bool | None = None) -> tuple[Repo, Issue] | Response:
        repo = self._c_repo(request)
        issue = repo.issues.get(request.path_params["number"]) if repo else None
        if repo is None or issue is None or not issue.visible or (pull is not None and issue.is_pull != pull):
            return JSONResponse({"error": "no such issue"}, 404)
        return repo, issue

    async def c_edit_issue(self, request: Request) -> Response:
        """Edit title/body/labels/state; fires edited, labeled, closed or reopened like GitHub."""
        found = self._c_issue(request)
        if isinstance(found, Response):
            return found
        repo, issue = found
        body = await self._body(request)
        now = time.time()
        action = "edited"
        changes: dict[str, Any] = {}
        for key in ("title", "body"):
            if key in body and body[key] != getattr(issue, key):
                changes[key] = {"from": getattr(issue, key)}
                setattr(issue, key, body[key])
        if "labels" in body:
            action = "labeled" if set(body["labels"]) - set(issue.labels) else "unlabeled"
            issue.labels = sorted(body["labels"])
        if body.get("state") in ("open", "closed") and body["state"] != issue.state:
            action = "closed" if body["state"] == "closed" else "reopened"
            issue.state = body["state"]
            issue.closed_at = now if issue.state == "closed" else None
            issue.state_reason = body.get("state_reason", "completed") if issue.state == "closed" else "reopened"
        issue.touch(now)
        event = "pull_request" if issue.is_pull else "issues"
        payload: dict[str, Any] = {"action": action, "_sender": body.get("user", issue.user)}
        if changes:
            payload["changes"] = changes
        if issue.is_pull:
            payload |= {"number": issue.number, "pull_request": self.pull_json(repo, issue)}
        else:
            payload["issue"] = self.issue_json(repo, issue)
        return JSONResponse({"delivery": self.emit(event, payload, repo)})

    async def c_delete_issue(self, request: Request) -> Response:
        found = self._c_issue(request, pull=False)  # pull requests cannot be deleted on GitHub
        if isinstance(found, Response):
            return found
        repo, issue = found
        snapshot = self.issue_json(repo, issue)
        issue.deleted = True
        return JSONResponse({"delivery": self.emit("issues", {"action": "deleted", "issue": snapshot}, repo)})

    async def c_transfer(self, request: Request) -> Response:
        """Move an issue to ``{"to": "owner/repo"}`` (created there if unknown, but then invisible)."""
        found = self._c_issue(request, pull=False)
        if isinstance(found, Response):
            return found
        repo, issue = found
        to = str((await self._body(request)).get("to", "")).lower()
        if to.count("/") != 1 or to == repo.full_name:
            return JSONResponse({"error": "to must be another owner/repo"}, 400)
        target = self.repos.get(to) or self.outside.get(to)
        now = time.time()
        snapshot = self.issue_json(repo, issue)
        if target is None:  # a repo outside the sandbox: the token cannot read it → 404
            owner, name = to.split("/")
            target = self.outside[to] = Repo(owner, name, self.next_id(), now)
        moved = Issue(target.next_number(), self.next_id(), issue.title, issue.body, issue.user,
                      issue.created_at, now, labels=list(issue.labels), comments=list(issue.comments))
        target.issues[moved.number] = moved
        issue.moved_to = (to, moved.number)
        payload = {"action": "transferred", "issue": snapshot,
                   "changes": {"new_issue": self.issue_json(target, moved),
                               "new_repository": self.repo_json(target)}}
        return JSONResponse({"delivery": self.emit("issues", payload, repo), "number": moved.number})

    async def c_add_comment(self, request: Request) -> Response:
        found = self._c_issue(request)
        if isinstance(found, Response):
            return found
        repo, issue = found
        body = await self._body(request)
        now = time.time()
        comment = Comment(self.next_id(), body.get("user", "octocat"), body.get("body", ""), now, now)
        issue.comments.append(comment)
        issue.touch(now)
        return JSONResponse(self._comment_event("created", repo, issue, comment), 201)

    def _comment_event(self, action: str, repo: Repo, issue: Issue, comment: Comment,
                       changes: dict[str, Any] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"action": action, "issue": self.issue_json(repo, issue),
                                   "comment": self.comment_json(repo, issue, comment), "_sender": comment.user}
        if changes:
            payload["changes"] = changes
        return {**self.comment_json(repo, issue, comment), "delivery": self.emit("issue_comment", payload, repo)}

    async def c_edit_comment(self, request: Request) -> Response:
        repo = self._c_repo(request)
        cid = request.path_params["cid"]
        pair = next(((i, c) for i in (repo.issues.values() if repo else []) if i.visible
                     for c in i.comments if c.id == cid), None)
        if repo is None or pair is None:
            return JSONResponse({"error": "no such comment"}, 404)
        issue, comment = pair
        now = time.time()
        issue.touch(now)
        if request.method == "DELETE":
            issue.comments.remove(comment)
            return JSONResponse(self._comment_event("deleted", repo, issue, comment))
        old = comment.body
        comment.body = (await self._body(request)).get("body", comment.body)
        comment.updated_at = now
        return JSONResponse(self._comment_event("edited", repo, issue, comment, {"body": {"from": old}}))

    async def c_open_pull(self, request: Request) -> Response:
        repo = self._c_repo(request)
        if repo is None:
            return JSONResponse({"error": "no such repo"}, 404)
        body = await self._body(request)
        now = time.time()
        pull = Issue(repo.next_number(), self.next_id(), body.get("title", "Untitled"), body.get("body", ""),
                     body.get("user", "octocat"), now, now, labels=list(body.get("labels", [])),
                     head=body.get("head", f"feature/{now:.0f}"), base=body.get("base", repo.default_branch),
                     draft=bool(body.get("draft", False)))
        repo.issues[pull.number] = pull
        payload = {"action": "opened", "number": pull.number, "pull_request": self.pull_json(repo, pull),
                   "_sender": pull.user}
        return JSONResponse({**self.pull_json(repo, pull), "delivery": self.emit("pull_request", payload, repo)}, 201)

    async def c_edit_pull(self, request: Request) -> Response:
        """Like issue edits; ``{"state": "closed", "merged": true}`` merges."""
        found = self._c_issue(request, pull=True)
        if isinstance(found, Response):
            return found
        _, pull = found
        body = await self._body(request)
        if body.get("merged") and body.get("state") == "closed":
            pull.merged_at = time.time()
        return await self.c_edit_issue(_Replay(request, body))

    def _review_event(self, action: str, repo: Repo, pull: Issue, review: Review,
                      changes: dict[str, Any] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"action": action, "review": self.review_json(repo, pull, review),
                                   "pull_request": self.pull_json(repo, pull), "_sender": review.user}
        if changes is not None:
            payload["changes"] = changes
        return {**self.review_json(repo, pull, review),
                "delivery": self.emit("pull_request_review", payload, repo)}

    async def c_submit_review(self, request: Request) -> Response:
        """``{user, body, event: APPROVE|REQUEST_CHANGES|COMMENT, comments: [{path, line, body}]}``:
        a submitted review (its line comments fire ``pull_request_review_comment.created`` first)."""
        found = self._c_issue(request, pull=True)
        if isinstance(found, Response):
            return found
        repo, pull = found
        body = await self._body(request)
        state = {"APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED"}.get(body.get("event", ""), "COMMENTED")
        now = time.time()
        head = repo.commits[-1].sha if repo.commits else "0" * 40
        user = body.get("user", "octocat")
        review = Review(self.next_id(), user, body.get("body", ""), state, now, head)
        pull.reviews.append(review)
        pull.touch(now)
        for spec in body.get("comments", []):
            comment = ReviewComment(self.next_id(), review.id, user, spec.get("body", ""), spec.get("path", "README.md"),
                                    int(spec.get("line", 1)), "@@ -1,3 +1,4 @@\n+changed line", now, now, head)
            pull.review_comments.append(comment)
            self._review_comment_event("created", repo, pull, comment)
        return JSONResponse(self._review_event("submitted", repo, pull, review), 201)

    def _c_review(self, request: Request) -> tuple[Repo, Issue, Review] | Response:
        found = self._c_issue(request, pull=True)
        if isinstance(found, Response):
            return found
        repo, pull = found
        review = next((r for r in pull.reviews if r.id == request.path_params["rid"]), None)
        if review is None:
            return JSONResponse({"error": "no such review"}, 404)
        return repo, pull, review

    async def c_edit_review(self, request: Request) -> Response:
        """``{body}``: ``pull_request_review.edited`` (the PR's ``updated_at`` is left alone)."""
        found = self._c_review(request)
        if isinstance(found, Response):
            return found
        repo, pull, review = found
        old, review.body = review.body, (await self._body(request)).get("body", review.body)
        return JSONResponse(self._review_event("edited", repo, pull, review, {"body": {"from": old}}))

    async def c_dismiss_review(self, request: Request) -> Response:
        """``{message}``: the review's state becomes DISMISSED; ``pull_request_review.dismissed``."""
        found = self._c_review(request)
        if isinstance(found, Response):
            return found
        repo, pull, review = found
        review.state = "DISMISSED"
        pull.touch(time.time())
        return JSONResponse(self._review_event("dismissed", repo, pull, review))

    def _review_comment_event(self, action: str, repo: Repo, pull: Issue, comment: ReviewComment,
                              changes: dict[str, Any] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"action": action, "comment": self.review_comment_json(repo, pull, comment),
                                   "pull_request": self.pull_json(repo, pull), "_sender": comment.user}
        if changes is not None:
            payload["changes"] = changes
        return {**self.review_comment_json(repo, pull, comment),
                "delivery": self.emit("pull_request_review_comment", payload, repo)}

    async def c_add_review_comment(self, request: Request) -> Response:
        """``{user, body, path, line}`` or ``{user, body, in_reply_to}``: a single review comment
        (GitHub wraps it in a COMMENTED review of its own); ``pull_request_review_comment.created``."""
        found = self._c_issue(request, pull=True)
        if isinstance(found, Response):
            return found
        repo, pull = found
        body = await self._body(request)
        now = time.time()
        head = repo.commits[-1].sha if repo.commits else "0" * 40
        user = body.get("user", "octocat")
        parent = next((c for c in pull.review_comments if c.id == body.get("in_reply_to")), None)
        if body.get("in_reply_to") is not None and parent is None:
            return JSONResponse({"error": "no such review comment"}, 404)
        review = Review(self.next_id(), user, "", "COMMENTED", now, head)
        pull.reviews.append(review)
        comment = ReviewComment(self.next_id(), review.id, user, body.get("body", ""),
                                parent.path if parent else body.get("path", "README.md"),
                                parent.line if parent else int(body.get("line", 1)),
                                parent.diff_hunk if parent else "@@ -1,3 +1,4 @@\n+changed line", now, now, head,
                                in_reply_to_id=parent.id if parent else None)
        pull.review_comments.append(comment)
        pull.touch(now)
        return JSONResponse(self._review_comment_event("created", repo, pull, comment), 201)

    async def c_edit_review_comment(self, request: Request) -> Response:
        """PATCH ``{body}`` → ``edited``; DELETE → ``deleted``. Neither moves the PR's
        ``updated_at`` (an assumption; the connector reads ``/pulls/comments?since`` instead)."""
        repo = self._c_repo(request)
        cid = request.path_params["cid"]
        pair = next(((i, c) for i in (repo.issues.values() if repo else []) if i.visible and i.is_pull
                     for c in i.review_comments if c.id == cid), None)
        if repo is None or pair is None:
            return JSONResponse({"error": "no such review comment"}, 404)
        pull, comment = pair
        if request.method == "DELETE":
            pull.review_comments.remove(comment)
            return JSONResponse(self._review_comment_event("deleted", repo, pull, comment))
        old = comment.body
        comment.body = (await self._body(request)).get("body", comment.body)
        comment.updated_at = max(time.time(), comment.updated_at)
        return JSONResponse(self._review_comment_event("edited", repo, pull, comment, {"body": {"from": old}}))

    async def c_push(self, request: Request) -> Response:
        """``{"commits": [{"message", "author", "files": [[name, status]]}], "ref"?, "deleted"?}``."""
        repo = self._c_repo(request)
        if repo is None:
            return JSONResponse({"error": "no such repo"}, 404)
        body = await self._body(request)
        ref = body.get("ref", f"refs/heads/{repo.default_branch}")
        before = repo.commits[-1].sha if repo.commits else "0" * 40
        if body.get("deleted"):
            payload = {"ref": ref, "before": before, "after": "0" * 40, "created": False, "deleted": True,
                       "forced": False, "commits": [], "head_commit": None, "pusher": {"name": "octocat"}}
            return JSONResponse({"delivery": self.emit("push", payload, repo)})
        pushed = []
        now = time.time()
        for n, spec in enumerate(body.get("commits", [])):
            files = [(f[0], f[1] if len(f) > 1 else "modified", 1, 0) for f in spec.get("files", [])]
            on_default = ref == f"refs/heads/{repo.default_branch}"
            commit = self._commit(repo, spec.get("message", "Update"), spec.get("author", "octocat"),
                                  now, files, f"push:{now}:{n}")
            if not on_default:  # keep other branches out of the default branch's history
                repo.commits.pop()
            pushed.append(commit)
        payload = {
            "ref": ref, "before": before, "after": pushed[-1].sha if pushed else before,
            "created": False, "deleted": False, "forced": bool(body.get("forced", False)),
            "base_ref": None, "compare": f"https://github.com/{repo.full_name}/compare/{before[:12]}...",
            "commits": [self._push_commit(repo, c) for c in pushed],
            "head_commit": self._push_commit(repo, pushed[-1]) if pushed else None,
            "pusher": {"name": pushed[-1].author if pushed else "octocat", "email": None},
        }
        return JSONResponse({"delivery": self.emit("push", payload, repo), "shas": [c.sha for c in pushed]})

    def _push_commit(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        person = {"name": commit.author, "email": commit.email, "username": commit.author}
        by_status = {s: [f for f, st, _, _ in commit.files if st == s] for s in ("added", "removed", "modified")}
        return {"id": commit.sha, "tree_id": hashlib.sha1(commit.sha.encode()).hexdigest(), "distinct": True,
                "message": commit.message, "timestamp": iso(commit.date),
                "url": f"https://github.com/{repo.full_name}/commit/{commit.sha}",
                "author": person, "committer": person, **by_status}

    async def trickle(self, rng: random.Random) -> None:
        """One live edit: a new issue, a comment, or a push of one commit to the default branch.
        Same state changes and webhooks as the control API's issue, comment and push calls."""
        repos = [r for r in self.repos.values() if not r.deleted and not r.archived]
        if not repos:
            return
        repo = rng.choice(repos)
        user = rng.choice(_USERS)
        now = time.time()
        items = [i for i in repo.issues.values() if i.visible]
        roll = rng.random()
        if roll < 0.35 or not items:
            issue = Issue(repo.next_number(), self.next_id(), f"{rng.choice(_VERBS)} {rng.choice(_TOPICS)}",
                          " ".join(rng.sample(_SENTENCES, 2)), user, now, now,
                          labels=sorted(rng.sample(_LABELS, rng.randint(0, 2))))
            repo.issues[issue.number] = issue
            self.emit("issues", {"action": "opened", "issue": self.issue_json(repo, issue), "_sender": user}, repo)
        elif roll < 0.7:
            issue = rng.choice(items)
            comment = Comment(self.next_id(), user, rng.choice(_SENTENCES), now, now)
            issue.comments.append(comment)
            issue.touch(now)
            self._comment_event("created", repo, issue, comment)
        else:
            before = repo.commits[-1].sha if repo.commits else "0" * 40
            files = [(f, "modified", rng.randint(1, 40), rng.randint(0, 20))
                     for f in sorted(rng.sample(_FILES, rng.randint(1, 2)))]
            message = f"{rng.choice(_VERBS)} {rng.choice(_TOPICS)}\n\n{rng.choice(_SENTENCES)}"
            commit = self._commit(repo, message, user, now, files, f"trickle:{now}")
            ref = f"refs/heads/{repo.default_branch}"
            self.emit("push", {
                "ref": ref, "before": before, "after": commit.sha, "created": False, "deleted": False,
                "forced": False, "base_ref": None,
                "compare": f"https://github.com/{repo.full_name}/compare/{before[:12]}...{commit.sha[:12]}",
                "commits": [self._push_commit(repo, commit)], "head_commit": self._push_commit(repo, commit),
                "pusher": {"name": user, "email": None},
            }, repo)


class _Replay:
    """A request whose JSON body was already read (so one control handler can call another)."""

    def __init__(self, request: Request, body: dict[str, Any]) -> None:
        self.path_params = request.path_params
        self.method = request.method
        self._body = json.dumps(body).encode()

    async def body(self) -> bytes:
        return self._body


def _delivered_payload(body: bytes) -> dict[str, Any]:
    """A sent webhook's payload, whether it went as JSON or as a form's ``payload=``."""
    try:
        if body.startswith(b"payload="):
            return dict(json.loads(parse_qs(body.decode())["payload"][0]))
        return dict(json.loads(body))
    except (ValueError, KeyError, TypeError):
        return {}


def _int(raw: str | None, default: int, low: int, high: int) -> int:
    """A query integer, clamped like GitHub does (``per_page=500`` → 100); junk → default."""
    try:
        return min(high, max(low, int(raw))) if raw is not None else default
    except ValueError:
        return default


def create(knobs: Knobs | None = None) -> GitHubSimulator:
    return GitHubSimulator(knobs)
