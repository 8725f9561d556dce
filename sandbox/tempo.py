"""Tempo Cloud REST API v4 simulator: worklogs with offset paging, filters and the 5 req/s gate.

- ``GET /4/worklogs`` with ``Authorization: Bearer <token>``; ``from``/``to`` (``yyyy-MM-dd``)
  filter on ``startDate``; ``updatedFrom`` filters on ``updatedAt`` and takes
  ``yyyy-MM-dd'T'HH:mm:ss'Z'`` or a bare date (v4's exact format is UNCONFIRMED; both are accepted
  here, anything else is a 400); ``project`` and ``issue`` take ids (repeatable); ``offset``;
  ``limit`` defaults to 50, at most 5000 (over → 400).
- Response ``{"self", "metadata": {"count", "offset", "limit", "next"?}, "results"}``; ``next``
  is absent on the last page. Results are ordered by (``startDate``, id), or by (``updatedAt``,
  id) when ``updatedFrom`` is given, so an edit during paging moves a worklog later, never
  out of the listing.
- ``GET /4/worklogs/{id}``: one worklog, 404 once deleted.
- Worklogs carry the issue **id** only and the author's accountId only, as v4 does.
- Over 5 requests/s (``knobs.rate_limit``; 0 = unlimited): 429 with ``Retry-After: 1``. Whether
  Tempo sends ``Retry-After`` is UNCONFIRMED: ``PUT /_sandbox/tempo {"retry_after_header": false}``
  leaves it out so clients are tested without it.
- Error bodies are ``{"errors": [{"message": ...}]}`` (shape UNCONFIRMED).

Control API under ``/_sandbox/``: ``POST worklogs``, ``PUT worklogs/{id}``,
``DELETE worklogs/{id}``, ``GET worklogs`` (ground truth incl. deleted ids), ``PUT tempo``.
"""

from __future__ import annotations

import random
import re
import time
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.base import Knobs, Simulator, TokenBucket
from sandbox.fireflies import fallback_world

API_TOKEN = "tempo-sandbox-token-0001"
DEFAULT_RATE = 5.0
DEFAULT_LIMIT = 50
MAX_LIMIT = 5000
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
ACCOUNTS = [f"557058:{n:08x}-sandbox-{n:04d}" for n in range(1, 13)]
WORK = ["Code review", "Pairing on the billing fix", "Sprint planning", "Investigating a flaky test",
        "Customer call", "Writing the migration", "Deploy and monitoring", "Design discussion",
        "Refactoring the importer", "Support rotation"]


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TempoSimulator(Simulator):
    name = "tempo"

    def __init__(self, knobs: Knobs | None = None) -> None:
        super().__init__(knobs)
        self.token = API_TOKEN
        self.worklogs: dict[int, dict[str, Any]] = {}
        self.deleted: set[int] = set()
        self.issue_project: dict[int, int] = {}  # issue id → project id
        self.issues: list[dict[str, Any]] = []
        self.retry_after_header = True
        self.throttled = 0
        self._next_id = 1
        self._bucket: tuple[float, TokenBucket] | None = None

    # --- wiring -----------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route("/4/worklogs", self._list, methods=["GET"]),
                Route("/4/worklogs/{id}", self._get, methods=["GET"])]

    def control_routes(self) -> list[BaseRoute]:
        return [Route("/worklogs", self._c_truth, methods=["GET"]),
                Route("/worklogs", self._c_create, methods=["POST"]),
                Route("/worklogs/{id}", self._c_edit, methods=["PUT"]),
                Route("/worklogs/{id}", self._c_delete, methods=["DELETE"]),
                Route("/tempo", self._c_settings, methods=["PUT"])]

    def env(self, base_url: str) -> dict[str, str]:
        return {"TEMPO_API_URL": base_url, "TEMPO_API_TOKEN": self.token}

    # --- seeding ----------------------------------------------------------------------------
    def seed(self, profile: str, rng: random.Random, world: dict[str, Any]) -> None:
        jira = world.setdefault("jira", fallback_world(rng))
        project_ids = {p["key"]: int(p["id"]) for p in jira["projects"]}
        self.issues = list(jira["issues"])
        self.issue_project = {int(i["id"]): project_ids[i["project_key"]] for i in self.issues
                              if i["project_key"] in project_ids}
        count = {"empty": 0, "small": 30, "scale": 12000}[profile]
        now = time.time()
        for _ in range(count):
            issue = rng.choice(self.issues)
            day = _today() - timedelta(days=rng.randint(0, 119))
            created = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
            created += rng.randint(8, 19) * 3600
            text = rng.choice(WORK)
            if rng.random() < 0.15:  # people often name the issue they worked on
                text = f"{text} for {rng.choice(self.issues)['key']}"
            self.add(issue_id=int(issue["id"]), seconds=rng.choice([900, 1800, 3600, 5400, 7200]),
                     start_date=day.isoformat(), description=text,
                     author=rng.choice(ACCOUNTS), created=min(created, now))

    def add(self, *, issue_id: int, seconds: int, start_date: str, description: str,
            author: str, created: float | None = None, billable: int | None = None,
            start_time: str = "09:00:00") -> dict[str, Any]:
        wid = self._next_id
        self._next_id += 1
        at = stamp(created if created is not None else time.time())
        self.worklogs[wid] = {
            "tempoWorklogId": wid, "issue": {"id": issue_id}, "timeSpentSeconds": seconds,
            "billableSeconds": seconds if billable is None else billable,
            "startDate": start_date, "startTime": start_time, "description": description,
            "createdAt": at, "updatedAt": at, "author": {"accountId": author},
            "attributes": {"values": []},
        }
        return self.worklogs[wid]

    # --- the API ----------------------------------------------------------------------------
    def _gate(self, request: Request) -> Response | None:
        """Auth, then the rate limit; None when the request may go on."""
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "Authentication failed: the bearer token is missing or invalid.")
        rate = DEFAULT_RATE if self.knobs.rate_limit is None else float(self.knobs.rate_limit)
        if rate > 0:
            if self._bucket is None or self._bucket[0] != rate:
                self._bucket = (rate, TokenBucket(rate))
            wait = self._bucket[1].take()
            if wait:
                self.throttled += 1
                headers = {"Retry-After": "1"} if self.retry_after_header else {}
                return _error(429, "Rate limit exceeded. Please retry after a while.", headers)
        return None

    async def _list(self, request: Request) -> Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        try:
            query = _Query(request)
        except ValueError as exc:
            return _error(400, str(exc))
        rows = [self.render(w) for w in self._filter(query)]
        page = rows[query.offset: query.offset + query.limit]
        meta: dict[str, Any] = {"count": len(page), "offset": query.offset, "limit": query.limit}
        if query.offset + query.limit < len(rows):
            meta["next"] = self._url(request, query.offset + query.limit)
        return JSONResponse({"self": str(request.url), "metadata": meta, "results": page})

    async def _get(self, request: Request) -> Response:
        refused = self._gate(request)
        if refused is not None:
            return refused
        raw = request.path_params["id"]
        worklog = self.worklogs.get(int(raw)) if raw.isdigit() else None
        if worklog is None:
            return _error(404, f"Worklog with id {raw} does not exist.")
        return JSONResponse(self.render(worklog))

    def _filter(self, query: _Query) -> list[dict[str, Any]]:
        rows = []
        for w in self.worklogs.values():
            issue = w["issue"]["id"]
            if query.start and w["startDate"] < query.start or query.end and w["startDate"] > query.end:
                continue
            if query.updated and w["updatedAt"] < query.updated:
                continue
            if query.issues and issue not in query.issues:
                continue
            if query.projects and self.issue_project.get(issue) not in query.projects:
                continue
            rows.append(w)
        key = "updatedAt" if query.updated else "startDate"
        rows.sort(key=lambda w: (w[key], w["tempoWorklogId"]))
        return rows

    def render(self, w: dict[str, Any]) -> dict[str, Any]:
        base = self.base_url
        return {
            **w,
            "self": f"{base}/4/worklogs/{w['tempoWorklogId']}",
            "issue": {"self": f"{base}/rest/api/2/issue/{w['issue']['id']}", "id": w["issue"]["id"]},
            "startDateTimeUtc": f"{w['startDate']}T{w['startTime']}Z",
            "author": {"self": f"{base}/rest/api/2/user?accountId={w['author']['accountId']}",
                       "accountId": w["author"]["accountId"]},
            "attributes": {"self": f"{base}/4/worklogs/{w['tempoWorklogId']}/work-attribute-values",
                           "values": w["attributes"]["values"]},
        }

    def _url(self, request: Request, offset: int) -> str:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "offset"]
        params.append(("offset", str(offset)))
        return f"{self.base_url}/4/worklogs?{urlencode(params)}"

    # --- control API ------------------------------------------------------------------------
    async def _c_truth(self, request: Request) -> Response:
        return JSONResponse({"worklogs": [self.render(w) for w in self.worklogs.values()],
                             "deleted": sorted(self.deleted)})

    async def _c_create(self, request: Request) -> Response:
        body = await request.json()
        try:
            worklog = self.add(
                issue_id=int(body["issueId"]), seconds=int(body.get("timeSpentSeconds", 3600)),
                billable=body.get("billableSeconds"),
                start_date=body.get("startDate", _today().isoformat()),
                start_time=body.get("startTime", "09:00:00"),
                description=body.get("description", ""),
                author=body.get("authorAccountId", ACCOUNTS[0]))
        except (KeyError, ValueError, TypeError) as exc:
            return JSONResponse({"error": f"bad worklog: {exc}"}, 400)
        return JSONResponse(self.render(worklog), 201)

    async def _c_edit(self, request: Request) -> Response:
        worklog = self.worklogs.get(int(request.path_params["id"]))
        if worklog is None:
            return JSONResponse({"error": "no such worklog"}, 404)
        body = await request.json()
        fields = {"timeSpentSeconds", "billableSeconds", "startDate", "startTime", "description"}
        for key, value in body.items():
            if key == "issueId":
                worklog["issue"] = {"id": int(value)}
            elif key in fields:
                worklog[key] = value
            else:
                return JSONResponse({"error": f"cannot edit {key!r}"}, 400)
        # Strictly later than before, even within one second, so updatedFrom sees the edit.
        previous = datetime.strptime(worklog["updatedAt"], "%Y-%m-%dT%H:%M:%SZ")
        worklog["updatedAt"] = stamp(max(time.time(), previous.replace(tzinfo=timezone.utc).timestamp() + 1))
        return JSONResponse(self.render(worklog))

    async def _c_delete(self, request: Request) -> Response:
        wid = int(request.path_params["id"])
        if self.worklogs.pop(wid, None) is None:
            return JSONResponse({"error": "no such worklog"}, 404)
        self.deleted.add(wid)
        return JSONResponse({"deleted": wid})

    async def _c_settings(self, request: Request) -> Response:
        body = await request.json()
        self.retry_after_header = bool(body.get("retry_after_header", self.retry_after_header))
        return JSONResponse({"retry_after_header": self.retry_after_header,
                             "throttled": self.throttled})

    async def trickle(self, rng: random.Random) -> None:
        """One live edit: someone logs time today, or corrects a worklog. Tempo sends no
        webhooks; the reconciler's ``updatedFrom`` polling picks these up."""
        if self.worklogs and rng.random() < 0.35:
            worklog = self.worklogs[rng.choice(list(self.worklogs))]
            worklog["timeSpentSeconds"] = rng.choice([900, 1800, 3600, 5400, 7200])
            worklog["billableSeconds"] = worklog["timeSpentSeconds"]
            worklog["description"] = f"{worklog['description'].split(' (corrected')[0]} (corrected)"
            previous = datetime.strptime(worklog["updatedAt"], "%Y-%m-%dT%H:%M:%SZ")
            worklog["updatedAt"] = stamp(max(time.time(), previous.replace(tzinfo=timezone.utc).timestamp() + 1))
        elif self.issues:
            issue = rng.choice(self.issues)
            self.add(issue_id=int(issue["id"]), seconds=rng.choice([900, 1800, 3600, 5400]),
                     start_date=_today().isoformat(), description=rng.choice(WORK),
                     author=rng.choice(ACCOUNTS), start_time=f"{rng.randint(8, 17):02d}:00:00")


class _Query:
    """The validated query string of ``GET /4/worklogs``."""

    def __init__(self, request: Request) -> None:
        params = request.query_params
        self.start = _date(params.get("from"), "from")
        self.end = _date(params.get("to"), "to")
        self.updated = _updated(params.get("updatedFrom"))
        self.issues = {_int(v, "issue") for v in params.getlist("issue")}
        self.projects = {_int(v, "project") for v in params.getlist("project")}
        self.offset = _int(params.get("offset", "0"), "offset")
        self.limit = _int(params.get("limit", str(DEFAULT_LIMIT)), "limit")
        if self.limit < 1 or self.limit > MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        if self.offset < 0:
            raise ValueError("offset must not be negative")


def _date(raw: str | None, name: str) -> str | None:
    if raw is None:
        return None
    if not _DATE.match(raw):
        raise ValueError(f"Invalid date format for '{name}': expected yyyy-MM-dd")
    try:
        return date.fromisoformat(raw).isoformat()
    except ValueError:
        raise ValueError(f"Invalid date for '{name}': {raw}") from None


def _updated(raw: str | None) -> str | None:
    """``updatedFrom`` as a comparable ``yyyy-MM-ddTHH:mm:ssZ`` string."""
    if raw is None:
        return None
    if _DATE.match(raw):
        return f"{_date(raw, 'updatedFrom')}T00:00:00Z"
    if not _STAMP.match(raw):
        raise ValueError("Invalid format for 'updatedFrom': expected yyyy-MM-dd'T'HH:mm:ss'Z'")
    return raw


def _int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"'{name}' must be a number") from None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"errors": [{"message": message}]}, status, headers=headers)


def create(knobs: Knobs | None = None) -> TempoSimulator:
    return TempoSimulator(knobs)


def _today() -> date:
    """Today in UTC, so windows do not depend on the machine's time zone."""
    return datetime.now(timezone.utc).date()
