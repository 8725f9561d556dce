"""Jira Cloud simulator: REST API v3 (and v2) search/jql, bulkfetch, issues, comments, projects,
fields, serverInfo, signed webhooks.

Faithful to the facts in research/saas-apis.md §1 (see docs/sandbox/jira.md for the choices made
where a fact is UNCONFIRMED):

- Basic auth (email:API token); anything else is a 401.
- ``/rest/api/3/search/jql`` pages with opaque ``nextPageToken`` only (``startAt`` is ignored,
  there is no ``total``); ``fields`` defaults to ``id``; ``maxResults`` defaults to 50 and is
  capped at 5000 for id/key-only requests and at 100 otherwise; unbounded JQL is a 400.
- JQL dates are read in the account's time zone at minute precision; a number is epoch ms.
- The removed ``/rest/api/{2,3}/search`` answer 410 with Atlassian's migration message.
- Over the request budget: 429 with ``Retry-After`` and ``X-RateLimit-*`` headers.
- Everything is served under ``/rest/api/2/`` too, with rich text as plain text instead of ADF:
  the ``jira`` client (REST v2 by default) and atlassian-python-api connect and page
  (``serverInfo`` answers without auth and says ``deploymentType: Cloud``).

Changes made through the control API (under ``/_sandbox/jira/``) fire the webhooks an admin
webhook with a secret would: ``X-Hub-Signature: sha256=<hmac>``, a stable
``X-Atlassian-Webhook-Identifier`` and ``X-Atlassian-Webhook-Retry`` on retries.
"""

from __future__ import annotations

from collections import Counter

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.base import Delivery, Knobs, Simulator, TokenBucket

EMAIL = "sandbox@example.com"
API_TOKEN = "sandbox-jira-api-token"
WEBHOOK_SECRET = "sandbox-jira-webhook-secret"
#: Project permissions the sandbox knows (key → id, name, description), all granted by default.
PERMISSIONS = {
    "BROWSE_PROJECTS": ("10", "Browse Projects", "Ability to browse projects and the issues within them."),
    "ADD_COMMENTS": ("15", "Add Comments", "Ability to comment on issues."),
}

#: Requests per second when ``knobs.rate_limit`` is None (Jira publishes no fixed number).
DEFAULT_RATE = 100.0
#: maxResults caps: id/key-only searches may ask for 5000, anything else gets at most 100.
MAX_RESULTS_IDS = 5000
MAX_RESULTS_FIELDS = 100
DEFAULT_MAX_RESULTS = 50
#: Bulk fetch takes at most this many ids or keys per call.
BULKFETCH_MAX = 100
#: Webhook retries after the first attempt (Atlassian does not publish the count).
WEBHOOK_RETRIES = 5
RETRY_STATUSES = {408, 409, 425, 429}

ALL_FIELDS = (
    "summary", "description", "comment", "status", "assignee", "reporter", "labels",
    "priority", "issuetype", "project", "created", "updated",
)
#: GET /field: (id, name, JQL clause names, schema type, item type) for each system field.
SYSTEM_FIELDS = (
    ("summary", "Summary", ["summary"], "string", None),
    ("description", "Description", ["description"], "string", None),
    ("comment", "Comment", ["comment"], "comments-page", None),
    ("status", "Status", ["status"], "status", None),
    ("assignee", "Assignee", ["assignee"], "user", None),
    ("reporter", "Reporter", ["reporter"], "user", None),
    ("labels", "Labels", ["labels"], "array", "string"),
    ("priority", "Priority", ["priority"], "priority", None),
    ("issuetype", "Issue Type", ["issuetype", "type"], "issuetype", None),
    ("project", "Project", ["project"], "project", None),
    ("created", "Created", ["created", "createdDate"], "datetime", None),
    ("updated", "Updated", ["updated", "updatedDate"], "datetime", None),
    ("issuekey", "Key", ["id", "issue", "issuekey", "key"], "string", None),
)
NOT_FOUND = "Issue does not exist or you do not have permission to see it."
REMOVED = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. "
    "A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046"
)
UNBOUNDED = "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
BAD_PAYLOAD = "Invalid request payload. Refer to the REST API documentation and try again."
DATE_FORMATS = ("%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M", "%Y/%m/%d", "%Y-%m-%d")
DATE_HELP = (
    "Valid formats include: 'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', "
    "or a period format e.g. '-5d', '4w 2d'."
)


def error(status: int, *messages: str, errors: dict[str, str] | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    """Jira's error body: ``{"errorMessages": [...], "errors": {...}}``."""
    return JSONResponse({"errorMessages": list(messages), "errors": errors or {}}, status,
                        headers=headers)


def adf(text: str) -> dict[str, Any]:
    """Plain text (blank-line separated paragraphs) as an Atlassian Document Format doc."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return {
        "type": "doc",
        "version": 1,
        "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": p}]} for p in paragraphs
        ],
    }


def jira_time(ms: int, tz: ZoneInfo) -> str:
    """Epoch ms as Jira prints it, in the account's zone: ``2024-01-01T05:00:00.000-0500``."""
    moment = datetime.fromtimestamp(ms / 1000, tz)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}" + moment.strftime("%z")


def now_ms() -> int:
    return int(time.time() * 1000)


# --- state ----------------------------------------------------------------------------------


@dataclass
class Comment:
    id: int
    author: str  # accountId
    body: dict[str, Any]  # ADF
    created: int  # epoch ms
    updated: int  # epoch ms


@dataclass
class Issue:
    id: int
    key: str
    project_id: str
    summary: str
    description: dict[str, Any] | None
    reporter: str
    created: int  # epoch ms
    updated: int  # epoch ms
    status: str = "To Do"
    assignee: str | None = None
    labels: list[str] = field(default_factory=list)
    priority: str = "Medium"
    issuetype: str = "Task"
    comments: list[Comment] = field(default_factory=list)
    old_keys: list[str] = field(default_factory=list)


@dataclass
class Project:
    id: str
    key: str
    name: str
    counter: int = 0  # last issue number used in this project


@dataclass
class Held:
    """A webhook held back (``webhook_mode = "hold"``) to be released later, maybe reordered."""

    body: bytes
    headers: dict[str, str]


# --- JQL ------------------------------------------------------------------------------------


class JqlError(Exception):
    """A JQL problem, reported as a 400 with Jira's message."""


_TOKEN = re.compile(
    r"""\s*(?:("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(>=|<=|!=|=|>|<|~|\(|\)|,)|([^\s"'(),=<>!~]+))"""
)
_RELATIVE = re.compile(r"^([-+]?)((?:\d+[wdhm]\s*)+)$")
_DATE_FIELDS = {"updated", "created", "updateddate", "createddate"}
_KNOWN_FIELDS = {"project", "key", "issuekey", "id", "status", "labels", "assignee", "priority",
                 "issuetype", "type", *_DATE_FIELDS}
_SORT_FIELDS = {"updated", "created", "key", "issuekey", "id", "project", "priority", "status"}


@dataclass
class Tok:
    text: str
    kind: str  # "str" (quoted), "op", "word"
    pos: int  # 1-based character position, as Jira reports it


def tokenize(jql: str) -> list[Tok]:
    tokens: list[Tok] = []
    pos = 0
    while pos < len(jql):
        if jql[pos:].strip() == "":
            break
        match = _TOKEN.match(jql, pos)
        if not match or match.end() == pos:
            raise JqlError(f"Error in the JQL Query: The character '{jql[pos]}' is a reserved "
                           f"JQL character. (line 1, character {pos + 1})")
        quoted, op, word = match.groups()
        start = match.start(1 if quoted else 2 if op else 3)
        if quoted:
            tokens.append(Tok(re.sub(r"\\(.)", r"\1", quoted[1:-1]), "str", start + 1))
        elif op:
            tokens.append(Tok(op, "op", start + 1))
        else:
            tokens.append(Tok(word, "word", start + 1))
        pos = match.end()
    return tokens


Predicate = Callable[[Issue], bool]


class JqlParser:
    """Recursive descent over the subset of JQL the connector and tests need.

    ``clause := field op value | field [NOT] IN (values)``; clauses combine with AND / OR /
    NOT and parentheses; ``ORDER BY field [ASC|DESC], ...`` at the end.
    """

    def __init__(self, sim: JiraSimulator, jql: str) -> None:
        self.sim = sim
        self.tokens = tokenize(jql)
        self.i = 0

    def parse(self) -> tuple[Predicate | None, list[tuple[str, bool]]]:
        where: Predicate | None = None
        if self.peek() and not self.at_word("order"):
            where = self.or_expr()
        order: list[tuple[str, bool]] = []
        if self.at_word("order"):
            self.i += 1
            self.expect_word("by")
            order = self.order_list()
        if self.peek():
            tok = self.peek()
            assert tok is not None
            raise JqlError(f"Error in the JQL Query: Expecting either 'OR' or 'AND' but got "
                           f"'{tok.text}'. (line 1, character {tok.pos})")
        return where, order

    # helpers
    def peek(self) -> Tok | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def at_word(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.text.lower() == word

    def next(self, expecting: str) -> Tok:
        tok = self.peek()
        if tok is None:
            raise JqlError(f"Error in the JQL Query: Expecting {expecting} but reached the end "
                           f"of the query.")
        self.i += 1
        return tok

    def expect_word(self, word: str) -> None:
        tok = self.next(f"'{word}'")
        if tok.kind != "word" or tok.text.lower() != word:
            raise JqlError(f"Error in the JQL Query: Expecting '{word}' but got '{tok.text}'. "
                           f"(line 1, character {tok.pos})")

    # grammar
    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.at_word("or"):
            self.i += 1
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else (lambda issue: any(p(issue) for p in parts))

    def and_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while self.at_word("and"):
            self.i += 1
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else (lambda issue: all(p(issue) for p in parts))

    def not_expr(self) -> Predicate:
        if self.at_word("not"):
            self.i += 1
            inner = self.not_expr()
            return lambda issue: not inner(issue)
        tok = self.peek()
        if tok is not None and tok.kind == "op" and tok.text == "(":
            self.i += 1
            inner = self.or_expr()
            close = self.next("')'")
            if close.text != ")":
                raise JqlError(f"Error in the JQL Query: Expecting ')' but got '{close.text}'. "
                               f"(line 1, character {close.pos})")
            return inner
        return self.clause()

    def clause(self) -> Predicate:
        name_tok = self.next("a field name")
        name = name_tok.text.lower()
        if name_tok.kind == "op" or name not in _KNOWN_FIELDS:
            raise JqlError(f"Field '{name_tok.text}' does not exist or you do not have "
                           f"permission to view it.")
        op_tok = self.next("an operator")
        op = op_tok.text.lower()
        if op == "not" and self.at_word("in"):
            self.i += 1
            op = "not in"
        if op in ("in", "not in"):
            values = self.value_list()
            preds = [self.compare(name, "=", v) for v in values]
            if op == "in":
                return lambda issue: any(p(issue) for p in preds)
            return lambda issue: not any(p(issue) for p in preds)
        if op not in ("=", "!=", ">", ">=", "<", "<="):
            raise JqlError(f"Error in the JQL Query: Expecting operator but got '{op_tok.text}'. "
                           f"(line 1, character {op_tok.pos})")
        value = self.next("a value")
        if value.kind == "op":
            raise JqlError(f"Error in the JQL Query: Expecting a value but got '{value.text}'. "
                           f"(line 1, character {value.pos})")
        return self.compare(name, op, value)

    def value_list(self) -> list[Tok]:
        opener = self.next("'('")
        if opener.text != "(":
            raise JqlError(f"Error in the JQL Query: Expecting '(' but got '{opener.text}'. "
                           f"(line 1, character {opener.pos})")
        values = [self.next("a value")]
        while True:
            sep = self.next("')'")
            if sep.text == ")":
                return values
            if sep.text != ",":
                raise JqlError(f"Error in the JQL Query: Expecting ',' or ')' but got "
                               f"'{sep.text}'. (line 1, character {sep.pos})")
            values.append(self.next("a value"))

    def order_list(self) -> list[tuple[str, bool]]:
        order: list[tuple[str, bool]] = []
        while True:
            tok = self.next("a field name")
            name = tok.text.lower()
            if name not in _SORT_FIELDS:
                raise JqlError(f"Field '{tok.text}' does not exist or you do not have "
                               f"permission to view it.")
            descending = False
            if self.at_word("asc") or self.at_word("desc"):
                descending = self.next("ASC").text.lower() == "desc"
            order.append((name, descending))
            sep = self.peek()
            if sep is None or sep.text != ",":
                break
            self.i += 1
        if len(order) > 7:
            raise JqlError("The ORDER BY clause may list at most 7 fields.")
        return order

    # comparisons
    def compare(self, name: str, op: str, value: Tok) -> Predicate:
        if name in _DATE_FIELDS:
            return self.compare_date(name, op, value)
        if name == "project":
            return self.compare_project(op, value)
        getter = _GETTERS.get(name)
        if getter is None:  # pragma: no cover - _KNOWN_FIELDS and _GETTERS agree
            raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")
        if op not in ("=", "!="):
            raise JqlError(f"The operator '{op}' is not supported by the '{name}' field.")
        wanted = value.text.lower()
        if name in ("key", "issuekey"):
            target = self.sim.resolve(value.text)
            return _negate(op, lambda issue: target is not None and issue.id == target.id)
        return _negate(op, lambda issue: wanted in [v.lower() for v in getter(self.sim, issue)])

    def compare_project(self, op: str, value: Tok) -> Predicate:
        if op not in ("=", "!="):
            raise JqlError(f"The operator '{op}' is not supported by the 'project' field.")
        project = self.sim.find_project(value.text)
        if project is None:
            raise JqlError(f"The value '{value.text}' does not exist for the field 'project'.")
        pid = project.id
        return _negate(op, lambda issue: issue.project_id == pid)

    def compare_date(self, name: str, op: str, value: Tok) -> Predicate:
        if op == "=":
            op = "=="
        bound = self.sim.jql_instant(value, name)
        attr = "updated" if name.startswith("updated") else "created"
        ops: dict[str, Callable[[int, int], bool]] = {
            "==": lambda a, b: a // 60000 == b // 60000,
            "!=": lambda a, b: a // 60000 != b // 60000,
            ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
            "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
        }
        compare = ops[op]
        return lambda issue: compare(getattr(issue, attr), bound)


def _negate(op: str, pred: Predicate) -> Predicate:
    return pred if op == "=" else (lambda issue: not pred(issue))


_GETTERS: dict[str, Callable[[JiraSimulator, Issue], list[str]]] = {
    "key": lambda sim, i: [i.key, *i.old_keys],
    "issuekey": lambda sim, i: [i.key, *i.old_keys],
    "id": lambda sim, i: [str(i.id)],
    "status": lambda sim, i: [i.status],
    "labels": lambda sim, i: i.labels,
    "assignee": lambda sim, i: [i.assignee or "", sim.users.get(i.assignee or "", "")],
    "priority": lambda sim, i: [i.priority],
    "issuetype": lambda sim, i: [i.issuetype],
    "type": lambda sim, i: [i.issuetype],
}


# --- seed data ------------------------------------------------------------------------------

_WORDS = {
    "topic": ["billing", "checkout", "login", "search", "notifications", "invoices", "exports",
              "onboarding", "SSO", "webhooks", "rate limits", "dashboards", "subscriptions"],
    "verb": ["Fix", "Investigate", "Improve", "Add", "Refactor", "Document", "Migrate",
             "Speed up", "Harden", "Remove"],
    "where": ["for enterprise accounts", "in the mobile app", "on the admin page",
              "in the public API", "after the last release", "for EU customers"],
}
_STATUSES = ["To Do", "In Progress", "In Review", "Done"]
_PRIORITIES = ["Lowest", "Low", "Medium", "High", "Highest"]
_TYPES = ["Task", "Bug", "Story"]
_LABELS = ["backend", "frontend", "customer", "tech-debt", "security", "q3"]
_NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Katherine Johnson", "Linus Torvalds",
          "Margaret Hamilton", "Ken Thompson", "Barbara Liskov"]
_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def _sentence(rng: random.Random) -> str:
    return (f"{rng.choice(_WORDS['verb'])} {rng.choice(_WORDS['topic'])} "
            f"{rng.choice(_WORDS['where'])}")


# --- the simulator --------------------------------------------------------------------------


class JiraSimulator(Simulator):
    name = "jira"

    def __init__(self, knobs: Knobs | None = None) -> None:
        super().__init__(knobs)
        #: How many times each issue id was bulk-fetched (tests prove no page is fetched twice).
        self.bulkfetched: Counter[str] = Counter()
        #: How many times each issue was fetched alone (GET /rest/api/3/issue/{idOrKey}).
        self.fetched: Counter[str] = Counter()
        #: API requests served, by handler (``search``, ``bulkfetch``, ``project_search``, …):
        #: tests and benchmarks count what a listing costs here, on Jira's side.
        self.calls: Counter[str] = Counter()
        #: Comments an issue bean embeds at most (None: all). Jira pages the embedded
        #: ``comment`` field (it carries ``maxResults`` and ``total``); this dial cuts it short,
        #: so a client must read the rest from ``GET /issue/{id}/comment``.
        self.embedded_comments: int | None = None
        self.time_zone = ZoneInfo("America/New_York")
        #: Seconds before the first webhook retry; doubles each retry.
        self.retry_delay = 0.5
        #: "now" sends webhooks at once; "hold" keeps them until released (to reorder them).
        self.webhook_mode = "now"
        self.granted: set[str] = set(PERMISSIONS)
        self.held: list[Held] = []
        self.projects: dict[str, Project] = {}  # by id
        self.issues: dict[int, Issue] = {}
        self.keys: dict[str, int] = {}  # every key an issue ever had → id
        self.users: dict[str, str] = {}  # accountId → displayName
        self.next_issue_id = 10001
        self.next_project_id = 10000
        self.next_comment_id = 20001
        self.next_changelog_id = 30001
        #: API calls answered 429 (tests read it to prove a client backed off).
        self.throttled = 0
        self._bucket: TokenBucket | None = None
        self._bucket_rate: float | None = None
        self._make_users(random.Random(0))

    # --- settings for vector-sync ---------------------------------------------------------
    def env(self, base_url: str) -> dict[str, str]:
        return {
            "JIRA_URL": base_url,
            "JIRA_EMAIL": EMAIL,
            "JIRA_API_TOKEN": API_TOKEN,
            "JIRA_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }

    # --- state helpers ----------------------------------------------------------------------
    def _make_users(self, rng: random.Random) -> None:
        for name in _NAMES:
            account = f"557058:{uuid.UUID(int=rng.getrandbits(128))}"
            self.users[account] = name

    def add_project(self, key: str, name: str) -> Project:
        project = Project(id=str(self.next_project_id), key=key, name=name)
        self.next_project_id += 1
        self.projects[project.id] = project
        return project

    def find_project(self, key_or_id: str) -> Project | None:
        for project in self.projects.values():
            if key_or_id in (project.id, project.key) or key_or_id.upper() == project.key:
                return project
        return None

    def resolve(self, id_or_key: str) -> Issue | None:
        """An issue by id, current key, or a key it had before a move (as Jira does)."""
        if id_or_key.isdigit():
            return self.issues.get(int(id_or_key))
        issue_id = self.keys.get(id_or_key.upper())
        return self.issues.get(issue_id) if issue_id is not None else None

    def add_issue(self, project: Project, summary: str, *, description: dict[str, Any] | None,
                  reporter: str, created: int, **extra: Any) -> Issue:
        project.counter += 1
        issue = Issue(id=self.next_issue_id, key=f"{project.key}-{project.counter}",
                      project_id=project.id, summary=summary, description=description,
                      reporter=reporter, created=created, updated=extra.pop("updated", created),
                      **extra)
        self.next_issue_id += 1
        self.issues[issue.id] = issue
        self.keys[issue.key] = issue.id
        return issue

    def add_comment(self, issue: Issue, author: str, body: dict[str, Any], at: int) -> Comment:
        comment = Comment(id=self.next_comment_id, author=author, body=body, created=at, updated=at)
        self.next_comment_id += 1
        issue.comments.append(comment)
        return comment

    def jql_instant(self, value: Tok, name: str) -> int:
        """A JQL date value as epoch ms, floored to the minute (JQL's precision)."""
        text = value.text.strip()
        if value.kind == "word" and text.isdigit():
            return int(text) // 60000 * 60000
        relative = _RELATIVE.match(text)
        if relative:
            units = {"w": 604800, "d": 86400, "h": 3600, "m": 60}
            seconds = sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([wdhm])", relative[2]))
            sign = -1 if relative[1] == "-" else 1
            return (now_ms() + sign * seconds * 1000) // 60000 * 60000
        for fmt in DATE_FORMATS:
            try:
                naive = datetime.strptime(text, fmt)
            except ValueError:
                continue
            local = naive.replace(tzinfo=self.time_zone)
            # A wall time skipped by a DST change does not survive the round trip through UTC.
            back = local.astimezone(timezone.utc).astimezone(self.time_zone).replace(tzinfo=None)
            if back != naive:
                break
            return int(local.timestamp() * 1000)
        raise JqlError(f"Date value '{value.text}' for field '{name}' is invalid. {DATE_HELP}")

    # --- rendering --------------------------------------------------------------------------
    def user(self, account: str | None) -> dict[str, Any] | None:
        if not account:
            return None
        return {
            "self": f"{self.base_url}/rest/api/3/user?accountId={account}",
            "accountId": account,
            "displayName": self.users.get(account, "Former user"),
            "active": True,
            "accountType": "atlassian",
            "timeZone": str(self.time_zone),
        }

    def render_project(self, project: Project) -> dict[str, Any]:
        return {
            "self": f"{self.base_url}/rest/api/3/project/{project.id}",
            "id": project.id, "key": project.key, "name": project.name,
            "projectTypeKey": "software", "simplified": False, "style": "classic",
        }

    def render_comment(self, issue: Issue, comment: Comment) -> dict[str, Any]:
        return {
            "self": f"{self.base_url}/rest/api/3/issue/{issue.id}/comment/{comment.id}",
            "id": str(comment.id),
            "author": self.user(comment.author),
            "updateAuthor": self.user(comment.author),
            "body": comment.body,
            "created": jira_time(comment.created, self.time_zone),
            "updated": jira_time(comment.updated, self.time_zone),
            "jsdPublic": True,
        }

    def field_value(self, issue: Issue, name: str) -> Any:
        if name == "summary":
            return issue.summary
        if name == "description":
            return issue.description
        if name == "comment":
            shown = issue.comments if self.embedded_comments is None else issue.comments[: self.embedded_comments]
            comments = [self.render_comment(issue, c) for c in shown]
            return {"comments": comments, "self": f"{self.base_url}/rest/api/3/issue/{issue.id}/comment",
                    "maxResults": len(comments), "total": len(issue.comments), "startAt": 0}
        if name == "status":
            return {"name": issue.status, "id": str(10000 + _STATUSES.index(issue.status))
                    if issue.status in _STATUSES else "10099"}
        if name in ("assignee", "reporter"):
            return self.user(getattr(issue, name))
        if name == "labels":
            return list(issue.labels)
        if name == "priority":
            return {"name": issue.priority, "id": str(_PRIORITIES.index(issue.priority) + 1)
                    if issue.priority in _PRIORITIES else "3"}
        if name == "issuetype":
            return {"name": issue.issuetype, "id": str(10001 + _TYPES.index(issue.issuetype))
                    if issue.issuetype in _TYPES else "10009", "subtask": False}
        if name == "project":
            return self.render_project(self.projects[issue.project_id])
        if name in ("created", "updated"):
            return jira_time(getattr(issue, name), self.time_zone)
        return None

    def render(self, issue: Issue, wanted: set[str]) -> dict[str, Any]:
        """An issue bean with the ``wanted`` fields (``id`` only gives ``{"id": ...}``)."""
        data: dict[str, Any] = {"id": str(issue.id)}
        real = [f for f in ALL_FIELDS if f in wanted]
        if real or "key" in wanted:
            data["self"] = f"{self.base_url}/rest/api/3/issue/{issue.id}"
            data["key"] = issue.key
        if real:
            data["fields"] = {f: self.field_value(issue, f) for f in real}
        return data

    # --- request guards ---------------------------------------------------------------------
    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, token = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, EMAIL) and hmac.compare_digest(token, API_TOKEN)

    def _rate_limited(self) -> Response | None:
        rate = DEFAULT_RATE if self.knobs.rate_limit is None else float(self.knobs.rate_limit)
        if rate <= 0:
            return None
        if self._bucket is None or self._bucket_rate != rate:
            self._bucket, self._bucket_rate = TokenBucket(rate), rate
        wait = self._bucket.take()
        if wait <= 0:
            return None
        self.throttled += 1
        reset = datetime.now(timezone.utc) + timedelta(seconds=wait)
        return error(429, "Rate limit exceeded.", headers={
            "Retry-After": str(max(1, math.ceil(wait))),
            "X-RateLimit-Limit": str(int(rate)),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset.strftime("%Y-%m-%dT%H:%MZ"),
            "RateLimit-Reason": "jira-burst-based",
        })

    def api(self, handler: Callable[[Request], Awaitable[Response]],
            label: str = "") -> Callable[[Request], Awaitable[Response]]:
        """Wrap an API handler with Basic auth and the request budget; count it in ``calls``."""
        label = label or handler.__name__

        async def guarded(request: Request) -> Response:
            self.calls[label] += 1
            if not self._authorised(request):
                reason = "AUTHENTICATED_FAILED" if "authorization" in request.headers else "AUTHENTICATION_DENIED"
                return PlainTextResponse(
                    "Client must be authenticated to access this resource.", 401,
                    headers={"WWW-Authenticate": 'Basic realm="protected-by-api-token"',
                             "X-Seraph-LoginReason": reason})
            limited = self._rate_limited()
            if limited is not None:
                return limited
            return await handler(request)

        return guarded

    # --- routes -----------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/rest/api/3/search", self.removed, methods=["GET", "POST"]),
            Route("/rest/api/2/search", self.removed, methods=["GET", "POST"]),
        ]
        # v3 and v2 serve the same resources; v2 differs in rich text (wiki-markup strings, not
        # ADF) and in its own ``self`` links. The common clients use both: ``jira`` (pycontribs)
        # defaults to v2, atlassian-python-api's JiraCloud to v3.
        for version in (3, 2):
            def wrap(handler: Callable[[Request], Awaitable[Response]], v: int = version) -> Any:
                return self.api(handler if v == 3 else as_v2(handler), handler.__name__)
            base = f"/rest/api/{version}"
            routes += [
                Route(f"{base}/search/jql", wrap(self.search), methods=["GET", "POST"]),
                Route(f"{base}/search/approximate-count", wrap(self.approximate_count), methods=["POST"]),
                Route(f"{base}/issue/bulkfetch", wrap(self.bulkfetch), methods=["POST"]),
                Route(f"{base}/issue/{{id_or_key}}/comment", wrap(self.issue_comments), methods=["GET"]),
                Route(f"{base}/issue/{{id_or_key}}", wrap(self.get_issue), methods=["GET"]),
                Route(f"{base}/project/search", wrap(self.project_search), methods=["GET"]),
                Route(f"{base}/project", wrap(self.project_list), methods=["GET"]),
                Route(f"{base}/project/{{key_or_id}}", wrap(self.project_get), methods=["GET"]),
                Route(f"{base}/field", wrap(self.field_list), methods=["GET"]),
                Route(f"{base}/myself", wrap(self.myself), methods=["GET"]),
                Route(f"{base}/mypermissions", wrap(self.mypermissions), methods=["GET"]),
                # Jira answers serverInfo without credentials (clients call it before anything).
                Route(f"{base}/serverInfo", self.server_info if version == 3 else as_v2(self.server_info),
                      methods=["GET"]),
            ]
        return routes

    async def server_info(self, request: Request) -> Response:
        """GET /rest/api/{2,3}/serverInfo, as Jira Cloud answers it (``deploymentType: Cloud`` is
        what makes the ``jira`` client use the enhanced search)."""
        now = datetime.now(self.time_zone)
        return JSONResponse({
            "baseUrl": self.base_url,
            "displayUrl": self.base_url,
            "version": "1001.0.0-SNAPSHOT",
            "versionNumbers": [1001, 0, 0],
            "deploymentType": "Cloud",
            "buildNumber": 100295,
            "buildDate": "2025-06-02T09:41:20.000" + now.strftime("%z"),
            "serverTime": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}" + now.strftime("%z"),
            "scmInfo": "5b9b6ee6f6dbbd8e6fcbd2f7a2dac4b0f7b0e0f3",
            "serverTitle": "Jira",
            "defaultLocale": {"locale": "en_US"},
            "serverTimeZone": str(self.time_zone),
        })

    async def approximate_count(self, request: Request) -> Response:
        """POST /rest/api/{2,3}/search/approximate-count ``{"jql"}`` → ``{"count": n}`` (the
        enhanced search's replacement for ``total``; exact here)."""
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError:
            return error(400, BAD_PAYLOAD)
        if not isinstance(body, dict) or not isinstance(body.get("jql"), str):
            return error(400, BAD_PAYLOAD)
        try:
            where, _ = JqlParser(self, body["jql"]).parse()
        except JqlError as exc:
            return error(400, str(exc))
        if where is None:
            return error(400, UNBOUNDED)
        return JSONResponse({"count": sum(1 for i in self.issues.values() if where(i))})

    async def issue_comments(self, request: Request) -> Response:
        """GET /rest/api/{2,3}/issue/{idOrKey}/comment: ``startAt``/``maxResults`` paging (default
        and cap 5000, as Jira documents), ``orderBy`` ``created`` or ``-created``."""
        issue = self.resolve(request.path_params["id_or_key"])
        if issue is None:
            return error(404, NOT_FOUND)
        params = request.query_params
        try:
            start = max(0, int(params.get("startAt") or 0))
            size = max(1, min(int(params.get("maxResults") or 5000), 5000))
        except ValueError:
            return error(400, BAD_PAYLOAD)
        ordered = sorted(issue.comments, key=lambda c: (c.created, c.id),
                         reverse=params.get("orderBy", "").lstrip("+") == "-created")
        page = ordered[start : start + size]
        return JSONResponse({"startAt": start, "maxResults": size, "total": len(ordered),
                             "comments": [self.render_comment(issue, c) for c in page]})

    async def field_list(self, request: Request) -> Response:
        """GET /rest/api/{2,3}/field: every field the simulator serves, system fields only."""
        return JSONResponse([
            {"id": fid, "key": fid, "name": name, "custom": False, "orderable": fid not in ("created", "updated", "status", "comment"),
             "navigable": True, "searchable": True, "clauseNames": clauses,
             "schema": {"type": ftype, "system": fid, **({"items": items} if items else {})}}
            for fid, name, clauses, ftype, items in SYSTEM_FIELDS
        ])

    def _browsable(self) -> list[Project]:
        # Jira lists only the projects the caller may browse.
        if "BROWSE_PROJECTS" not in self.granted:
            return []
        return sorted(self.projects.values(), key=lambda p: p.key)

    async def project_list(self, request: Request) -> Response:
        """GET /rest/api/{2,3}/project: every visible project, unpaged (deprecated but served)."""
        return JSONResponse([self.render_project(p) for p in self._browsable()])

    async def project_get(self, request: Request) -> Response:
        project = self.find_project(request.path_params["key_or_id"])
        if project is None or project not in self._browsable():
            return error(404, "No project could be found with key "
                              f"'{request.path_params['key_or_id']}'.")
        return JSONResponse({**self.render_project(project), "description": "",
                             "lead": self.user(next(iter(self.users))),
                             "issueTypes": [{"id": str(10001 + n), "name": t, "subtask": False}
                                            for n, t in enumerate(_TYPES)],
                             "assigneeType": "UNASSIGNED", "isPrivate": False})

    async def removed(self, request: Request) -> Response:
        return error(410, REMOVED)

    async def myself(self, request: Request) -> Response:
        account = next(iter(self.users))
        return JSONResponse({**(self.user(account) or {}), "emailAddress": EMAIL})

    async def mypermissions(self, request: Request) -> Response:
        """GET /rest/api/3/mypermissions?permissions=A,B: whether the caller has each (the
        ``permissions`` parameter is required, as on Jira Cloud)."""
        wanted = [p.strip() for p in (request.query_params.get("permissions") or "").split(",") if p.strip()]
        if not wanted:
            return error(400, "The 'permissions' query parameter is required.")
        unknown = [p for p in wanted if p not in PERMISSIONS]
        if unknown:
            return error(400, f"Unrecognized permission key(s): {', '.join(unknown)}")
        return JSONResponse({"permissions": {
            key: {"id": PERMISSIONS[key][0], "key": key, "name": PERMISSIONS[key][1], "type": "PROJECT",
                  "description": PERMISSIONS[key][2], "havePermission": key in self.granted}
            for key in wanted}})

    async def search(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                body = json.loads(await request.body() or b"{}")
            except json.JSONDecodeError:
                return error(400, BAD_PAYLOAD)
            if not isinstance(body, dict):
                return error(400, BAD_PAYLOAD)
            fields_raw = body.get("fields")
            if fields_raw is not None and not isinstance(fields_raw, list):
                return error(400, BAD_PAYLOAD)
            jql, token, max_raw = body.get("jql"), body.get("nextPageToken"), body.get("maxResults")
            field_items = [str(f) for f in fields_raw or []]
        else:
            params = request.query_params
            jql, token, max_raw = params.get("jql"), params.get("nextPageToken"), params.get("maxResults")
            field_items = [f for raw in params.getlist("fields") for f in raw.split(",")]
        return self._search(str(jql or ""), token, max_raw, field_items)

    def _search(self, jql: str, token: str | None, max_raw: Any, field_items: list[str]) -> Response:
        wanted = parse_fields(field_items, default={"id"})
        try:
            requested = DEFAULT_MAX_RESULTS if max_raw in (None, "") else int(max_raw)
        except (TypeError, ValueError):
            return error(400, f"The value '{max_raw}' is invalid for the parameter 'maxResults'.")
        cap = MAX_RESULTS_IDS if wanted <= {"id", "key"} else MAX_RESULTS_FIELDS
        page_size = max(1, min(requested, cap))
        try:
            where, order = JqlParser(self, jql).parse()
        except JqlError as exc:
            return error(400, str(exc))
        if where is None:
            return error(400, UNBOUNDED)
        fingerprint = hashlib.sha1(f"{jql}\0{sorted(wanted)}".encode()).hexdigest()[:16]
        offset = 0
        if token:
            offset = decode_token(token, fingerprint)
            if offset is None:
                return error(400, "The provided next page token is invalid or expired.")
        matches = sorted((i for i in self.issues.values() if where(i)), key=self.sort_key(order))
        page = matches[offset : offset + page_size]
        body: dict[str, Any] = {"issues": [self.render(i, wanted) for i in page]}
        if offset + page_size < len(matches):
            body["nextPageToken"] = encode_token(offset + page_size, fingerprint)
            body["isLast"] = False
        else:
            body["isLast"] = True
        return JSONResponse(body)

    def sort_key(self, order: list[tuple[str, bool]]) -> Callable[[Issue], tuple[Any, ...]]:
        """Sort key honouring ASC/DESC per field; ties break on id so paging is stable."""

        def value(issue: Issue, name: str) -> Any:
            if name in ("key", "issuekey"):
                project, _, number = issue.key.partition("-")
                return (project, int(number))
            if name == "project":
                return self.projects[issue.project_id].key
            if name == "priority":
                return _PRIORITIES.index(issue.priority) if issue.priority in _PRIORITIES else 2
            if name == "status":
                return issue.status
            return issue.id if name == "id" else getattr(issue, name)

        def key(issue: Issue) -> tuple[Any, ...]:
            parts: list[Any] = []
            for name, descending in order:
                parts.append(_Reverse(value(issue, name)) if descending else value(issue, name))
            parts.append(issue.id)
            return tuple(parts)

        return key

    async def bulkfetch(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError:
            return error(400, BAD_PAYLOAD)
        ids = body.get("issueIdsOrKeys") if isinstance(body, dict) else None
        fields_raw = body.get("fields", ["*navigable"]) if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not isinstance(fields_raw, list):
            return error(400, "issueIdsOrKeys must contain at least one issue id or key.")
        if len(ids) > BULKFETCH_MAX:
            return error(400, f"The number of issues requested exceeds the limit of {BULKFETCH_MAX}.")
        wanted = parse_fields([str(f) for f in fields_raw], default={"id", *ALL_FIELDS})
        found: list[dict[str, Any]] = []
        seen: set[int] = set()
        self.bulkfetched.update(str(raw) for raw in ids)
        for raw in ids:
            issue = self.resolve(str(raw))
            # Issues that do not exist (or are not visible) are left out, not reported as errors.
            if issue is not None and issue.id not in seen:
                seen.add(issue.id)
                found.append(self.render(issue, wanted | {"key"}))
        return JSONResponse({"expand": "schema,names", "issues": found, "issueErrors": []})

    async def get_issue(self, request: Request) -> Response:
        self.fetched[request.path_params["id_or_key"]] += 1
        issue = self.resolve(request.path_params["id_or_key"])
        if issue is None:
            return error(404, NOT_FOUND)
        items = [f for raw in request.query_params.getlist("fields") for f in raw.split(",")]
        wanted = parse_fields(items, default={"id", *ALL_FIELDS})
        return JSONResponse(self.render(issue, wanted | {"key"}))

    async def project_search(self, request: Request) -> Response:
        params = request.query_params
        try:
            start = int(params.get("startAt") or 0)
            size = min(int(params.get("maxResults") or 50), 100)
        except ValueError:
            return error(400, BAD_PAYLOAD)
        projects = self._browsable()
        page = projects[start : start + max(1, size)]
        last = start + len(page) >= len(projects)
        base = f"{self.base_url}/rest/api/3/project/search"
        body: dict[str, Any] = {
            "self": f"{base}?startAt={start}&maxResults={size}",
            "maxResults": size, "startAt": start, "total": len(projects), "isLast": last,
            "values": [self.render_project(p) for p in page],
        }
        if not last:
            body["nextPage"] = f"{base}?startAt={start + len(page)}&maxResults={size}"
        return JSONResponse(body)

    # --- control API ------------------------------------------------------------------------
    def control_routes(self) -> list[BaseRoute]:
        return [
            Route("/jira/truth", self.c_truth, methods=["GET"]),
            Route("/jira/calls", self.c_calls, methods=["GET"]),
            Route("/jira/settings", self.c_settings, methods=["PUT"]),
            Route("/jira/projects", self.c_create_project, methods=["POST"]),
            Route("/jira/issues", self.c_create_issue, methods=["POST"]),
            Route("/jira/issues/{id_or_key}", self.c_edit_issue, methods=["PUT"]),
            Route("/jira/issues/{id_or_key}", self.c_delete_issue, methods=["DELETE"]),
            Route("/jira/issues/{id_or_key}/move", self.c_move_issue, methods=["POST"]),
            Route("/jira/issues/{id_or_key}/comments", self.c_add_comment, methods=["POST"]),
            Route("/jira/issues/{id_or_key}/comments/{comment_id}", self.c_edit_comment, methods=["PUT"]),
            Route("/jira/issues/{id_or_key}/comments/{comment_id}", self.c_delete_comment,
                  methods=["DELETE"]),
            Route("/jira/webhooks/release", self.c_release, methods=["POST"]),
        ]

    async def c_truth(self, request: Request) -> Response:
        return JSONResponse({
            "time_zone": str(self.time_zone),
            "projects": [{"id": p.id, "key": p.key, "name": p.name} for p in self.projects.values()],
            "issues": [
                {"id": str(i.id), "key": i.key, "project": self.projects[i.project_id].key,
                 "updated": i.updated, "old_keys": list(i.old_keys), "comments": len(i.comments)}
                for i in self.issues.values()
            ],
        })

    async def c_calls(self, request: Request) -> Response:
        """API requests served so far, by handler (a simulator in its own process is counted
        through this)."""
        return JSONResponse(dict(self.calls))

    async def c_settings(self, request: Request) -> Response:
        body = await _json(request)
        if "time_zone" in body:
            self.time_zone = ZoneInfo(str(body["time_zone"]))
        if "retry_delay" in body:
            self.retry_delay = float(body["retry_delay"])
        if "webhook_mode" in body:
            if body["webhook_mode"] not in ("now", "hold"):
                return JSONResponse({"error": "webhook_mode must be 'now' or 'hold'"}, 400)
            self.webhook_mode = body["webhook_mode"]
        if "embedded_comments" in body:
            cut = body["embedded_comments"]
            if cut is not None and (not isinstance(cut, int) or cut < 0):
                return JSONResponse({"error": "embedded_comments must be null or a count"}, 400)
            self.embedded_comments = cut
        if "permissions" in body:  # the caller's project permissions (mypermissions, project search)
            granted = body["permissions"]
            if not isinstance(granted, list) or not set(granted) <= set(PERMISSIONS):
                return JSONResponse({"error": f"permissions must be a list of {', '.join(PERMISSIONS)}"}, 400)
            self.granted = set(granted)
        return JSONResponse({"time_zone": str(self.time_zone), "retry_delay": self.retry_delay,
                             "webhook_mode": self.webhook_mode, "held": len(self.held),
                             "embedded_comments": self.embedded_comments,
                             "permissions": sorted(self.granted)})

    async def c_create_project(self, request: Request) -> Response:
        body = await _json(request)
        key = str(body.get("key", "")).upper()
        if not re.fullmatch(r"[A-Z][A-Z0-9]{1,9}", key) or self.find_project(key):
            return JSONResponse({"error": "key must be new and 2-10 capitals/digits"}, 400)
        project = self.add_project(key, str(body.get("name") or key))
        return JSONResponse(self.render_project(project), 201)

    async def c_create_issue(self, request: Request) -> Response:
        body = await _json(request)
        project = self.find_project(str(body.get("project", "")))
        if project is None:
            return JSONResponse({"error": "unknown project"}, 400)
        at = int(body.get("updated") or now_ms())
        reporter = self._account(body.get("reporter")) or next(iter(self.users))
        issue = self.add_issue(
            project, str(body.get("summary") or "Untitled"), description=_adf_or_none(body.get("description")),
            reporter=reporter, created=at, status=str(body.get("status") or "To Do"),
            assignee=self._account(body.get("assignee")), labels=list(body.get("labels") or []),
            priority=str(body.get("priority") or "Medium"), issuetype=str(body.get("issuetype") or "Task"),
        )
        self.fire_issue_event("jira:issue_created", issue, "issue_created", at, reporter)
        return JSONResponse(self.render(issue, {"id", "key", *ALL_FIELDS}), 201)

    async def c_edit_issue(self, request: Request) -> Response:
        issue = self.resolve(request.path_params["id_or_key"])
        if issue is None:
            return error(404, NOT_FOUND)
        body = await _json(request)
        items: list[dict[str, Any]] = []
        for name in ("summary", "status", "priority", "issuetype", "labels", "assignee", "description"):
            if name not in body:
                continue
            old = getattr(issue, name)
            new: Any = body[name]
            if name == "assignee":
                new = self._account(new)
            elif name == "description":
                new = _adf_or_none(new)
            elif name == "labels":
                new = list(new or [])
            setattr(issue, name, new)
            items.append(_change(name, old, new))
        # ``updated`` lets a test make an edit that Jira stamped in the past (out-of-order).
        at = int(body["updated"]) if "updated" in body else now_ms()
        issue.updated = at
        self.fire_issue_event("jira:issue_updated", issue, "issue_generic", at,
                              self._account(body.get("actor")) or issue.reporter, items)
        return JSONResponse(self.render(issue, {"id", "key", *ALL_FIELDS}))

    async def c_delete_issue(self, request: Request) -> Response:
        issue = self.resolve(request.path_params["id_or_key"])
        if issue is None:
            return error(404, NOT_FOUND)
        payload_issue = self.render(issue, {"id", "key", *ALL_FIELDS})  # pre-delete state
        del self.issues[issue.id]
        for key in [issue.key, *issue.old_keys]:
            self.keys.pop(key, None)
        self.fire("jira:issue_deleted", {"issue_event_type_name": "issue_deleted",
                                         "user": self.user(issue.reporter), "issue": payload_issue})
        # Jira's cascade: a comment_deleted per comment of the deleted issue, on the Secondary
        # flow (research/saas-apis.md §1.1: it can lag the issue's event by ~15 minutes).
        for comment in issue.comments:
            self.fire_comment_event("comment_deleted", issue, comment, flow="Secondary")
        return Response(status_code=204)

    async def c_move_issue(self, request: Request) -> Response:
        issue = self.resolve(request.path_params["id_or_key"])
        if issue is None:
            return error(404, NOT_FOUND)
        target = self.find_project(str((await _json(request)).get("project", "")))
        if target is None or target.id == issue.project_id:
            return JSONResponse({"error": "unknown or same project"}, 400)
        old_project = self.projects[issue.project_id]
        target.counter += 1
        old_key, issue.key = issue.key, f"{target.key}-{target.counter}"
        issue.old_keys.append(old_key)
        issue.project_id = target.id
        self.keys[issue.key] = issue.id  # the old key keeps resolving, as in Jira
        issue.updated = now_ms()
        items = [_change("Key", old_key, issue.key), _change("project", old_project.name, target.name)]
        self.fire_issue_event("jira:issue_updated", issue, "issue_moved", issue.updated,
                              issue.reporter, items)
        return JSONResponse(self.render(issue, {"id", "key", *ALL_FIELDS}))

    async def c_add_comment(self, request: Request) -> Response:
        issue = self.resolve(request.path_params["id_or_key"])
        if issue is None:
            return error(404, NOT_FOUND)
        body = await _json(request)
        at = int(body.get("updated") or now_ms())
        author = self._account(body.get("author")) or issue.reporter
        comment = self.add_comment(issue, author, _adf_or_none(body.get("body")) or adf(""), at)
        issue.updated = max(issue.updated, at)
        self.fire_comment_event("comment_created", issue, comment)
        return JSONResponse(self.render_comment(issue, comment), 201)

    async def c_edit_comment(self, request: Request) -> Response:
        found = self._comment(request)
        if isinstance(found, Response):
            return found
        issue, comment = found
        body = await _json(request)
        comment.body = _adf_or_none(body.get("body")) or comment.body
        comment.updated = int(body.get("updated") or now_ms())
        issue.updated = max(issue.updated, comment.updated)
        self.fire_comment_event("comment_updated", issue, comment)
        return JSONResponse(self.render_comment(issue, comment))

    async def c_delete_comment(self, request: Request) -> Response:
        found = self._comment(request)
        if isinstance(found, Response):
            return found
        issue, comment = found
        issue.comments.remove(comment)
        issue.updated = now_ms()
        self.fire_comment_event("comment_deleted", issue, comment)
        return Response(status_code=204)

    async def c_release(self, request: Request) -> Response:
        """Send held webhooks, in order or reversed, one after another; answer when done."""
        order = (await _json(request)).get("order", "fifo")
        held, self.held = self.held, []
        for item in reversed(held) if order == "reverse" else held:
            await self.webhooks.send(item.body, item.headers, retry=self._retry_policy(item))
        return JSONResponse({"released": len(held)})

    def _comment(self, request: Request) -> tuple[Issue, Comment] | Response:
        issue = self.resolve(request.path_params["id_or_key"])
        if issue is None:
            return error(404, NOT_FOUND)
        for comment in issue.comments:
            if str(comment.id) == request.path_params["comment_id"]:
                return issue, comment
        return error(404, "Can not find a comment for the id: " + request.path_params["comment_id"])

    def _account(self, value: Any) -> str | None:
        """An accountId from an accountId or a display name (control API convenience)."""
        if not value:
            return None
        if value in self.users:
            return str(value)
        for account, name in self.users.items():
            if name == value:
                return account
        return None

    # --- webhooks ---------------------------------------------------------------------------
    def fire_issue_event(self, event: str, issue: Issue, type_name: str, at: int, actor: str,
                         items: list[dict[str, Any]] | None = None) -> None:
        payload: dict[str, Any] = {
            "timestamp": at, "issue_event_type_name": type_name, "user": self.user(actor),
            "issue": self.render(issue, {"id", "key", *ALL_FIELDS}),
        }
        if items:
            payload["changelog"] = {"id": str(self.next_changelog_id), "items": items}
            self.next_changelog_id += 1
        self.fire(event, payload)

    def fire_comment_event(self, event: str, issue: Issue, comment: Comment, flow: str = "Primary") -> None:
        partial = {f: self.field_value(issue, f)
                   for f in ("summary", "status", "priority", "assignee", "issuetype", "project")}
        self.fire(event, {
            "timestamp": comment.updated if event != "comment_deleted" else issue.updated,
            "comment": self.render_comment(issue, comment),
            "issue": {"id": str(issue.id), "self": f"{self.base_url}/rest/api/3/issue/{issue.id}",
                      "key": issue.key, "fields": partial},
        }, flow=flow)

    def fire(self, event: str, payload: dict[str, Any], flow: str = "Primary") -> None:
        payload = {"timestamp": now_ms(), "webhookEvent": event, **payload, "matchedWebhookIds": [1]}
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Atlassian-Webhook-Identifier": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "X-Atlassian-Webhook-Flow": flow,
            "X-Hub-Signature": sign(WEBHOOK_SECRET, body),
            "User-Agent": "Atlassian Webhook HTTP Client",
        }
        if self.webhook_mode == "hold":
            self.held.append(Held(body, headers))
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # seeding or a caller outside the loop: nothing to deliver to
            return
        self.webhooks.send_soon(body, headers, retry=self._retry_policy(Held(body, headers)))

    def _retry_policy(self, item: Held) -> Callable[[Delivery], Awaitable[None]]:
        """Retry on 408/409/425/429/5xx or no answer, same identifier, growing delays."""

        async def retry(first: Delivery) -> None:
            delivery = first
            for attempt in range(1, WEBHOOK_RETRIES + 1):
                if delivery.dropped or not _retryable(delivery.status):
                    return
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
                headers = {**item.headers, "X-Atlassian-Webhook-Retry": str(attempt)}
                delivery = await self.webhooks.send(item.body, headers)

        return retry

    # --- seeding ----------------------------------------------------------------------------
    def seed(self, profile: str, rng: random.Random, world: dict[str, Any]) -> None:
        sizes = {"empty": (0, 0), "small": (3, 30), "scale": (72, 7556)}
        if profile not in sizes:
            raise ValueError(f"unknown seed profile {profile!r}")
        n_projects, n_issues = sizes[profile]
        accounts = list(self.users)
        for p in range(n_projects):
            key = _project_key(p, n_projects)
            self.add_project(key, f"{key.title()} {rng.choice(_WORDS['topic']).title()} Team")
        projects = list(self.projects.values())
        for n in range(n_issues):
            self._seed_issue(projects[n % len(projects)], rng, accounts)
        world["jira"] = {
            "projects": [{"id": p.id, "key": p.key, "name": p.name} for p in projects],
            "issues": [{"id": str(i.id), "key": i.key, "project_key": self.projects[i.project_id].key,
                        "summary": i.summary} for i in self.issues.values()],
        }

    def _seed_issue(self, project: Project, rng: random.Random, accounts: list[str]) -> None:
        created = _START_MS + rng.randrange(0, 500 * 86400) * 1000 + rng.randrange(1000)
        description = adf(f"{_sentence(rng)}.\n\nCustomers report that {rng.choice(_WORDS['topic'])} "
                          f"is slow {rng.choice(_WORDS['where'])}.")
        issue = self.add_issue(
            project, _sentence(rng), description=description if rng.random() < 0.9 else None,
            reporter=rng.choice(accounts), created=created, status=rng.choice(_STATUSES),
            assignee=rng.choice(accounts) if rng.random() < 0.8 else None,
            labels=rng.sample(_LABELS, rng.randrange(0, 3)), priority=rng.choice(_PRIORITIES),
            issuetype=rng.choice(_TYPES),
        )
        at = created
        for _ in range(rng.randrange(0, 4)):
            at += rng.randrange(60, 5 * 86400) * 1000
            self.add_comment(issue, rng.choice(accounts),
                             adf(f"I looked at {rng.choice(_WORDS['topic'])}: {_sentence(rng).lower()}."), at)
        issue.updated = at + rng.randrange(0, 86400) * 1000

    async def trickle(self, rng: random.Random) -> None:
        """One live edit, as a person would make it: a new issue, a comment, or a transition.
        Same state changes and webhooks as the control API's create/comment/edit."""
        issues = list(self.issues.values())
        roll = rng.random()
        if not self.projects:
            return
        at = now_ms()
        if roll < 0.35 or not issues:
            project = rng.choice(list(self.projects.values()))
            reporter = rng.choice(list(self.users))
            issue = self.add_issue(
                project, _sentence(rng), reporter=reporter, created=at, status="To Do",
                description=adf(f"{_sentence(rng)}.\n\nRaised while looking at "
                                f"{rng.choice(_WORDS['topic'])} {rng.choice(_WORDS['where'])}."),
                assignee=rng.choice(list(self.users)) if rng.random() < 0.5 else None,
                labels=rng.sample(_LABELS, rng.randrange(0, 3)), priority=rng.choice(_PRIORITIES),
                issuetype=rng.choice(_TYPES),
            )
            self.fire_issue_event("jira:issue_created", issue, "issue_created", at, reporter)
        elif roll < 0.7:
            issue = rng.choice(issues)
            author = rng.choice(list(self.users))
            comment = self.add_comment(
                issue, author, adf(f"Update on {rng.choice(_WORDS['topic'])}: {_sentence(rng).lower()}."), at)
            issue.updated = max(issue.updated, at)
            self.fire_comment_event("comment_created", issue, comment)
        else:
            issue = rng.choice(issues)
            later = [s for s in _STATUSES if s != issue.status]
            old, issue.status = issue.status, rng.choice(later)
            items = [_change("status", old, issue.status)]
            if rng.random() < 0.5:
                old_assignee, issue.assignee = issue.assignee, rng.choice(list(self.users))
                items.append(_change("assignee", old_assignee, issue.assignee))
            issue.updated = at
            self.fire_issue_event("jira:issue_updated", issue, "issue_generic", at,
                                  issue.assignee or issue.reporter, items)


# --- small pure helpers ---------------------------------------------------------------------


class _Reverse:
    """Inverts ordering of a value inside a sort key (for DESC)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reverse) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and other.value == self.value


def adf_text(node: Any) -> str:
    """An ADF document as the plain text REST v2 returns (paragraphs separated by a blank line)."""
    if node.get("type") == "text":
        return str(node.get("text", ""))
    parts = [adf_text(child) for child in node.get("content") or [] if isinstance(child, dict)]
    return ("\n\n" if node.get("type") == "doc" else "").join(parts)


def _to_v2(value: Any) -> Any:
    """A v3 body as v2 gives it: ADF documents as text, ``self`` links under /rest/api/2/."""
    if isinstance(value, dict):
        if value.get("type") == "doc" and "version" in value:
            return adf_text(value)
        return {k: _to_v2(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_v2(v) for v in value]
    if isinstance(value, str) and "/rest/api/3/" in value:
        return value.replace("/rest/api/3/", "/rest/api/2/")
    return value


def as_v2(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Serve a v3 handler under /rest/api/2/, its JSON rewritten as v2 renders it."""

    async def v2(request: Request) -> Response:
        response = await handler(request)
        if not isinstance(response, JSONResponse):
            return response
        body = _to_v2(json.loads(bytes(response.body)))
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return JSONResponse(body, response.status_code, headers=headers)

    return v2


def parse_fields(items: Iterable[str], default: set[str]) -> set[str]:
    """Jira's ``fields`` list: names, ``*all``, ``*navigable`` and ``-name`` exclusions."""
    include: set[str] = set()
    exclude: set[str] = set()
    any_item = False
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        any_item = True
        if item in ("*all", "*navigable"):
            include |= {"id", "key", *ALL_FIELDS}
        elif item.startswith("-"):
            exclude.add(item[1:])
        else:
            include.add(item)
    if not any_item:
        return set(default)
    if not include:  # only exclusions: start from everything
        include = {"id", "key", *ALL_FIELDS}
    return (include - exclude) | {"id"}


def encode_token(offset: int, fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "q": fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, fingerprint: str) -> int | None:
    """The offset inside a token, or None if it is garbage or belongs to another query."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = int(data["o"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return offset if data.get("q") == fingerprint and offset >= 0 else None


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _retryable(status: int | None) -> bool:
    return status is None or status in RETRY_STATUSES or status >= 500


def _change(name: str, old: Any, new: Any) -> dict[str, Any]:
    def text(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, list):
            return " ".join(map(str, value))
        return json.dumps(value) if isinstance(value, dict) else str(value)

    return {"field": name, "fieldtype": "jira", "fieldId": name.lower(), "from": None,
            "fromString": text(old), "to": None, "toString": text(new)}


def _adf_or_none(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, dict) else adf(str(value))


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _project_key(index: int, total: int) -> str:
    """Readable, unique project keys: a few real-looking ones, then generated ones."""
    named = ["SUBS", "OPS", "WEB", "API", "MOB", "DATA", "INFRA", "SEC"]
    if index < len(named):
        return named[index]
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "P" + letters[(index // 26) % 26] + letters[index % 26]


def create(knobs: Knobs | None = None) -> JiraSimulator:
    return JiraSimulator(knobs)
