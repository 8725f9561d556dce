"""Fireflies.ai simulator: the GraphQL API, plan quotas, and V2 webhooks.

``POST /graphql`` with ``Authorization: Bearer <key>`` and ``{"query", "variables"}``. A small,
honest executor answers ``transcripts`` (the date range, paging and the other documented
filters), ``transcript(id)``, ``user`` and ``users``, over the documented Transcript schema. It parses the selection set so only the requested fields
come back, and refuses unknown fields, unknown arguments and fragments with a GraphQL error.

Error bodies follow docs.fireflies.ai/fundamentals/errors: ``{"data", "errors": [{"message",
"code", "friendly", "extensions": {"code", "status", "helpUrls", "metadata"?}}]}``. The HTTP
status equals ``extensions.status`` (UNCONFIRMED: the docs name that field ``http_status_code``;
a client must also read errors from a 200). Validation errors use the Apollo shape
(``extensions.code = GRAPHQL_VALIDATION_FAILED``) with status 400.

Quota: a plan setting, "business" or "enterprise" (60 requests per rolling minute; business is
the default) or "free" or "pro" (50 per rolling day), or any ``{"limit", "period"}``; ``knobs.rate_limit`` (per second) replaces
the plan when set, 0 = unlimited. Exceeding it answers HTTP 429 with code ``too_many_requests`` and
``extensions.metadata.retryAfter`` = epoch ms when a slot frees up (UNCONFIRMED semantics).
The rolling window is the strictest reading of "N requests per minute/day".

Control API under ``/_sandbox/``: ``POST transcripts`` (new meeting, not processed),
``POST transcripts/{id}/process`` (fills sentences + summary, fires ``meeting.transcribed``),
``PATCH`` / ``DELETE transcripts/{id}``, ``GET transcripts`` (ground truth), ``PUT plan``,
``GET usage``.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import random
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.base import Knobs, Simulator

API_KEY = "ff-sandbox-api-key-0001"
WEBHOOK_SECRET = "ff-sandbox-signing-secret"  # 16–32 characters, as Fireflies requires
MAX_LIMIT = 50
#: Requests per period: Business and Enterprise 60 a minute; Free and Pro 50 a day.
PLANS = {"business": (60, 60.0), "enterprise": (60, 60.0), "free": (50, 86400.0), "pro": (50, 86400.0)}
HELP = "https://docs.fireflies.ai/miscellaneous/error-codes#"

# --- the schema: which fields exist on which type, and what each returns --------------------
# A field maps to None (a scalar) or to the name of the object type it returns.
TYPES: dict[str, dict[str, str | None]] = {
    "Query": {"transcripts": "Transcript", "transcript": "Transcript", "user": "User", "users": "User"},
    # The API key's owner (``user`` without ``id``), or a teammate by ``id``.
    "User": {"user_id": None, "email": None, "name": None, "num_transcripts": None,
             "minutes_consumed": None, "is_admin": None, "integrations": None},
    "Transcript": {
        "id": None, "title": None, "date": None, "dateString": None, "duration": None,
        "organizer_email": None, "host_email": None, "participants": None,
        "speakers": "Speaker", "transcript_url": None, "sentences": "Sentence",
        "summary": "Summary",
        # The rest of the documented Transcript schema (docs.fireflies.ai/schema/transcript).
        "privacy": None, "fireflies_users": None, "audio_url": None, "video_url": None,
        "meeting_link": None, "calendar_id": None, "cal_id": None, "calendar_type": None,
        "meeting_attendees": "MeetingAttendee", "meeting_attendance": "MeetingAttendance",
        "meeting_info": "MeetingInfo", "user": "User",
    },
    "Speaker": {"id": None, "name": None},
    "MeetingAttendee": {"displayName": None, "email": None, "phoneNumber": None, "name": None,
                        "location": None},
    "MeetingAttendance": {"name": None, "join_time": None, "leave_time": None},
    "MeetingInfo": {"fred_joined": None, "silent_meeting": None, "summary_status": None},
    "Sentence": {
        "index": None, "text": None, "raw_text": None, "speaker_name": None,
        "speaker_id": None, "start_time": None, "end_time": None, "ai_filters": "AIFilter",
    },
    "AIFilter": {"task": None, "pricing": None, "metric": None, "question": None,
                 "date_and_time": None, "text_cleanup": None, "sentiment": None},
    "Summary": {
        "overview": None, "action_items": None, "keywords": None, "short_summary": None,
        "outline": None, "bullet_gist": None, "gist": None, "shorthand_bullet": None,
        "short_overview": None, "meeting_type": None, "topics_discussed": None,
        "transcript_chapters": None,
    },
}
#: Transcript fields the control API may not set (derived from the others).
DERIVED = {"id", "dateString", "host_email", "user", "fireflies_users", "cal_id", "meeting_attendees",
           "meeting_attendance", "meeting_info", "privacy", "audio_url", "video_url",
           "meeting_link", "calendar_id", "calendar_type"}
ARGUMENTS = {
    # The documented filters (docs.fireflies.ai/graphql-api/query/transcripts); ``title``,
    # ``date``, ``host_email``, ``organizer_email`` and ``participant_email`` are deprecated there
    # but still served.
    ("Query", "transcripts"): {"fromDate", "toDate", "limit", "skip", "keyword", "scope", "title",
                               "date", "organizers", "participants", "user_id", "mine",
                               "host_email", "organizer_email", "participant_email"},
    ("Query", "transcript"): {"id"},
    ("Query", "user"): {"id"},
}
#: Who the sandbox's API key belongs to.
OWNER = {"user_id": "01SANDBOXOWNER", "email": "owner@example.com", "name": "Sandbox Owner",
         "is_admin": True, "integrations": ["zoom", "google_meet"]}


class GraphQLError(Exception):
    """A request-level GraphQL error, answered with ``status``."""

    def __init__(self, message: str, code: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.extra = extra

    def body(self) -> dict[str, Any]:
        extensions: dict[str, Any] = {"code": self.code, "status": self.status,
                                      "helpUrls": [HELP + self.code], **self.extra}
        return {"message": self.message, "code": self.code, "friendly": True,
                "extensions": extensions}


# --- a tiny GraphQL parser ------------------------------------------------------------------
_TOKEN = re.compile(
    r'\s*(?:(?P<comment>#[^\n]*)|(?P<spread>\.\.\.)|(?P<punct>[{}()\[\]:!$,=@])'
    r'|(?P<string>"(?:[^"\\]|\\.)*")|(?P<number>-?\d+(?:\.\d+)?)|(?P<name>[_A-Za-z][_0-9A-Za-z]*))'
)


@dataclass
class FieldNode:
    name: str
    alias: str
    args: dict[str, Any]
    selections: list[FieldNode] | None
    line: int
    column: int


@dataclass
class Operation:
    kind: str
    variables: dict[str, tuple[str, Any]]  # name → (type text, default)
    selections: list[FieldNode] = field(default_factory=list)


class _Parser:
    """Recursive descent over the token stream; raises GraphQLError on anything unsupported."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(source):
            match = _TOKEN.match(source, pos)
            if not match or match.end() == pos:
                if source[pos:].strip() == "":
                    break
                raise _syntax(f'Syntax Error: Unexpected character "{source[pos]}".')
            pos = match.end()
            kind = match.lastgroup or ""
            if kind != "comment":
                self.tokens.append((kind, match.group(kind), match.start(kind)))
        self.i = 0

    def peek(self, value: str | None = None) -> bool:
        if self.i >= len(self.tokens):
            return False
        return value is None or self.tokens[self.i][1] == value

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        if self.i >= len(self.tokens):
            raise _syntax("Syntax Error: Unexpected <EOF>.")
        tkind, text, _ = self.tokens[self.i]
        if (value is not None and text != value) or (kind is not None and tkind != kind):
            raise _syntax(f'Syntax Error: Expected {value or kind}, found "{text}".')
        self.i += 1
        return text

    def where(self) -> tuple[int, int]:
        offset = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.source)
        line = self.source.count("\n", 0, offset) + 1
        return line, offset - (self.source.rfind("\n", 0, offset) + 1) + 1

    def document(self) -> Operation:
        if self.peek("{"):
            op = Operation("query", {}, self.selection_set())
        else:
            kind = self.take(kind="name")
            if kind == "fragment":
                raise _validation("Fragments are not supported by this sandbox.")
            if kind not in ("query", "mutation", "subscription"):
                raise _syntax(f'Syntax Error: Unexpected Name "{kind}".')
            if self.peek() and self.tokens[self.i][0] == "name":
                self.take()
            variables = self.variable_definitions() if self.peek("(") else {}
            op = Operation(kind, variables, self.selection_set())
        if self.i != len(self.tokens):
            raise _validation("This sandbox executes exactly one operation per request.")
        return op

    def variable_definitions(self) -> dict[str, tuple[str, Any]]:
        self.take("(")
        out: dict[str, tuple[str, Any]] = {}
        while not self.peek(")"):
            self.take("$")
            name = self.take(kind="name")
            self.take(":")
            type_text = self.type_ref()
            default = None
            if self.peek("="):
                self.take("=")
                default = self.value({})
            out[name] = (type_text, default)
            if self.peek(","):
                self.take(",")
        self.take(")")
        return out

    def type_ref(self) -> str:
        if self.peek("["):
            self.take("[")
            inner = self.type_ref()
            self.take("]")
            text = f"[{inner}]"
        else:
            text = self.take(kind="name")
        if self.peek("!"):
            self.take("!")
            text += "!"
        return text

    def selection_set(self) -> list[FieldNode]:
        self.take("{")
        fields_: list[FieldNode] = []
        while not self.peek("}"):
            if self.peek("..."):
                raise _validation("Fragments are not supported by this sandbox.")
            if self.peek(","):
                self.take(",")
                continue
            line, column = self.where()
            alias = name = self.take(kind="name")
            if self.peek(":"):
                self.take(":")
                name = self.take(kind="name")
            args = self.arguments() if self.peek("(") else {}
            if self.peek("@"):
                raise _validation("Directives are not supported by this sandbox.")
            selections = self.selection_set() if self.peek("{") else None
            fields_.append(FieldNode(name, alias, args, selections, line, column))
        self.take("}")
        if not fields_:
            raise _syntax('Syntax Error: Expected Name, found "}".')
        return fields_

    def arguments(self) -> dict[str, Any]:
        self.take("(")
        out: dict[str, Any] = {}
        while not self.peek(")"):
            name = self.take(kind="name")
            self.take(":")
            out[name] = self.value(None)
            if self.peek(","):
                self.take(",")
        self.take(")")
        return out

    def value(self, variables: dict[str, Any] | None) -> Any:
        """A literal, or ``("$", name)`` for a variable reference (resolved at execution)."""
        kind, text, _ = self.tokens[self.i] if self.i < len(self.tokens) else ("", "", 0)
        if text == "$":
            self.take("$")
            return ("$", self.take(kind="name"))
        if text == "[":
            self.take("[")
            items = []
            while not self.peek("]"):
                items.append(self.value(variables))
                if self.peek(","):
                    self.take(",")
            self.take("]")
            return items
        self.take()
        if kind == "string":
            return json.loads(text)
        if kind == "number":
            return float(text) if "." in text else int(text)
        if kind == "name":
            return {"true": True, "false": False, "null": None}.get(text, text)
        raise _syntax(f'Syntax Error: Unexpected "{text}".')


def _syntax(message: str) -> GraphQLError:
    return GraphQLError(message, "GRAPHQL_PARSE_FAILED", 400)


def _validation(message: str, node: FieldNode | None = None) -> GraphQLError:
    extra: dict[str, Any] = {}
    error = GraphQLError(message, "GRAPHQL_VALIDATION_FAILED", 400, **extra)
    if node is not None:
        error.extra["locations"] = [{"line": node.line, "column": node.column}]
    return error


# --- state ----------------------------------------------------------------------------------
@dataclass
class Transcript:
    id: str
    title: str
    date: int  # epoch ms of the meeting start
    duration: float  # minutes
    organizer_email: str
    participants: list[str]
    speakers: list[dict[str, Any]]
    transcript_url: str
    sentences: list[dict[str, Any]] | None = None
    summary: dict[str, Any] | None = None

    def resolve(self, name: str) -> Any:
        if name == "dateString":
            return datetime.fromtimestamp(self.date / 1000, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.000Z")
        if name == "host_email":
            return self.organizer_email
        if name == "meeting_attendees":
            return [{"displayName": _display(email), "email": email, "phoneNumber": None,
                     "name": _display(email), "location": None} for email in self.participants]
        if name == "meeting_attendance":
            if self.sentences is None:
                return []
            start = datetime.fromtimestamp(self.date / 1000, timezone.utc)
            end = datetime.fromtimestamp(self.date / 1000 + self.duration * 60, timezone.utc)
            return [{"name": s["name"], "join_time": start.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                     "leave_time": end.strftime("%Y-%m-%dT%H:%M:%S.000Z")} for s in self.speakers]
        if name == "meeting_info":
            return {"fred_joined": True, "silent_meeting": False,
                    "summary_status": "processed" if self.summary is not None else "processing"}
        if name == "fireflies_users":
            return [self.organizer_email]
        if name == "privacy":
            return "link"
        if name in ("audio_url", "video_url", "calendar_id", "cal_id", "calendar_type"):
            return None  # no recording or calendar event in the sandbox
        if name == "meeting_link":
            return f"https://meet.google.com/{self.id[-10:-7].lower()}-{self.id[-7:-3].lower()}-{self.id[-3:].lower()}"
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return {name: self.resolve(name) for name in TYPES["Transcript"] if name != "user"}


def _display(email: str) -> str:
    """A display name from an email's local part: ``ada.okafor@x`` → ``Ada Okafor``."""
    return " ".join(part.capitalize() for part in re.split(r"[._-]+", email.split("@")[0]) if part)


class RollingWindow:
    """At most ``limit`` requests in any ``period`` seconds (the strictest quota reading)."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self.stamps: collections.deque[float] = collections.deque()

    def take(self, now: float) -> float:
        """0 when the request may proceed (and is counted), else seconds until it may."""
        while self.stamps and self.stamps[0] <= now - self.period:
            self.stamps.popleft()
        if len(self.stamps) < self.limit:
            self.stamps.append(now)
            return 0.0
        return self.stamps[0] + self.period - now


# --- seed data ------------------------------------------------------------------------------
FIRST = ["Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kemi", "Liam", "Maya", "Noor", "Omar", "Priya"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Patel", "Rossi", "Tanaka", "Schmidt", "Nguyen"]
TOPICS = ["billing retries", "the release checklist", "onboarding emails", "API rate limits",
          "the search index", "customer escalations", "the data migration", "SSO rollout",
          "invoice exports", "mobile crashes", "the Q3 roadmap", "load testing"]
PHRASES = [
    "I think we should look at {t} before the end of the sprint.",
    "The numbers on {t} improved after last week's change.",
    "Can someone own the follow-up on {t}?",
    "We agreed to keep {t} out of scope for now.",
    "There is still one open question about {t}.",
    "I'll write up the decision on {t} in the ticket.",
    "Let's pair on {t} tomorrow morning.",
    "Customers keep asking about {t}, so it is a priority.",
]


def fallback_world(rng: random.Random) -> dict[str, Any]:
    """A small Jira world of the shared shape, for running this simulator alone."""
    projects = [{"id": "10000", "key": "SUBS", "name": "Subscriptions"},
                {"id": "10001", "key": "OPS", "name": "Operations"},
                {"id": "10002", "key": "WEB", "name": "Website"}]
    issues = []
    for n in range(1, 31):
        project = projects[n % len(projects)]
        issues.append({"id": str(10100 + n), "key": f"{project['key']}-{n}",
                       "project_key": project["key"],
                       "summary": f"{rng.choice(TOPICS).capitalize()} follow-up {n}"})
    return {"projects": projects, "issues": issues}


class FirefliesSimulator(Simulator):
    name = "fireflies"

    def __init__(self, knobs: Knobs | None = None) -> None:
        super().__init__(knobs)
        self.api_key = API_KEY
        self.webhook_secret = WEBHOOK_SECRET
        self.transcripts: dict[str, Transcript] = {}
        self.deleted: set[str] = set()
        self.projects: list[dict[str, str]] = []
        self.plan = "business"
        self.quota: tuple[int, float] = PLANS["business"]
        self._window = RollingWindow(*self.quota)
        self._knob_window: tuple[float, RollingWindow] | None = None
        self.usage = {"requests": 0, "too_many_requests": 0, "auth_failed": 0}
        self._counter = 0

    # --- wiring -----------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route("/graphql", self._graphql, methods=["POST"])]

    def control_routes(self) -> list[BaseRoute]:
        return [
            Route("/transcripts", self._c_list, methods=["GET"]),
            Route("/transcripts", self._c_create, methods=["POST"]),
            Route("/transcripts/{id}", self._c_get, methods=["GET"]),
            Route("/transcripts/{id}", self._c_edit, methods=["PATCH"]),
            Route("/transcripts/{id}", self._c_delete, methods=["DELETE"]),
            Route("/transcripts/{id}/process", self._c_process, methods=["POST"]),
            Route("/plan", self._c_plan, methods=["PUT"]),
            Route("/usage", self._c_usage, methods=["GET"]),
        ]

    def env(self, base_url: str) -> dict[str, str]:
        return {"FIREFLIES_API_URL": f"{base_url}/graphql", "FIREFLIES_API_KEY": self.api_key,
                "FIREFLIES_WEBHOOK_SECRET": self.webhook_secret}

    # --- seeding ----------------------------------------------------------------------------
    def seed(self, profile: str, rng: random.Random, world: dict[str, Any]) -> None:
        jira = world.setdefault("jira", fallback_world(rng))
        self.projects = list(jira.get("projects", []))
        count, sentences = {"empty": (0, 0), "small": (8, 24), "scale": (200, 300)}[profile]
        now_ms = int(time.time() // 3600 * 3600 * 1000)
        for n in range(count):
            date = now_ms - rng.randint(1, 24 * 90) * 3600 * 1000
            transcript = self.new_transcript(rng, date=date)
            # The newest meeting of the small profile is still being processed.
            if not (profile == "small" and n == count - 1):
                self.fill(transcript, rng, sentences)
            self.transcripts[transcript.id] = transcript

    def new_id(self) -> str:
        self._counter += 1
        return f"01SANDBOX{self._counter:017d}"

    def new_transcript(self, rng: random.Random, **given: Any) -> Transcript:
        people = rng.sample(FIRST, rng.randint(2, 5))
        speakers = [{"id": i, "name": f"{p} {rng.choice(LAST)}"} for i, p in enumerate(people)]
        emails = [f"{s['name'].split()[0].lower()}@example.com" for s in speakers]
        topic = rng.choice(TOPICS)
        title = f"Weekly sync on {topic}"
        if self.projects and rng.random() < 0.75:
            project = rng.choice(self.projects)
            title = rng.choice([f"{project['key']} planning: {topic}",
                                f"{project['name']} review", f"{project['key']} standup"])
        tid = given.get("id") or self.new_id()
        return Transcript(
            id=tid, title=given.get("title", title), date=int(given.get("date", time.time() * 1000)),
            duration=float(given.get("duration", rng.randint(15, 60))),
            organizer_email=given.get("organizer_email", emails[0]),
            participants=list(given.get("participants", emails)),
            speakers=list(given.get("speakers", speakers)),
            transcript_url=f"https://app.fireflies.ai/view/{tid}",
        )

    def fill(self, t: Transcript, rng: random.Random, count: int) -> None:
        """Finish processing: sentences of alternating speakers and a summary."""
        topics = rng.sample(TOPICS, 3)
        sentences, clock, speaker = [], 0.0, t.speakers[0]
        for index in range(count):
            if rng.random() < 0.45:
                speaker = rng.choice(t.speakers)
            text = rng.choice(PHRASES).format(t=rng.choice(topics))
            length = round(rng.uniform(2.0, 9.0), 2)
            sentences.append({"index": index, "text": text, "raw_text": text,
                              "speaker_name": speaker["name"], "speaker_id": speaker["id"],
                              "start_time": round(clock, 2), "end_time": round(clock + length, 2),
                              "ai_filters": {"task": text if text.startswith(("I'll", "Can someone")) else None,
                                             "pricing": None, "metric": None,
                                             "question": text if text.endswith("?") else None,
                                             "date_and_time": text if "tomorrow" in text else None,
                                             "text_cleanup": text, "sentiment": "neutral"}})
            clock += length + 0.3
        t.sentences = sentences
        owner = t.speakers[-1]["name"]
        t.summary = {
            "overview": f"The team discussed {topics[0]}, {topics[1]} and {topics[2]}. {t.title}.",
            "action_items": f"**{owner}**\nFollow up on {topics[0]}\nShare notes on {topics[1]}",
            "keywords": [w for topic in topics for w in topic.split() if len(w) > 3][:6],
            "short_summary": f"Sync on {topics[0]}.",
            "outline": f"- {topics[0]}\n- {topics[1]}\n- {topics[2]}",
            "bullet_gist": f"- {topics[0]}",
            "gist": f"Sync on {topics[0]} and {topics[1]}.",
            "shorthand_bullet": f"- {topics[0]}\n- {topics[1]}",
            "short_overview": f"The team discussed {topics[0]}.",
            "meeting_type": "Status update",
            "topics_discussed": list(topics),
            "transcript_chapters": [],
        }

    # --- the API ----------------------------------------------------------------------------
    async def _graphql(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            self.usage["auth_failed"] += 1
            return self._errors(GraphQLError(
                "Invalid API key. Please make sure you are using a valid API key.",
                "auth_failed", 401))
        wait = self._quota_wait()
        if wait:
            self.usage["too_many_requests"] += 1
            retry_at = int((time.time() + wait) * 1000)
            return self._errors(GraphQLError(
                "Too many requests. Please retry after some time.", "too_many_requests", 429,
                metadata={"retryAfter": retry_at}))
        self.usage["requests"] += 1
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict) or not isinstance(body.get("query"), str):
                raise GraphQLError("POST body must be JSON with a string 'query'.",
                                   "BAD_REQUEST", 400)
            variables = body.get("variables") or {}
            if not isinstance(variables, dict):
                raise GraphQLError("'variables' must be an object.", "BAD_REQUEST", 400)
            data = self.execute(body["query"], variables)
        except json.JSONDecodeError:
            return self._errors(GraphQLError("POST body is not valid JSON.", "BAD_REQUEST", 400))
        except GraphQLError as exc:
            return self._errors(exc, data=exc.extra.pop("data", None))
        return JSONResponse({"data": data})

    def _errors(self, error: GraphQLError, data: Any = None) -> Response:
        return JSONResponse({"data": data, "errors": [error.body()]}, error.status)

    def _quota_wait(self) -> float:
        now = time.monotonic()
        rate = self.knobs.rate_limit
        if rate == 0:
            return 0.0
        if rate is not None:
            if self._knob_window is None or self._knob_window[0] != rate:
                self._knob_window = (rate, RollingWindow(max(1, int(rate)), max(1.0, 1 / rate)))
            return self._knob_window[1].take(now)
        return self._window.take(now)

    def execute(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        op = _Parser(query).document()
        if op.kind != "query":
            raise _validation(f"This sandbox does not support {op.kind} operations.")
        values = self._variables(op, variables)
        out: dict[str, Any] = {}
        for node in op.selections:
            self._check(node, "Query")
            args = {k: _bind(v, values) for k, v in node.args.items()}
            if node.name == "transcripts":
                items = self._list(args)
                out[node.alias] = [self._select(t, node.selections or [], "Transcript") for t in items]
            elif node.name == "user":
                out[node.alias] = self._select(self._user(args, out, node.alias), node.selections or [], "User")
            elif node.name == "users":  # the team: only the API key's owner in the sandbox
                out[node.alias] = [self._select(self._user({}, out, node.alias), node.selections or [], "User")]
            else:
                t = self._one(args, out, node.alias)
                out[node.alias] = self._select(t, node.selections or [], "Transcript")
        return out

    def _variables(self, op: Operation, given: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, (type_text, default) in op.variables.items():
            if name in given:
                values[name] = given[name]
            elif type_text.endswith("!") and default is None:
                raise GraphQLError(
                    f'Variable "${name}" of required type "{type_text}" was not provided.',
                    "BAD_USER_INPUT", 400)
            else:
                values[name] = default
        return values

    def _check(self, node: FieldNode, parent: str) -> None:
        """Reject unknown fields/arguments, and scalars with (or objects without) subfields."""
        fields_ = TYPES[parent]
        if node.name not in fields_:
            raise _validation(f'Cannot query field "{node.name}" on type "{parent}".', node)
        for arg in node.args:
            if arg not in ARGUMENTS.get((parent, node.name), set()):
                raise _validation(
                    f'Unknown argument "{arg}" on field "{parent}.{node.name}".', node)
        target = fields_[node.name]
        if target is None and node.selections is not None:
            raise _validation(f'Field "{node.name}" must not have a selection since it is '
                              "a scalar.", node)
        if target is not None and node.selections is None:
            raise _validation(f'Field "{node.name}" of type "{target}" must have a selection '
                              "of subfields.", node)
        for child in node.selections or []:
            self._check(child, target or "")

    def _select(self, obj: Any, selections: list[FieldNode], type_name: str) -> Any:
        if obj is None:
            return None
        if isinstance(obj, list):
            return [self._select(item, selections, type_name) for item in obj]
        out: dict[str, Any] = {}
        for node in selections:
            if isinstance(obj, Transcript) and node.name == "user":
                value: Any = self._user({}, {}, "user")  # the owner recorded every meeting
            else:
                value = obj.resolve(node.name) if isinstance(obj, Transcript) else obj.get(node.name)
            target = TYPES[type_name][node.name]
            out[node.alias] = self._select(value, node.selections or [], target) if target else value
        return out

    def _list(self, args: dict[str, Any]) -> list[Transcript]:
        limit = args.get("limit")
        limit = MAX_LIMIT if limit is None else limit
        skip = args.get("skip") or 0
        bad = []
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            bad.append(("limit", f"limit must not be greater than {MAX_LIMIT} or less than 1"))
        if not isinstance(skip, int) or skip < 0:
            bad.append(("skip", "skip must not be less than 0"))
        start = _date_arg(args, "fromDate", bad)
        end = _date_arg(args, "toDate", bad)
        keep = _filters(args, bad)
        if bad:
            raise _invalid(bad)
        items = [t for t in self.transcripts.values()
                 if (start is None or t.date >= start) and (end is None or t.date <= end) and keep(t)]
        # Newest meeting first, as the Fireflies app lists them; id breaks ties stably.
        items.sort(key=lambda t: (t.date, t.id), reverse=True)
        return items[skip: skip + limit]

    def _user(self, args: dict[str, Any], data: dict[str, Any], alias: str) -> dict[str, Any]:
        uid = args.get("id")
        if uid is not None and uid != OWNER["user_id"]:
            raise GraphQLError("User not found", "object_not_found", 404,
                               metadata={"objectType": "User"}, data={**data, alias: None})
        minutes = sum(t.duration for t in self.transcripts.values())
        return {**OWNER, "num_transcripts": len(self.transcripts), "minutes_consumed": round(minutes, 1)}

    def _one(self, args: dict[str, Any], data: dict[str, Any], alias: str) -> Transcript:
        tid = args.get("id")
        if not isinstance(tid, str) or not tid:
            raise GraphQLError("Argument(s) required: id", "args_required", 400,
                               metadata={"fields": ["id"]})
        if tid not in self.transcripts:
            raise GraphQLError("Transcript not found", "object_not_found", 404,
                               metadata={"objectType": "Transcript"}, data={**data, alias: None})
        return self.transcripts[tid]

    # --- control API ------------------------------------------------------------------------
    async def _c_list(self, request: Request) -> Response:
        return JSONResponse({"transcripts": [t.to_dict() for t in self.transcripts.values()],
                             "deleted": sorted(self.deleted)})

    async def _c_get(self, request: Request) -> Response:
        t = self.transcripts.get(request.path_params["id"])
        if t is None:
            return JSONResponse({"error": "no such transcript"}, 404)
        return JSONResponse(t.to_dict())

    async def _c_create(self, request: Request) -> Response:
        given = await _json(request)
        t = self.new_transcript(self.rng, **given)
        self.transcripts[t.id] = t
        return JSONResponse(t.to_dict(), 201)

    async def _c_process(self, request: Request) -> Response:
        t = self.transcripts.get(request.path_params["id"])
        if t is None:
            return JSONResponse({"error": "no such transcript"}, 404)
        given = await _json(request)
        self.fill(t, self.rng, int(given.get("sentence_count", 24)))
        if "sentences" in given:
            t.sentences = given["sentences"]
        if "summary" in given:
            t.summary = given["summary"]
        for event in given.get("events", ["meeting.transcribed"]):
            self.send_event(event, t.id)
        return JSONResponse(t.to_dict())

    async def _c_edit(self, request: Request) -> Response:
        t = self.transcripts.get(request.path_params["id"])
        if t is None:
            return JSONResponse({"error": "no such transcript"}, 404)
        for key, value in (await _json(request)).items():
            if key not in TYPES["Transcript"] or key in DERIVED:
                return JSONResponse({"error": f"cannot edit {key!r}"}, 400)
            setattr(t, key, value)
        return JSONResponse(t.to_dict())

    async def _c_delete(self, request: Request) -> Response:
        tid = request.path_params["id"]
        if self.transcripts.pop(tid, None) is None:
            return JSONResponse({"error": "no such transcript"}, 404)
        self.deleted.add(tid)
        return JSONResponse({"deleted": tid})

    async def _c_plan(self, request: Request) -> Response:
        given = await _json(request)
        if "plan" in given:
            if given["plan"] not in PLANS:
                return JSONResponse({"error": f"plan must be one of {sorted(PLANS)}"}, 400)
            self.plan = given["plan"]
            self.quota = PLANS[self.plan]
        else:
            self.plan = "custom"
            self.quota = (int(given["limit"]), float(given["period"]))
        self._window = RollingWindow(*self.quota)
        return JSONResponse({"plan": self.plan, "limit": self.quota[0], "period": self.quota[1]})

    async def _c_usage(self, request: Request) -> Response:
        return JSONResponse({**self.usage, "plan": self.plan, "limit": self.quota[0],
                             "period": self.quota[1]})

    # --- webhooks ---------------------------------------------------------------------------
    def sign(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()

    def send_event(self, event: str, meeting_id: str) -> None:
        """Fire a Webhooks V2 event (signed over the exact bytes sent)."""
        body = json.dumps({"event": event, "timestamp": int(time.time() * 1000),
                           "meeting_id": meeting_id}).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature": self.sign(body)}
        self.webhooks.send_soon(body, headers)

    async def trickle(self, rng: random.Random) -> None:
        """One live change: a meeting still being processed finishes (its transcript and
        summary appear and ``meeting.transcribed`` fires, as the control API's process call
        does), or, when none is pending, a new meeting starts (not yet transcribed)."""
        pending = [t for t in self.transcripts.values() if t.sentences is None]
        if pending:
            t = min(pending, key=lambda t: t.date)
            self.fill(t, rng, rng.randint(12, 30))
            self.send_event("meeting.transcribed", t.id)
        else:
            t = self.new_transcript(rng, date=int(time.time() * 1000))
            self.transcripts[t.id] = t


def _bind(value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, tuple) and value and value[0] == "$":
        if value[1] not in variables:
            raise GraphQLError(f'Variable "${value[1]}" is not defined.',
                               "GRAPHQL_VALIDATION_FAILED", 400)
        return variables[value[1]]
    if isinstance(value, list):
        return [_bind(v, variables) for v in value]
    return value


def _date_arg(args: dict[str, Any], name: str, bad: list[tuple[str, str]]) -> int | None:
    """An ISO DateTime argument as epoch ms; notes a bad one in ``bad``."""
    raw = args.get(name)
    if raw is None:
        return None
    try:
        # A DateTime is an ISO 8601 string; a number is not one, even where Python would read
        # its digits as a compact date (1794020400000 parses as 1794-02-04T00:40:00).
        if not isinstance(raw, str):
            raise ValueError(raw)
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        bad.append((name, f"{name} must be a Date instance"))
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


def _strings(args: dict[str, Any], name: str, bad: list[tuple[str, str]]) -> set[str] | None:
    raw = args.get(name)
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        bad.append((name, f"{name} must be a list of strings"))
        return None
    return {x.strip().lower() for x in raw}


def _filters(args: dict[str, Any], bad: list[tuple[str, str]]) -> Any:
    """The documented ``transcripts`` filters other than the date range, as one predicate."""
    keyword, title, scope = args.get("keyword"), args.get("title"), args.get("scope")
    if keyword is not None and title is not None:
        bad.append(("keyword", "keyword and title are mutually exclusive"))
    if scope is not None and keyword is None:
        bad.append(("keyword", "keyword is required when scope is provided"))
    scope = str(scope or "title").lower()
    if scope not in ("title", "sentences", "all"):
        bad.append(("scope", "scope must be one of title, sentences, all"))
    for name, most in (("keyword", 255), ("title", 256)):
        value = args.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > most):
            bad.append((name, f"{name} must be a string of at most {most} characters"))
    organizers = _strings(args, "organizers", bad) or set()
    participants = _strings(args, "participants", bad) or set()
    for name, into in (("host_email", organizers), ("organizer_email", organizers),
                       ("participant_email", participants)):
        if args.get(name) is not None:
            into.add(str(args[name]).strip().lower())
    day = args.get("date")
    if day is not None and not isinstance(day, (int, float)):
        bad.append(("date", "date must be a number (epoch ms)"))
        day = None
    user_id, mine = args.get("user_id"), args.get("mine")
    if mine is not None and not isinstance(mine, bool):
        bad.append(("mine", "mine must be a boolean"))
    nobody = user_id is not None and user_id != OWNER["user_id"]

    def keep(t: Transcript) -> bool:
        if nobody:  # every sandbox meeting was recorded by the API key's owner
            return False
        if organizers and t.organizer_email.lower() not in organizers:
            return False
        if participants and not participants & {p.lower() for p in t.participants}:
            return False
        if day is not None and t.date // 86_400_000 != int(day) // 86_400_000:
            return False
        if title is not None and str(title).lower() not in t.title.lower():
            return False
        if keyword is not None:
            needle = str(keyword).lower()
            in_title = needle in t.title.lower()
            in_words = any(needle in s["text"].lower() for s in t.sentences or [])
            hit = {"title": in_title, "sentences": in_words, "all": in_title or in_words}.get(scope, False)
            if not hit:
                return False
        return True

    return keep


def _invalid(bad: list[tuple[str, str]]) -> GraphQLError:
    fields_ = [{"name": n, "message": m, "constraints": [{"type": "invalid", "message": m}]}
               for n, m in bad]
    return GraphQLError("Invalid argument(s) were provided", "invalid_arguments", 400,
                        metadata={"fields": fields_})


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


def create(knobs: Knobs | None = None) -> FirefliesSimulator:
    return FirefliesSimulator(knobs)
