"""A Notion API simulator: search, pages, block children, databases, users, signed webhooks.

Facts it follows (research/saas-apis.md §4, developers.notion.com):

- ``Authorization: Bearer`` (401 ``unauthorized``) and ``Notion-Version`` (400
  ``missing_version``) on every call; versions 2022-06-28, 2025-09-03 and 2026-03-11 (and the
  older 2021-05-11 to 2022-02-22, answered as 2022-06-28 with pre-2022-02-22 block ``text``). From
  2026-03-11 pages and blocks carry ``in_trash`` only; older versions also carry ``archived``.
  From 2025-09-03 databases list ``data_sources`` and rows are queried through
  ``/v1/data_sources/{id}/query``; ``/v1/databases/{id}/query`` answers only 2022-06-28.
- ``created_time`` / ``last_edited_time`` are rounded *down to the minute*, as Notion does.
- Search sorts only by ``last_edited_time``; ``page_size`` ≤ 100; trashed and unshared pages are
  never returned (the stricter reading of an UNCONFIRMED fact).
- ~3 requests/s on average with bursts of 10 (burst size UNCONFIRMED), 429 ``rate_limited`` with
  ``Retry-After`` in whole seconds; a settings knob sheds load with 529 ``service_overload``.
- Webhooks: an unsigned verification POST ``{"verification_token": ...}``, then events signed
  ``X-Notion-Signature: sha256=HMAC(verification_token, raw body)``, IDs only;
  ``page.content_updated`` events for one page are aggregated over ``aggregation_window``
  seconds; non-2xx answers are retried up to 8 attempts with ``attempt_number`` counting up.

See docs/sandbox/notion.md for the control API.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.base import Delivery, Knobs, Simulator, TokenBucket

VERSIONS = ("2022-06-28", "2025-09-03", "2026-03-11")
#: Older versions the real API still serves. They answer as 2022-06-28 does, except that before
#: 2022-02-22 a block's text lives in ``text``, not ``rich_text`` (Notion's 2022-02-22 change).
OLDER_VERSIONS = ("2021-05-11", "2021-05-13", "2021-08-16", "2022-02-22")
#: Notion's documented answer when it sheds load (status-codes page): 529 ``service_overload``.
OVERLOAD_MESSAGE = "Notion is unavailable due to high load. Please try again later."
TOKEN = "ntn_sandbox_notion_integration_token"
VERIFICATION_TOKEN = "secret_sandbox_notion_verification_token"
#: Notion's documented average; bursts above it are allowed (burst size UNCONFIRMED).
DEFAULT_RATE = 3.0
BURST = 10.0
MAX_PAGE_SIZE = 100
MAX_ATTEMPTS = 8
BLOCK_TYPES = (
    "paragraph", "heading_1", "heading_2", "heading_3", "bulleted_list_item",
    "numbered_list_item", "to_do", "code", "quote", "callout", "toggle",
)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


class NotionError(Exception):
    """An API error in Notion's shape: ``{"object":"error","status","code","message"}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> Response:
        body = {"object": "error", "status": self.status, "code": self.code,
                "message": self.message, "request_id": str(uuid.uuid4())}
        return JSONResponse(body, self.status, headers=self.headers)


def iso(ts: float) -> str:
    """Epoch seconds → Notion's ISO form, rounded down to the minute like the real API."""
    minute = int(ts // 60 * 60)
    return datetime.fromtimestamp(minute, timezone.utc).strftime("%Y-%m-%dT%H:%M:00.000Z")


def iso_ms(ts: float) -> str:
    """Epoch seconds → ISO with milliseconds (webhook ``timestamp`` is not rounded)."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def rich_text(text: str) -> list[dict[str, Any]]:
    if not text:
        return []
    annotations = {"bold": False, "italic": False, "strikethrough": False, "underline": False,
                   "code": False, "color": "default"}
    return [{"type": "text", "text": {"content": text, "link": None},
             "annotations": annotations, "plain_text": text, "href": None}]


def norm_id(raw: str, what: str = "path.id") -> str:
    """Accept dashed or compact UUIDs; anything else is Notion's 400 validation_error."""
    if not _UUID.match(raw):
        raise NotionError(400, "validation_error", f"{what} should be a valid uuid, instead was `\"{raw}\"`.")
    return str(uuid.UUID(raw))


@dataclass
class Block:
    id: str
    type: str
    text: str = ""
    parent: tuple[str, str] = ("page_id", "")  # ("page_id" | "block_id", id)
    children: list[str] = field(default_factory=list)
    checked: bool = False
    language: str = "plain text"
    created: float = 0.0
    edited: float = 0.0
    author: str = ""
    in_trash: bool = False


@dataclass
class PageRec:
    id: str
    title: str
    parent: tuple[str, str]  # ("workspace", "") | ("page_id", id) | ("database_id", id)
    created: float
    edited: float
    created_by: str
    edited_by: str
    properties: dict[str, Any] = field(default_factory=dict)  # db pages: name → plain value
    children: list[str] = field(default_factory=list)  # top-level block ids
    in_trash: bool = False
    shared: bool = True


@dataclass
class Comment:
    """A comment in a discussion on a page (``parent = ("page_id", id)``) or a block."""

    id: str
    discussion_id: str
    parent: tuple[str, str]
    page_id: str  # the page the comment is on, whatever its parent
    text: str
    created: float
    edited: float
    author: str


@dataclass
class Database:
    id: str
    data_source_id: str
    title: str
    parent: tuple[str, str]
    schema: dict[str, str]  # property name → type
    created: float
    edited: float
    created_by: str


@dataclass
class _Pending:
    """A page.content_updated event waiting out the aggregation window."""

    page_id: str
    authors: list[str]
    blocks: list[str]
    last_at: float
    task: asyncio.Task[None] | None = None


def _endpoint(handler: Any) -> Any:
    """An API handler: auth, rate limit and version first; NotionError becomes its JSON."""
    async def wrapped(self: NotionSimulator, request: Request) -> Response:
        try:
            version = self._gate(request)
            if version in OLDER_VERSIONS:
                result = await handler(self, request, "2022-06-28")
                if version < "2022-02-22":
                    result = _text_blocks(result)
                return JSONResponse(result)
            return JSONResponse(await handler(self, request, version))
        except NotionError as err:
            return err.response()
    return wrapped


def _text_blocks(value: Any) -> Any:
    """Blocks as versions before 2022-02-22 render them: ``rich_text`` was called ``text``."""
    if isinstance(value, list):
        return [_text_blocks(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _text_blocks(v) for k, v in value.items()}
    kind = out.get("type")
    if out.get("object") == "block" and isinstance(out.get(kind), dict) and "rich_text" in out[kind]:
        content = dict(out[kind])
        content["text"] = content.pop("rich_text")
        out[kind] = content
    return out


def _control(handler: Any) -> Any:
    """A control-API handler: JSON body in, JSON out, bad input as a Notion 400."""
    async def wrapped(self: NotionSimulator, request: Request) -> Response:
        try:
            body = await request.json() if (await request.body()) else {}
            return JSONResponse(await handler(self, request, body))
        except NotionError as err:
            return err.response()
        except (ValueError, KeyError, TypeError) as exc:
            return NotionError(400, "validation_error", f"bad control request: {exc}").response()
    return wrapped


class NotionSimulator(Simulator):
    name = "notion"

    def __init__(self, knobs: Knobs | None = None) -> None:
        super().__init__(knobs)
        self.ids = random.Random(self.knobs.seed)
        self.workspace_id = self._uuid()
        self.subscription_id = self._uuid()
        self.integration_id = self._uuid()
        self.bot_id = self._uuid()
        self.users: dict[str, dict[str, Any]] = {
            self.bot_id: {"object": "user", "id": self.bot_id, "type": "bot", "name": "vector-sync",
                          "avatar_url": None, "bot": {}},
        }
        self.pages: dict[str, PageRec] = {}
        self.blocks: dict[str, Block] = {}
        self.databases: dict[str, Database] = {}
        #: Live comments by id, in creation order (deleted comments are removed).
        self.comments: dict[str, Comment] = {}
        #: The integration's "read comments" capability; without it the comments API answers
        #: 403 ``restricted_resource``, as Notion does.
        self.read_comments = True
        #: Seconds added to the wall clock (``POST /_sandbox/clock``), for minute-rounding tests.
        self.clock_offset = 0.0
        #: Seconds over which page.content_updated events for one page merge (real: ~60).
        self.aggregation_window = 1.0
        #: First retry delay in seconds; doubles each attempt (real schedule UNCONFIRMED).
        self.retry_delay = 0.05
        self.verification_token = VERIFICATION_TOKEN
        #: Knobs for Notion shedding load: the next ``overload_next`` API calls, and a share
        #: ``overload_rate`` of the others, answer 529 ``service_overload``.
        self.overload_next = 0
        self.overload_rate = 0.0
        self.overloaded = 0
        self._overload_rng = random.Random(self.knobs.seed)
        self._pending: dict[str, _Pending] = {}
        self._bucket: TokenBucket | None = None
        self._bucket_rate: float | None = None

    # --- helpers ----------------------------------------------------------------------
    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.ids.getrandbits(128), version=4))

    def now(self) -> float:
        return time.time() + self.clock_offset

    def env(self, base_url: str) -> dict[str, str]:
        return {"NOTION_API_URL": base_url, "NOTION_TOKEN": TOKEN,
                "NOTION_WEBHOOK_TOKEN": self.verification_token}

    def add_user(self, name: str) -> str:
        uid = self._uuid()
        email = name.lower().replace(" ", ".") + "@example.com"
        self.users[uid] = {"object": "user", "id": uid, "type": "person", "name": name,
                           "avatar_url": None, "person": {"email": email}}
        return uid

    def _user_ref(self, uid: str) -> dict[str, str]:
        return {"object": "user", "id": uid}

    def _author(self, raw: Any) -> str:
        """A control-API author: a user id, a known name, or a new person with that name."""
        if not raw:
            return next(u for u in self.users if self.users[u]["type"] == "person") \
                if len(self.users) > 1 else self.add_user("Sandbox User")
        if raw in self.users:
            return str(raw)
        for uid, user in self.users.items():
            if user.get("name") == raw:
                return uid
        return self.add_user(str(raw))

    # --- state changes (used by seed and the control API) -------------------------------
    def create_page(self, title: str, parent: tuple[str, str] = ("workspace", ""),
                    *, blocks: list[dict[str, Any]] | None = None, properties: dict[str, Any] | None = None,
                    author: str = "", at: float | None = None, shared: bool = True) -> PageRec:
        at = self.now() if at is None else at
        self._check_parent(parent)
        page = PageRec(id=self._uuid(), title=title, parent=parent, created=at, edited=at,
                       created_by=author or self._author(None), edited_by=author or self._author(None),
                       properties=dict(properties or {}), shared=shared)
        if parent[0] == "database_id":
            self._check_properties(self.databases[parent[1]], page.properties)
        self.pages[page.id] = page
        if parent[0] == "page_id":  # a sub-page is also a child_page block of its parent
            self._attach_child_page(page)
        for spec in blocks or []:
            page.children.append(self._make_block(spec, ("page_id", page.id), at, page.created_by))
        return page

    def create_database(self, title: str, parent: tuple[str, str], schema: dict[str, str],
                        *, at: float | None = None) -> Database:
        at = self.now() if at is None else at
        db = Database(id=self._uuid(), data_source_id=self._uuid(), title=title, parent=parent,
                      schema={"Name": "title", **schema}, created=at, edited=at,
                      created_by=self._author(None))
        self.databases[db.id] = db
        if parent[0] == "page_id":
            owner = self.pages[parent[1]]
            block = Block(id=db.id, type="child_database", text=title, parent=parent,
                          created=at, edited=at, author=db.created_by)
            self.blocks[db.id] = block
            owner.children.append(db.id)
        return db

    def _check_parent(self, parent: tuple[str, str]) -> None:
        kind, pid = parent
        if kind == "page_id" and pid not in self.pages:
            raise NotionError(404, "object_not_found", f"Could not find page with ID: {pid}.")
        if kind == "database_id" and pid not in self.databases:
            raise NotionError(404, "object_not_found", f"Could not find database with ID: {pid}.")
        if kind not in ("workspace", "page_id", "database_id"):
            raise NotionError(400, "validation_error", f"unknown parent type {kind}")

    def _check_properties(self, db: Database, props: dict[str, Any]) -> None:
        unknown = set(props) - set(db.schema)
        if unknown:
            raise NotionError(400, "validation_error",
                              f"{sorted(unknown)[0]} is not a property that exists.")

    def _attach_child_page(self, page: PageRec) -> None:
        owner = self.pages[page.parent[1]]
        self.blocks[page.id] = Block(id=page.id, type="child_page", text=page.title,
                                     parent=("page_id", owner.id), created=page.created,
                                     edited=page.edited, author=page.created_by)
        owner.children.append(page.id)

    def _make_block(self, spec: dict[str, Any], parent: tuple[str, str], at: float, author: str) -> str:
        kind = spec.get("type", "paragraph")
        if kind not in BLOCK_TYPES:
            raise NotionError(400, "validation_error", f"block type {kind!r} is not supported here")
        block = Block(id=self._uuid(), type=kind, text=str(spec.get("text", "")), parent=parent,
                      checked=bool(spec.get("checked", False)),
                      language=str(spec.get("language", "plain text")),
                      created=at, edited=at, author=author)
        self.blocks[block.id] = block
        for child in spec.get("children") or []:
            block.children.append(self._make_block(child, ("block_id", block.id), at, author))
        return block.id

    def add_comment(self, text: str, author: str, *, page_id: str = "", block_id: str = "",
                    discussion_id: str = "") -> Comment:
        """A new comment: on a page (a new discussion), on a block, or in an existing discussion.
        Commenting does not change the page's ``last_edited_time``."""
        if discussion_id:
            first = next((c for c in self.comments.values() if c.discussion_id == discussion_id), None)
            if first is None:
                raise NotionError(404, "object_not_found", f"Could not find discussion with ID: {discussion_id}.")
            parent, page = first.parent, first.page_id
        elif page_id:
            parent, page = ("page_id", page_id), page_id
            if page_id not in self.pages or not self.pages[page_id].shared:
                raise NotionError(404, "object_not_found", f"Could not find page with ID: {page_id}.")
        elif block_id:
            if block_id not in self.blocks:
                raise NotionError(404, "object_not_found", f"Could not find block with ID: {block_id}.")
            parent, page = ("block_id", block_id), self._page_of(block_id)
        else:
            raise NotionError(400, "validation_error",
                              "body failed validation: body.parent should be defined, instead was `undefined`.")
        if not text:
            raise NotionError(400, "validation_error", "body.rich_text should be a non-empty array.")
        at = self.now()
        comment = Comment(id=self._uuid(), discussion_id=discussion_id or self._uuid(), parent=parent,
                          page_id=page, text=text, created=at, edited=at, author=author)
        self.comments[comment.id] = comment
        return comment

    def _page_of(self, block_id: str) -> str:
        kind, pid = self.blocks[block_id].parent
        while kind == "block_id":
            kind, pid = self.blocks[pid].parent
        return pid

    def comment_json(self, comment: Comment) -> dict[str, Any]:
        kind, pid = comment.parent
        return {"object": "comment", "id": comment.id, "parent": {"type": kind, kind: pid},
                "discussion_id": comment.discussion_id, "created_time": iso(comment.created),
                "last_edited_time": iso(comment.edited), "created_by": self._user_ref(comment.author),
                "rich_text": rich_text(comment.text)}

    def emit_comment(self, kind: str, comment: Comment, author: str) -> None:
        """``comment.created|updated|deleted``: entity is the comment, data names its page."""
        parent_kind, parent_id = comment.parent
        data = {"page_id": comment.page_id,
                "parent": {"id": parent_id, "type": "page" if parent_kind == "page_id" else "block"}}
        self._send_event(kind, comment.id, [author], data, self.now(), entity_type="comment")

    def _touch(self, page: PageRec, author: str, at: float) -> None:
        page.edited, page.edited_by = at, author

    def set_blocks(self, page: PageRec, specs: list[dict[str, Any]], author: str, *, append: bool) -> list[str]:
        at = self.now()
        if not append:  # replace: trash the old content blocks, keep child pages/databases
            kept = [b for b in page.children if self.blocks[b].type in ("child_page", "child_database")]
            for bid in page.children:
                if bid not in kept:
                    self._drop_block(bid)
            page.children = kept
        new = [self._make_block(spec, ("page_id", page.id), at, author) for spec in specs]
        page.children.extend(new)
        self._touch(page, author, at)
        return new

    def _drop_block(self, bid: str) -> None:
        block = self.blocks.pop(bid)
        for child in block.children:
            self._drop_block(child)

    def move_page(self, page: PageRec, parent: tuple[str, str], author: str) -> None:
        self._check_parent(parent)
        if page.parent[0] == "page_id":
            old = self.pages[page.parent[1]]
            old.children = [b for b in old.children if b != page.id]
            self.blocks.pop(page.id, None)
        page.parent = parent
        if parent[0] == "page_id":
            self._attach_child_page(page)
        self._touch(page, author, self.now())

    def visible(self, page: PageRec) -> bool:
        return page.shared and not page.in_trash

    # --- JSON rendering -------------------------------------------------------------------
    def page_json(self, page: PageRec, version: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "object": "page", "id": page.id, "created_time": iso(page.created),
            "last_edited_time": iso(page.edited), "created_by": self._user_ref(page.created_by),
            "last_edited_by": self._user_ref(page.edited_by), "cover": None, "icon": None,
            "parent": self._parent_json(page.parent, version), "in_trash": page.in_trash,
            "is_locked": False, "properties": self._properties_json(page),
            "url": f"https://www.notion.so/{_slug(page.title)}-{page.id.replace('-', '')}",
            "public_url": None,
        }
        if version != "2026-03-11":  # ``archived`` was removed in 2026-03-11
            body["archived"] = page.in_trash
        return body

    def _parent_json(self, parent: tuple[str, str], version: str) -> dict[str, Any]:
        kind, pid = parent
        if kind == "workspace":
            return {"type": "workspace", "workspace": True}
        if kind == "database_id" and version != "2022-06-28":
            db = self.databases[pid]
            return {"type": "data_source_id", "data_source_id": db.data_source_id, "database_id": pid}
        return {"type": kind, kind: pid}

    def _properties_json(self, page: PageRec) -> dict[str, Any]:
        if page.parent[0] != "database_id":
            return {"title": {"id": "title", "type": "title", "title": rich_text(page.title)}}
        db = self.databases[page.parent[1]]
        out = {}
        for name, kind in db.schema.items():
            value = page.title if kind == "title" else page.properties.get(name)
            out[name] = {"id": _prop_id(name, kind), "type": kind, kind: self._prop_value(kind, value)}
        return out

    def _prop_value(self, kind: str, value: Any) -> Any:
        if kind in ("title", "rich_text"):
            return rich_text(str(value or ""))
        if kind in ("select", "status"):
            return {"id": _short(value), "name": value, "color": "default"} if value else None
        if kind == "multi_select":
            return [{"id": _short(v), "name": v, "color": "default"} for v in value or []]
        if kind == "people":
            return [self.users[self._author(v)] for v in value or []]
        if kind == "date":
            return {"start": value, "end": None, "time_zone": None} if value else None
        if kind == "checkbox":
            return bool(value)
        return value  # number, url, email

    def block_json(self, block: Block, version: str) -> dict[str, Any]:
        kind = block.type
        parent = {"type": block.parent[0], block.parent[0]: block.parent[1]}
        if kind == "child_page":
            content: dict[str, Any] = {"title": self.pages[block.id].title}
        elif kind == "child_database":
            content = {"title": self.databases[block.id].title}
        else:
            content = {"rich_text": rich_text(block.text), "color": "default"}
            if kind == "to_do":
                content["checked"] = block.checked
            elif kind == "code":
                content = {"rich_text": rich_text(block.text), "caption": [], "language": block.language}
            elif kind.startswith("heading_"):
                content["is_toggleable"] = False
            elif kind == "callout":
                content["icon"] = {"type": "emoji", "emoji": "💡"}
        has_children = bool(block.children) or (
            kind == "child_page" and bool(self.pages[block.id].children))
        body = {"object": "block", "id": block.id, "parent": parent,
                "created_time": iso(block.created), "last_edited_time": iso(block.edited),
                "created_by": self._user_ref(block.author), "last_edited_by": self._user_ref(block.author),
                "has_children": has_children, "in_trash": block.in_trash, "type": kind, kind: content}
        if version != "2026-03-11":
            body["archived"] = block.in_trash
        return body

    def database_json(self, db: Database, version: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "object": "database", "id": db.id, "created_time": iso(db.created),
            "last_edited_time": iso(db.edited), "created_by": self._user_ref(db.created_by),
            "last_edited_by": self._user_ref(db.created_by), "title": rich_text(db.title),
            "description": [], "icon": None, "cover": None,
            "parent": self._parent_json(db.parent, version), "url": f"https://www.notion.so/{db.id.replace('-', '')}",
            "in_trash": False, "is_inline": False, "public_url": None,
        }
        if version == "2022-06-28":
            body["properties"] = self._schema_json(db)
        else:
            body["data_sources"] = [{"id": db.data_source_id, "name": db.title}]
        if version != "2026-03-11":
            body["archived"] = False
        return body

    def data_source_json(self, db: Database, version: str) -> dict[str, Any]:
        return {"object": "data_source", "id": db.data_source_id, "title": rich_text(db.title),
                "properties": self._schema_json(db), "parent": {"type": "database_id", "database_id": db.id},
                "database_parent": self._parent_json(db.parent, version),
                "created_time": iso(db.created), "last_edited_time": iso(db.edited),
                "in_trash": False}

    def _schema_json(self, db: Database) -> dict[str, Any]:
        return {name: {"id": _prop_id(name, kind), "name": name, "type": kind, kind: {}}
                for name, kind in db.schema.items()}

    # --- request gate: auth, rate limit, version ----------------------------------------------
    def _gate(self, request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {TOKEN}":
            raise NotionError(401, "unauthorized", "API token is invalid.")
        wait = self._rate_wait()
        if wait:
            raise NotionError(429, "rate_limited", "You have been rate limited. Please try again in a few minutes.",
                              {"Retry-After": str(max(1, int(wait + 0.999)))})
        version = request.headers.get("notion-version")
        if not version:
            raise NotionError(400, "missing_version", "Notion-Version header failed validation: "
                              "Notion-Version header should be defined, instead was `undefined`.")
        if version not in VERSIONS and version not in OLDER_VERSIONS:
            raise NotionError(400, "validation_error", f"Notion-Version header failed validation: "
                              f"`{version}` is not a supported version.")
        if self.overload_next > 0 or (self.overload_rate and self._overload_rng.random() < self.overload_rate):
            self.overload_next = max(0, self.overload_next - 1)
            self.overloaded += 1
            raise NotionError(529, "service_overload", OVERLOAD_MESSAGE)
        return version

    def _rate_wait(self) -> float:
        rate = DEFAULT_RATE if self.knobs.rate_limit is None else float(self.knobs.rate_limit)
        if rate <= 0:
            return 0.0
        if self._bucket is None or self._bucket_rate != rate:
            self._bucket, self._bucket_rate = TokenBucket(rate, max(BURST, rate)), rate
        return self._bucket.take()

    # --- API --------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/search", self.search, methods=["POST"]),
            Route("/v1/pages/{page_id}", self.get_page, methods=["GET"]),
            Route("/v1/blocks/{block_id}", self.get_block, methods=["GET"]),
            Route("/v1/blocks/{block_id}/children", self.get_children, methods=["GET"]),
            Route("/v1/databases/{database_id}", self.get_database, methods=["GET"]),
            Route("/v1/databases/{database_id}/query", self.query_database, methods=["POST"]),
            Route("/v1/data_sources/{ds_id}", self.get_data_source, methods=["GET"]),
            Route("/v1/data_sources/{ds_id}/query", self.query_data_source, methods=["POST"]),
            Route("/v1/comments", self.list_comments, methods=["GET"]),
            Route("/v1/comments", self.create_comment, methods=["POST"]),
            Route("/v1/users/me", self.get_me, methods=["GET"]),
            Route("/v1/users/{user_id}", self.get_user, methods=["GET"]),
        ]

    @_endpoint
    async def search(self, request: Request, version: str) -> dict[str, Any]:
        body = await _json_body(request)
        page_size = _page_size(body.get("page_size"), "body.page_size")
        wanted = _search_filter(body.get("filter"), version)
        direction = _search_sort(body.get("sort"))
        query = str(body.get("query") or "").lower()
        items: list[tuple[float, str, dict[str, Any]]] = []
        if wanted in (None, "page"):
            for p in self.pages.values():
                if self.visible(p) and query in p.title.lower():
                    items.append((p.edited // 60, p.id, self.page_json(p, version)))
        if wanted in (None, "database", "data_source"):
            for db in self.databases.values():
                if query in db.title.lower():
                    obj = self.database_json(db, version) if version == "2022-06-28" \
                        else self.data_source_json(db, version)
                    items.append((db.edited // 60, obj["id"], obj))
        items.sort(key=lambda it: (it[0], it[1]), reverse=direction == "descending")
        return _paginate(items, body.get("start_cursor"), page_size, direction)

    @_endpoint
    async def get_page(self, request: Request, version: str) -> dict[str, Any]:
        page = self._page(request.path_params["page_id"])
        return self.page_json(page, version)

    def _page(self, raw: str) -> PageRec:
        pid = norm_id(raw, "path.page_id")
        page = self.pages.get(pid)
        if page is None or not page.shared:
            raise NotionError(404, "object_not_found", f"Could not find page with ID: {pid}. Make sure "
                              "the relevant pages and databases are shared with your integration.")
        return page

    @_endpoint
    async def get_block(self, request: Request, version: str) -> dict[str, Any]:
        bid = norm_id(request.path_params["block_id"], "path.block_id")
        if bid in self.pages and bid not in self.blocks:  # a top-level page is a block too
            page = self._page(bid)
            return self.block_json(Block(id=page.id, type="child_page", parent=("page_id", ""),
                                         created=page.created, edited=page.edited,
                                         author=page.created_by, in_trash=page.in_trash), version)
        return self.block_json(self._block(bid), version)

    def _block(self, bid: str) -> Block:
        block = self.blocks.get(bid)
        if block is None or (block.type == "child_page" and not self.pages[bid].shared):
            raise NotionError(404, "object_not_found", f"Could not find block with ID: {bid}. Make sure "
                              "the relevant pages and databases are shared with your integration.")
        return block

    @_endpoint
    async def get_children(self, request: Request, version: str) -> dict[str, Any]:
        bid = norm_id(request.path_params["block_id"], "path.block_id")
        page_size = _page_size(request.query_params.get("page_size"), "query.page_size")
        if bid in self.pages:
            children = self._page(bid).children
        else:
            children = self._block(bid).children
        ids = [c for c in children if c in self.blocks]
        start = 0
        cursor = request.query_params.get("start_cursor")
        if cursor:  # block cursors are the id of the next block, as Notion's look
            if cursor not in ids:
                raise NotionError(400, "validation_error", "start_cursor provided is invalid: " + cursor)
            start = ids.index(cursor)
        window = ids[start:start + page_size]
        more = start + page_size < len(ids)
        return {"object": "list", "results": [self.block_json(self.blocks[b], version) for b in window],
                "next_cursor": ids[start + page_size] if more else None, "has_more": more,
                "type": "block", "block": {}}

    def _database(self, raw: str, *, by_data_source: bool = False) -> Database:
        wanted = norm_id(raw, "path.data_source_id" if by_data_source else "path.database_id")
        for db in self.databases.values():
            if (db.data_source_id if by_data_source else db.id) == wanted:
                return db
        kind = "data source" if by_data_source else "database"
        raise NotionError(404, "object_not_found", f"Could not find {kind} with ID: {wanted}. Make sure "
                          "the relevant pages and databases are shared with your integration.")

    @_endpoint
    async def get_database(self, request: Request, version: str) -> dict[str, Any]:
        return self.database_json(self._database(request.path_params["database_id"]), version)

    @_endpoint
    async def query_database(self, request: Request, version: str) -> dict[str, Any]:
        if version != "2022-06-28":  # moved to /v1/data_sources/{id}/query in 2025-09-03
            raise NotionError(400, "invalid_request_url",
                              "Databases query is not supported for this Notion-Version; query the data source.")
        return await self._query(self._database(request.path_params["database_id"]), request, version)

    @_endpoint
    async def get_data_source(self, request: Request, version: str) -> dict[str, Any]:
        if version == "2022-06-28":
            raise NotionError(400, "invalid_request_url", "Invalid request URL.")
        return self.data_source_json(self._database(request.path_params["ds_id"], by_data_source=True), version)

    @_endpoint
    async def query_data_source(self, request: Request, version: str) -> dict[str, Any]:
        if version == "2022-06-28":
            raise NotionError(400, "invalid_request_url", "Invalid request URL.")
        db = self._database(request.path_params["ds_id"], by_data_source=True)
        return await self._query(db, request, version)

    async def _query(self, db: Database, request: Request, version: str) -> dict[str, Any]:
        body = await _json_body(request)
        page_size = _page_size(body.get("page_size"), "body.page_size")
        rows = [p for p in self.pages.values() if p.parent == ("database_id", db.id) and self.visible(p)]
        # Without sorts Notion returns rows newest-created first (order UNCONFIRMED; documented).
        items = sorted(((p.created // 60, p.id, self.page_json(p, version)) for p in rows),
                       key=lambda it: (it[0], it[1]), reverse=True)
        return _paginate(items, body.get("start_cursor"), page_size, "descending")

    @_endpoint
    async def list_comments(self, request: Request, version: str) -> dict[str, Any]:
        """Unresolved comments on a page or block, oldest first, paged by comment id cursors."""
        if not self.read_comments:
            raise NotionError(403, "restricted_resource",
                              "Insufficient permissions for this endpoint.")
        raw = request.query_params.get("block_id")
        if not raw:
            raise NotionError(400, "validation_error",
                              "query failed validation: query.block_id should be defined, instead was `undefined`.")
        bid = norm_id(raw, "query.block_id")
        if bid in self.pages:
            self._page(bid)
            parent = ("page_id", bid)
        else:
            self._block(bid)
            parent = ("block_id", bid)
        page_size = _page_size(request.query_params.get("page_size"), "query.page_size")
        ids = [c.id for c in self.comments.values() if c.parent == parent]
        start = 0
        cursor = request.query_params.get("start_cursor")
        if cursor:
            if cursor not in ids:
                raise NotionError(400, "validation_error", "start_cursor provided is invalid: " + cursor)
            start = ids.index(cursor)
        more = start + page_size < len(ids)
        window = ids[start:start + page_size]
        return {"object": "list", "results": [self.comment_json(self.comments[c]) for c in window],
                "next_cursor": ids[start + page_size] if more else None, "has_more": more,
                "type": "comment", "comment": {}}

    @_endpoint
    async def create_comment(self, request: Request, version: str) -> dict[str, Any]:
        """``POST /v1/comments``: ``parent.page_id`` starts a discussion, ``discussion_id`` replies."""
        body = await _json_body(request)
        parent = body.get("parent") or {}
        if not isinstance(parent, dict):
            raise NotionError(400, "validation_error", "body failed validation: body.parent should be an object.")
        rich = body.get("rich_text")
        if not isinstance(rich, list):
            raise NotionError(400, "validation_error",
                              "body failed validation: body.rich_text should be an array, instead was `undefined`.")
        text = "".join(str((part.get("text") or {}).get("content", "")) for part in rich if isinstance(part, dict))
        discussion = str(body.get("discussion_id") or "")
        if bool(parent) == bool(discussion):
            raise NotionError(400, "validation_error", "body failed validation: exactly one of "
                              "body.parent or body.discussion_id should be defined.")
        page_id = norm_id(str(parent["page_id"]), "body.parent.page_id") if parent.get("page_id") else ""
        block_id = norm_id(str(parent["block_id"]), "body.parent.block_id") if parent.get("block_id") else ""
        if parent and not (page_id or block_id):
            raise NotionError(400, "validation_error", "body.parent.page_id should be defined.")
        comment = self.add_comment(text, self.bot_id, page_id=page_id, block_id=block_id,
                                   discussion_id=discussion)
        self.emit_comment("comment.created", comment, self.bot_id)
        return self.comment_json(comment)

    @_endpoint
    async def get_me(self, request: Request, version: str) -> dict[str, Any]:
        return {**self.users[self.bot_id], "bot": {"owner": {"type": "workspace", "workspace": True},
                                                   "workspace_name": "Sandbox"}}

    @_endpoint
    async def get_user(self, request: Request, version: str) -> dict[str, Any]:
        uid = norm_id(request.path_params["user_id"], "path.user_id")
        if uid not in self.users:
            raise NotionError(404, "object_not_found", f"Could not find user with ID: {uid}.")
        return self.users[uid]

    # --- webhooks ---------------------------------------------------------------------
    def sign(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self.verification_token.encode(), body, hashlib.sha256).hexdigest()

    def emit(self, kind: str, page: PageRec, author: str, data: dict[str, Any] | None = None) -> None:
        """Queue one event about ``page``; content updates wait out the aggregation window."""
        if kind == "page.content_updated":
            self._aggregate(page.id, author, (data or {}).get("updated_blocks", []))
            return
        payload = {"parent": self._event_parent(page), **(data or {})}
        self._send_event(kind, page.id, [author], payload, self.now())

    def _event_parent(self, page: PageRec) -> dict[str, str]:
        kind, pid = page.parent
        if kind == "workspace":
            return {"id": self.workspace_id, "type": "space"}  # "space" per the events reference
        return {"id": pid, "type": "page" if kind == "page_id" else "database"}

    def _aggregate(self, page_id: str, author: str, blocks: list[str]) -> None:
        pending = self._pending.get(page_id)
        if pending is None:
            pending = self._pending[page_id] = _Pending(page_id, [], [], self.now())
            pending.task = asyncio.get_running_loop().create_task(self._flush_later(pending))
        if author not in pending.authors:
            pending.authors.append(author)
        pending.blocks.extend(b for b in blocks if b not in pending.blocks)
        pending.last_at = self.now()

    async def _flush_later(self, pending: _Pending) -> None:
        await asyncio.sleep(self.aggregation_window)
        self._flush(pending)

    def _flush(self, pending: _Pending) -> None:
        if self._pending.pop(pending.page_id, None) is None:
            return
        page = self.pages[pending.page_id]
        data = {"parent": self._event_parent(page),
                "updated_blocks": [{"id": b, "type": "block"} for b in pending.blocks]}
        self._send_event("page.content_updated", page.id, pending.authors, data, pending.last_at)

    def flush_all(self) -> None:
        """Send every aggregated event now (``POST /_sandbox/webhook/flush``)."""
        for pending in list(self._pending.values()):
            if pending.task is not None:
                pending.task.cancel()
            self._flush(pending)

    async def drain(self, timeout: float = 30.0) -> None:
        """Flush aggregation and wait until every event (with retries) is delivered or failed."""
        self.flush_all()
        await self.webhooks.drain(timeout)

    def _send_event(self, kind: str, page_id: str, authors: list[str], data: dict[str, Any], at: float,
                    entity_type: str = "page") -> None:
        event = {"id": str(uuid.uuid4()), "timestamp": iso_ms(at), "workspace_id": self.workspace_id,
                 "workspace_name": "Sandbox", "subscription_id": self.subscription_id,
                 "integration_id": self.integration_id, "type": kind,
                 "authors": [{"id": a, "type": self.users.get(a, {}).get("type", "person")} for a in authors],
                 "attempt_number": 1, "entity": {"id": page_id, "type": entity_type}, "data": data}
        body, headers = self._signed(event)

        async def retry(delivery: Delivery) -> None:
            await self._retry(event, delivery)

        self.webhooks.send_soon(body, headers, retry=retry)

    def _signed(self, event: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(event, separators=(",", ":")).encode()
        return body, {"Content-Type": "application/json", "X-Notion-Signature": self.sign(body),
                      "User-Agent": "notion-api"}

    async def _retry(self, event: dict[str, Any], delivery: Delivery) -> None:
        """Notion retries non-2xx answers; each attempt re-signs the body with its new number."""
        attempt = 1
        while not delivery.dropped and not (delivery.status and 200 <= delivery.status < 300):
            if attempt >= MAX_ATTEMPTS:
                return
            await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
            attempt += 1
            event["attempt_number"] = attempt
            body, headers = self._signed(event)
            delivery = await self.webhooks.send(body, headers)

    def send_verification(self) -> None:
        """The unsigned first POST that carries the token a person pastes into Notion."""
        body = json.dumps({"verification_token": self.verification_token}).encode()
        self.webhooks.send_soon(body, {"Content-Type": "application/json", "User-Agent": "notion-api"})

    # --- control API --------------------------------------------------------------------
    def control_routes(self) -> list[BaseRoute]:
        return [
            Route("/pages", self.c_create_page, methods=["POST"]),
            Route("/pages/{page_id}", self.c_edit_page, methods=["PATCH"]),
            Route("/pages/{page_id}/blocks", self.c_replace_blocks, methods=["PUT"]),
            Route("/pages/{page_id}/blocks", self.c_append_blocks, methods=["POST"]),
            Route("/pages/{page_id}/move", self.c_move, methods=["POST"]),
            Route("/pages/{page_id}/trash", self.c_trash, methods=["POST"]),
            Route("/pages/{page_id}/restore", self.c_restore, methods=["POST"]),
            Route("/pages/{page_id}/comments", self.c_add_comment, methods=["POST"]),
            Route("/comments/{comment_id}", self.c_edit_comment, methods=["PATCH"]),
            Route("/comments/{comment_id}", self.c_delete_comment, methods=["DELETE"]),
            Route("/databases", self.c_create_database, methods=["POST"]),
            Route("/truth", self.c_truth, methods=["GET"]),
            Route("/settings", self.c_settings, methods=["PUT"]),
            Route("/clock", self.c_clock, methods=["POST"]),
            Route("/webhook/verify", self.c_verify, methods=["POST"]),
            Route("/webhook/flush", self.c_flush, methods=["POST"]),
        ]

    def _control_page(self, request: Request) -> PageRec:
        pid = norm_id(request.path_params["page_id"], "path.page_id")
        if pid not in self.pages:
            raise NotionError(404, "object_not_found", f"Could not find page with ID: {pid}.")
        return self.pages[pid]

    @_control
    async def c_create_page(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        author = self._author(body.get("author"))
        page = self.create_page(str(body.get("title", "Untitled")), _parent(body.get("parent")),
                                blocks=body.get("blocks"), properties=body.get("properties"),
                                author=author, shared=bool(body.get("shared", True)))
        self.emit("page.created", page, author)
        return self.page_json(page, VERSIONS[-1])

    @_control
    async def c_edit_page(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        page = self._control_page(request)
        author = self._author(body.get("author"))
        changed = []
        if "title" in body:
            page.title = str(body["title"])
            changed.append("title")
        if "properties" in body:
            self._check_properties(self.databases[page.parent[1]], body["properties"]) \
                if page.parent[0] == "database_id" else None
            page.properties.update(body["properties"])
            changed.extend(_short(k) for k in body["properties"])
        if "shared" in body:
            page.shared = bool(body["shared"])
        self._touch(page, author, self.now())
        if changed:
            self.emit("page.properties_updated", page, author, {"updated_properties": changed})
        return self.page_json(page, VERSIONS[-1])

    async def _set_blocks(self, request: Request, body: dict[str, Any], append: bool) -> dict[str, Any]:
        page = self._control_page(request)
        author = self._author(body.get("author"))
        new = self.set_blocks(page, list(body.get("blocks") or []), author, append=append)
        self.emit("page.content_updated", page, author, {"updated_blocks": new})
        return {"page": self.page_json(page, VERSIONS[-1]), "block_ids": new}

    @_control
    async def c_replace_blocks(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return await self._set_blocks(request, body, append=False)

    @_control
    async def c_append_blocks(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return await self._set_blocks(request, body, append=True)

    @_control
    async def c_move(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        page = self._control_page(request)
        author = self._author(body.get("author"))
        self.move_page(page, _parent(body.get("parent")), author)
        self.emit("page.moved", page, author)
        return self.page_json(page, VERSIONS[-1])

    async def _set_trash(self, request: Request, body: dict[str, Any], trashed: bool) -> dict[str, Any]:
        page = self._control_page(request)
        author = self._author(body.get("author"))
        page.in_trash = trashed
        self._touch(page, author, self.now())
        self.emit("page.deleted" if trashed else "page.undeleted", page, author)
        return self.page_json(page, VERSIONS[-1])

    @_control
    async def c_trash(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return await self._set_trash(request, body, True)

    @_control
    async def c_restore(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return await self._set_trash(request, body, False)

    @_control
    async def c_add_comment(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        """A person comments on the page (or ``block_id`` / ``discussion_id``): ``comment.created``."""
        page = self._control_page(request)
        author = self._author(body.get("author"))
        comment = self.add_comment(str(body.get("text", "")), author,
                                   page_id="" if body.get("block_id") or body.get("discussion_id") else page.id,
                                   block_id=str(body.get("block_id") or ""),
                                   discussion_id=str(body.get("discussion_id") or ""))
        self.emit_comment("comment.created", comment, author)
        return self.comment_json(comment)

    def _control_comment(self, request: Request) -> Comment:
        cid = norm_id(request.path_params["comment_id"], "path.comment_id")
        if cid not in self.comments:
            raise NotionError(404, "object_not_found", f"Could not find comment with ID: {cid}.")
        return self.comments[cid]

    @_control
    async def c_edit_comment(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        comment = self._control_comment(request)
        comment.text, comment.edited = str(body["text"]), self.now()
        self.emit_comment("comment.updated", comment, self._author(body.get("author") or comment.author))
        return self.comment_json(comment)

    @_control
    async def c_delete_comment(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        comment = self._control_comment(request)
        del self.comments[comment.id]
        self.emit_comment("comment.deleted", comment, self._author(body.get("author") or comment.author))
        return {"id": comment.id, "deleted": True}

    @_control
    async def c_create_database(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        db = self.create_database(str(body.get("title", "Untitled")), _parent(body.get("parent")),
                                  dict(body.get("schema") or {}))
        return self.database_json(db, "2022-06-28")

    @_control
    async def c_truth(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        return self.truth()

    def truth(self) -> dict[str, Any]:
        """Every page as the integration should see it: title, plain text, trash and sharing."""
        return {"pages": {p.id: {"title": p.title, "parent": list(p.parent), "in_trash": p.in_trash,
                                 "shared": p.shared, "last_edited_time": iso(p.edited),
                                 "properties": p.properties, "text": self.page_text(p),
                                 "comments": [c.text for c in self.comments.values() if c.page_id == p.id]}
                          for p in self.pages.values()},
                "databases": {d.id: {"title": d.title, "data_source_id": d.data_source_id}
                              for d in self.databases.values()}}

    def page_text(self, page: PageRec) -> list[str]:
        """The text of every content block of ``page``, depth first (child pages excluded)."""
        out: list[str] = []

        def walk(ids: list[str]) -> None:
            for bid in ids:
                block = self.blocks[bid]
                if block.type in ("child_page", "child_database"):
                    continue
                out.append(block.text)
                walk(block.children)

        walk(page.children)
        return out

    @_control
    async def c_settings(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        for key in ("aggregation_window", "retry_delay"):
            if key in body:
                setattr(self, key, float(body[key]))
        if "verification_token" in body:
            self.verification_token = str(body["verification_token"])
        if "overload_next" in body:
            self.overload_next = int(body["overload_next"])
        if "read_comments" in body:
            self.read_comments = bool(body["read_comments"])
        if "overload_rate" in body:
            rate = float(body["overload_rate"])
            if not 0 <= rate <= 1:
                raise ValueError("overload_rate must be between 0 and 1")
            self.overload_rate = rate
        return {"aggregation_window": self.aggregation_window, "retry_delay": self.retry_delay,
                "overload_next": self.overload_next, "overload_rate": self.overload_rate,
                "overloaded": self.overloaded, "read_comments": self.read_comments}

    @_control
    async def c_clock(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        self.clock_offset += float(body.get("advance", 0))
        return {"now": iso_ms(self.now()), "offset": self.clock_offset}

    @_control
    async def c_verify(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        self.send_verification()
        return {"sent_to": self.webhooks.target, "verification_token": self.verification_token}

    @_control
    async def c_flush(self, request: Request, body: dict[str, Any]) -> dict[str, Any]:
        count = len(self._pending)
        self.flush_all()
        return {"flushed": count}

    # --- seed -------------------------------------------------------------------------
    def seed(self, profile: str, rng: random.Random, world: dict[str, Any]) -> None:
        if profile == "empty":
            return
        people = [self.add_user(n) for n in ("Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra")]
        now = self.now()
        if profile == "small":
            _seed_small(self, rng, people, now)
        elif profile == "scale":
            _seed_scale(self, rng, people, now, 1500)
        else:
            raise ValueError(f"unknown seed profile {profile!r}")

    async def trickle(self, rng: random.Random) -> None:
        """One live edit: a paragraph added to a page, a new page, or a renamed page.
        Same state changes and events as the control API's append, create and edit calls
        (content updates wait out the aggregation window, as Notion's do)."""
        pages = [p for p in self.pages.values() if self.visible(p)]
        people = [u for u, info in self.users.items() if info["type"] == "person"]
        if not people:
            return
        author = rng.choice(people)
        topic = rng.choice(_TOPICS)
        roll = rng.random()
        if roll < 0.5 and pages:
            page = rng.choice(pages)
            new = self.set_blocks(page, [{"type": "paragraph", "text": f"Update: {topic[rng.randint(1, 2)]}"}],
                                  author, append=True)
            self.emit("page.content_updated", page, author, {"updated_blocks": new})
        elif roll < 0.8 or not pages:
            parents = [p for p in pages if p.parent[0] != "database_id"]
            parent = ("page_id", rng.choice(parents).id) if parents and rng.random() < 0.6 else ("workspace", "")
            page = self.create_page(f"{topic[0]}: notes {rng.randint(1, 999)}", parent,
                                    blocks=_content(rng, topic), author=author)
            self.emit("page.created", page, author)
        else:
            page = rng.choice(pages)
            page.title = f"{page.title.split(' (rev ')[0]} (rev {rng.randint(2, 99)})"
            self._touch(page, author, self.now())
            self.emit("page.properties_updated", page, author, {"updated_properties": ["title"]})


# --- module helpers -------------------------------------------------------------------------
async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise NotionError(400, "invalid_json", "Error parsing JSON body.") from None
    if not isinstance(body, dict):
        raise NotionError(400, "validation_error", "body failed validation: body should be an object.")
    return body


def _page_size(raw: Any, where: str) -> int:
    if raw is None:
        return MAX_PAGE_SIZE
    try:
        size = int(raw)
    except (TypeError, ValueError):
        raise NotionError(400, "validation_error", f"{where} should be a number, instead was `{raw!r}`.") from None
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise NotionError(400, "validation_error",
                          f"{where} should be ≤ `{MAX_PAGE_SIZE}` and ≥ `1`, instead was `{size}`.")
    return size


def _search_filter(raw: Any, version: str) -> str | None:
    if raw is None:
        return None
    allowed = ("page", "database") if version == "2022-06-28" else ("page", "data_source")
    if not isinstance(raw, dict) or raw.get("property") != "object" or raw.get("value") not in allowed:
        raise NotionError(400, "validation_error", "body failed validation: body.filter.value should be "
                          f"`\"{allowed[0]}\"` or `\"{allowed[1]}\"`, instead was `{raw!r}`.")
    return str(raw["value"])


def _search_sort(raw: Any) -> str:
    """Only ``last_edited_time`` sorts search; default (no sort) is newest first here."""
    if raw is None:
        return "descending"
    if (not isinstance(raw, dict) or raw.get("timestamp") != "last_edited_time"
            or raw.get("direction") not in ("ascending", "descending") or set(raw) - {"timestamp", "direction"}):
        raise NotionError(400, "validation_error", "body failed validation: body.sort.timestamp should be "
                          f"`\"last_edited_time\"`, instead was `{raw!r}`.")
    return str(raw["direction"])


def _paginate(items: list[tuple[float, str, dict[str, Any]]], cursor: Any, size: int,
              direction: str) -> dict[str, Any]:
    """Keyset pagination: a cursor names the (minute, id) of the next item, so edits made
    between pages neither repeat nor skip items that did not move."""
    start = 0
    if cursor:
        key = _decode_cursor(cursor)
        desc = direction == "descending"
        start = next((i for i, it in enumerate(items)
                      if ((it[0], it[1]) <= key if desc else (it[0], it[1]) >= key)), len(items))
    window = items[start:start + size]
    more = start + size < len(items)
    nxt = _encode_cursor(items[start + size][:2]) if more else None
    return {"object": "list", "results": [it[2] for it in window], "next_cursor": nxt,
            "has_more": more, "type": "page_or_database", "page_or_database": {}}


def _encode_cursor(key: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps([key[0], key[1]]).encode()).decode().rstrip("=")


def _decode_cursor(raw: Any) -> tuple[float, str]:
    try:
        text = base64.urlsafe_b64decode(str(raw) + "=" * (-len(str(raw)) % 4)).decode()
        minute, ident = json.loads(text)
        return float(minute), str(ident)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise NotionError(400, "validation_error", f"start_cursor provided is invalid: {raw}") from None


def _parent(raw: Any) -> tuple[str, str]:
    """Control-API parents: ``{"type":"workspace"}``, ``{"page_id":…}`` or ``{"database_id":…}``."""
    if not raw or raw.get("type") == "workspace" or raw.get("workspace"):
        return ("workspace", "")
    for kind in ("page_id", "database_id"):
        if raw.get(kind):
            return (kind, norm_id(str(raw[kind]), f"parent.{kind}"))
    raise NotionError(400, "validation_error", f"parent should name a page_id or database_id, not {raw!r}")


def _slug(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-") or "Untitled"


def _short(value: Any) -> str:
    return hashlib.sha1(str(value).encode()).hexdigest()[:4]


def _prop_id(name: str, kind: str) -> str:
    return "title" if kind == "title" else _short(name)


# --- seed data --------------------------------------------------------------------------------
_TOPICS = [
    ("SUBS billing migration", "We decided to move SUBS billing to monthly invoicing from July.",
     "Finance signs off on the proration rules before the cut-over."),
    ("Incident review: queue backlog", "The Redis queue backed up for 40 minutes after a deploy.",
     "Root cause: the worker pool was sized for one process only."),
    ("Onboarding guide", "New engineers pair with a buddy for their first two weeks.",
     "Laptops are ordered through the IT desk three days ahead."),
    ("Q3 roadmap", "Search freshness is the top priority for the quarter.",
     "Pinecone migration is planned for late August."),
    ("API style guide", "Every endpoint returns errors as JSON with a code and a message.",
     "Pagination uses opaque cursors, never page numbers."),
    ("Release checklist", "Tag the release, run the smoke tests, then announce in #releases.",
     "Roll back if error rates double within ten minutes."),
    ("Customer interview notes", "Acme wants single sign-on before they expand the contract.",
     "They search Slack and Notion together every morning."),
    ("Architecture decision: pgvector", "pgvector is the default index because it runs inside Postgres.",
     "HNSW with cosine distance gives good recall at our size."),
]


def _content(rng: random.Random, topic: tuple[str, str, str]) -> list[dict[str, Any]]:
    title, first, second = topic
    return [
        {"type": "heading_1", "text": "Summary"},
        {"type": "paragraph", "text": first},
        {"type": "callout", "text": second},
        {"type": "heading_2", "text": "Details"},
        {"type": "bulleted_list_item", "text": f"Owner agreed on {title.lower()}",
         "children": [{"type": "paragraph", "text": f"Follow-up note {rng.randint(1, 999)} for {title}."}]},
        {"type": "numbered_list_item", "text": "Draft the proposal"},
        {"type": "numbered_list_item", "text": "Review with the team"},
        {"type": "to_do", "text": "Share the outcome", "checked": rng.random() < 0.5},
        {"type": "toggle", "text": "Background",
         "children": [{"type": "quote", "text": "Never silently stale, never silently lossy."}]},
        {"type": "code", "text": "vector-sync backfill notion --days 30", "language": "shell"},
    ]


def _seed_small(sim: NotionSimulator, rng: random.Random, people: list[str], now: float) -> None:
    def at(days: float) -> float:
        return now - days * 86400

    roots = []
    for i, topic in enumerate(_TOPICS[:5]):
        roots.append(sim.create_page(topic[0], blocks=_content(rng, topic), author=people[i % 4],
                                     at=at(30 - i * 5)))
    for i, topic in enumerate(_TOPICS[5:]):
        sim.create_page(topic[0], ("page_id", roots[i].id), blocks=_content(rng, topic),
                        author=people[(i + 1) % 4], at=at(12 - i * 3))
    sub = sim.create_page("Meeting notes 2025-06-02", ("page_id", roots[0].id),
                          blocks=[{"type": "paragraph", "text": "Agreed to freeze SUBS pricing until Q4."}],
                          author=people[2], at=at(2))
    sim.create_page("Action items", ("page_id", sub.id),
                    blocks=[{"type": "to_do", "text": "Email finance about proration", "checked": False}],
                    author=people[3], at=at(1))
    db = sim.create_database("Project tracker", ("page_id", roots[3].id),
                             {"Status": "select", "Owner": "people", "Due": "date", "Tags": "multi_select",
                              "Estimate": "number", "Done": "checkbox", "Notes": "rich_text"}, at=at(40))
    rows = [("Ship Notion connector", "In progress", ["search", "notion"], 5),
            ("Pinecone metadata trimming", "Done", ["index"], 3),
            ("Status dashboard", "Not started", ["ui"], 8),
            ("Slack thread grouping", "In progress", ["slack"], 2)]
    for i, (title, status, tags, estimate) in enumerate(rows):
        sim.create_page(title, ("database_id", db.id), author=people[i % 4], at=at(20 - i * 4),
                        properties={"Status": status, "Owner": [people[i % 4]], "Due": f"2025-0{7 + i % 3}-15",
                                    "Tags": tags, "Estimate": estimate, "Done": status == "Done",
                                    "Notes": f"Tracked for the {tags[0]} work stream."},
                        blocks=[{"type": "paragraph", "text": f"Plan for {title.lower()}."}])
    trashed = sim.create_page("Old draft (trashed)", blocks=[{"type": "paragraph", "text": "Obsolete."}],
                              author=people[0], at=at(50))
    trashed.in_trash = True


def _seed_scale(sim: NotionSimulator, rng: random.Random, people: list[str], now: float, count: int) -> None:
    parents: list[PageRec] = []
    for i in range(count):
        topic = _TOPICS[i % len(_TOPICS)]
        parent = ("page_id", rng.choice(parents).id) if parents and rng.random() < 0.6 else ("workspace", "")
        page = sim.create_page(f"{topic[0]} #{i}", parent, blocks=_content(rng, topic),
                               author=people[i % 4], at=now - rng.uniform(0, 365) * 86400)
        if len(parents) < 200:
            parents.append(page)


def create(knobs: Knobs | None = None) -> NotionSimulator:
    return NotionSimulator(knobs)
