"""Notion connector: one document per page (title, database properties, block content).

- Stable id = page id (survives renames and moves). One account scope: the workspace, i.e.
  every page shared with the integration.
- ``changes`` pages through ``POST /v1/search`` newest-edited first (``last_edited_time`` is
  the only sort key) and stops at the first page older than ``since``. Notion rounds
  ``last_edited_time`` down to the minute, so ``since`` is floored to the minute too.
- ``fetch`` reads the page, then its whole block tree (paged, ≤ 100 a call) with an explicit
  stack, however deep; past ``MAX_BLOCKS`` blocks the fetch fails (PermanentSourceError, a
  recorded document error) rather than index part of a page. A page
  in the trash (``in_trash``, or ``archived`` before 2026-03-11) or a 404 ``object_not_found``
  is Gone; any other failure raises.
- ``fetch`` also reads the page's comments (``GET /v1/comments?block_id={page}``, paged) into
  the page's document: a comment means little without its page, and the page id stays the one
  stable id. ``comment.*`` events name their page (``data.page_id``) and re-fetch it, so an
  edited comment shows its new text and a deleted one leaves with the next fetch.
- Inline comments (discussions anchored on a block) are read the same way, one
  ``GET /v1/comments?block_id={block}`` per block: Notion marks no block as having a discussion,
  so every block must be asked. ``NOTION_BLOCK_COMMENTS`` bounds it: at most that many blocks
  per page (document order; 0 = none). Blocks past it are not asked, and the document says so
  (metadata ``block_comments_unchecked``) instead of passing for complete.
- Webhooks: the first POST is an unsigned ``{"verification_token": ...}`` handshake; every event
  after it is signed ``X-Notion-Signature: sha256=HMAC-SHA256(verification_token, raw body)``
  and carries ids only, so each event becomes a ref that ``fetch`` fills in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
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
from core.sources.webhooks import (
    check_sha256_signature, header, ident, iso_time, load_object, obj, storable_id, text,
)

log = logging.getLogger(__name__)

NAME = "notion"
SCOPE = Scope(NAME, "workspace", "Notion workspace")
PAGE_SIZE = 100  # Notion's maximum for search and block children
#: Blocks read per page at most. Past it the fetch fails loudly (a recorded document error)
#: instead of indexing a silently truncated page; 20,000 blocks is ≥ 200 children calls.
MAX_BLOCKS = 20_000
#: Nesting levels shown by indentation; deeper blocks are kept, indented no further, so a
#: very deep tree cannot grow the text quadratically.
MAX_INDENT = 12
#: Block types whose children are separate documents (or not content), never inlined.
_OPAQUE = {"child_page", "child_database"}
#: Blocks asked for their inline comments per page by default (``NOTION_BLOCK_COMMENTS``).
BLOCK_COMMENTS = 200
#: Block comment requests in flight at once per page (the request budget still paces them).
BLOCK_COMMENT_CONCURRENCY = 4
_HEADINGS = {"heading_1": "#", "heading_2": "##", "heading_3": "###"}


# --- pure normalisation ---------------------------------------------------------------------------
@dataclass
class BlockNode:
    """One block with its (already fetched) children."""

    raw: dict[str, Any]
    children: list[BlockNode] = field(default_factory=list)


def parse_time(raw: str | None) -> float:
    """Notion ISO-8601 (``2025-06-01T12:00:00.000Z``) → epoch seconds; 0.0 when absent."""
    if not raw:
        return 0.0
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


def plain(rich: list[dict[str, Any]] | None) -> str:
    """Concatenated ``plain_text`` of a rich-text array."""
    return "".join(part.get("plain_text", "") for part in rich or [])


def page_title(page: Mapping[str, Any]) -> str:
    for prop in (page.get("properties") or {}).values():
        if prop.get("type") == "title":
            return plain(prop.get("title")).strip()
    return ""


def is_trashed(page: Mapping[str, Any]) -> bool:
    """``in_trash`` (every version) or ``archived`` (removed in 2026-03-11)."""
    return bool(page.get("in_trash") or page.get("archived"))


def database_id(page: Mapping[str, Any]) -> str:
    """The database a page is a row of ('' if none); both parent shapes carry ``database_id``."""
    parent = page.get("parent") or {}
    if parent.get("type") in ("database_id", "data_source_id"):
        return str(parent.get("database_id") or "")
    return ""


def parent_ref(page: Mapping[str, Any]) -> tuple[str, str]:
    """(parent type, parent id): ``workspace``, ``page_id``, ``block_id`` or ``database_id``."""
    parent = page.get("parent") or {}
    kind = parent.get("type", "")
    if kind == "workspace":
        return "workspace", ""
    if kind == "data_source_id":
        return "database_id", str(parent.get("database_id") or "")
    return kind, str(parent.get(kind) or "")


def property_value(prop: Mapping[str, Any], users: Mapping[str, str]) -> str:
    """One page property as text ('' when empty or not worth indexing)."""
    kind = prop.get("type", "")
    value = prop.get(kind)
    if value is None or value == [] or value == "":
        return ""
    if kind in ("rich_text", "title"):
        return plain(value)
    if kind in ("select", "status"):
        return str(value.get("name", ""))
    if kind == "multi_select":
        return ", ".join(v.get("name", "") for v in value)
    if kind == "people":
        return ", ".join(v.get("name") or users.get(v.get("id", ""), v.get("id", "")) for v in value)
    if kind == "date":
        return f"{value.get('start')} → {value['end']}" if value.get("end") else str(value.get("start", ""))
    if kind == "checkbox":
        return "Yes" if value else "No"
    if kind in ("number", "url", "email", "phone_number"):
        return str(value)
    if kind == "formula":
        return str(value.get(value.get("type", ""), "") or "")
    if kind == "unique_id":
        prefix = value.get("prefix")
        return f"{prefix}-{value.get('number')}" if prefix else str(value.get("number", ""))
    return ""  # relation, rollup, files, created_time, ...: ids or noise, not text


def property_lines(page: Mapping[str, Any], users: Mapping[str, str] | None = None) -> list[str]:
    """``Name: value`` for every non-empty non-title property of a database row."""
    if not database_id(page):
        return []
    lines = []
    for name, prop in (page.get("properties") or {}).items():
        if prop.get("type") == "title":
            continue
        value = property_value(prop, users or {})
        if value:
            lines.append(f"{name}: {value}")
    return lines


def block_line(block: Mapping[str, Any], number: int = 0) -> str:
    """The text of one block, marked up lightly so lists and to-dos read naturally."""
    kind = block.get("type", "")
    content = block.get(kind) or {}
    text = plain(content.get("rich_text")).strip()
    if kind in _HEADINGS:
        return f"{_HEADINGS[kind]} {text}" if text else ""
    if kind == "bulleted_list_item":
        return f"- {text}"
    if kind == "numbered_list_item":
        return f"{number}. {text}"
    if kind == "to_do":
        return f"[{'x' if content.get('checked') else ' '}] {text}"
    if kind == "quote":
        return f"> {text}"
    if kind == "code":
        # Blank lines inside code would split the chunker's paragraphs; keep the code together.
        code = "\n".join(line for line in text.splitlines() if line.strip())
        return f"```{content.get('language', '')}\n{code}\n```" if code else ""
    if kind == "child_page":
        return f"Sub-page: {content.get('title', '')}"
    if kind == "child_database":
        return f"Database: {content.get('title', '')}"
    if kind == "table_row":
        return " | ".join(plain(cell) for cell in content.get("cells") or [])
    if kind == "equation":
        return str(content.get("expression", ""))
    if kind in ("bookmark", "embed", "link_preview"):
        caption = plain(content.get("caption"))
        return f"{caption} {content.get('url', '')}".strip()
    if text:
        return text  # paragraph, callout, toggle, template, ...
    return plain(content.get("caption"))  # image, file, video captions


def blocks_to_sections(nodes: list[BlockNode]) -> list[str]:
    """Block trees → paragraphs: every heading starts a new section that holds what follows it,
    so a heading and its content stay in one chunk when they fit. Walked with an explicit
    stack (pre-order), so no depth exhausts Python's recursion limit."""
    sections: list[list[str]] = [[]]
    # Each frame: (siblings, next index, depth, running number of a numbered list).
    stack: list[list[Any]] = [[nodes, 0, 0, 0]]
    while stack:
        frame = stack[-1]
        siblings, index, depth, number = frame
        if index >= len(siblings):
            stack.pop()
            continue
        node = siblings[index]
        kind = node.raw.get("type", "")
        number = number + 1 if kind == "numbered_list_item" else 0
        frame[1], frame[3] = index + 1, number
        line = block_line(node.raw, number)
        if kind in _HEADINGS and depth == 0:
            sections.append([])
        if line:
            indent = "  " * min(depth, MAX_INDENT)
            sections[-1].append(indent + line.replace("\n", "\n" + indent))
        if node.children:
            stack.append([node.children, 0, depth + 1, 0])
    return ["\n".join(lines) for lines in sections if any(line.strip() for line in lines)]


def comments_section(comments: list[Mapping[str, Any]], users: Mapping[str, str],
                     anchors: Mapping[str, str] | None = None) -> str:
    """``Comments:`` then one ``Name: text`` line per comment, replies kept with their
    discussion (discussions in order of their first comment, comments oldest first). A
    discussion on a block (an inline comment) opens with ``On "<the block's text>":``, from
    ``anchors`` (block id → its text)."""
    threads: dict[str, list[str]] = {}
    for comment in comments:
        body = plain(comment.get("rich_text")).strip()
        if not body:
            continue
        uid = (comment.get("created_by") or {}).get("id", "")
        name = users.get(uid, uid) or "Someone"
        key = str(comment.get("discussion_id") or comment.get("id"))
        if key not in threads:
            threads[key] = []
            parent = comment.get("parent") or {}
            block = parent.get("block_id") if isinstance(parent, Mapping) else None
            if block:
                anchor = " ".join(((anchors or {}).get(str(block)) or "a block").split())
                threads[key].append(f'On "{anchor[:80]}{"…" if len(anchor) > 80 else ""}":')
        threads[key].append(f"{name}: {' '.join(body.split())}")
    lines = [line for thread in threads.values() for line in thread]
    return "Comments:\n" + "\n".join(lines) if lines else ""


def page_to_document(page: Mapping[str, Any], blocks: list[BlockNode],
                     users: Mapping[str, str] | None = None,
                     comments: list[Mapping[str, Any]] | None = None,
                     unchecked_blocks: int = 0) -> Document:
    """A Notion page (``GET /v1/pages/{id}``), its block tree and its comments (on the page and
    on its blocks) → one Document. ``unchecked_blocks``: blocks whose inline comments were not
    asked (past ``NOTION_BLOCK_COMMENTS``), recorded in metadata."""
    users = users or {}
    title = page_title(page) or "Untitled"
    parts = [title]
    props = property_lines(page, users)
    if props:
        parts.append("\n".join(props))
    parts.extend(blocks_to_sections(blocks))
    section = comments_section(comments or [], users, {n.raw.get("id", ""): block_line(n.raw) for n in walk(blocks)})
    if section:
        parts.append(section)
    parent_type, parent_id = parent_ref(page)
    created_by = (page.get("created_by") or {}).get("id", "")
    edited_by = (page.get("last_edited_by") or {}).get("id", "")
    metadata: dict[str, Any] = {
        "parent_type": parent_type,
        "parent_id": parent_id,
        "created_at": parse_time(page.get("created_time")),
        "last_edited_by": users.get(edited_by, edited_by),
        "last_edited_by_id": edited_by,
    }
    if database_id(page):
        metadata["database_id"] = database_id(page)
    if comments:
        metadata["comment_ids"] = [str(c.get("id", "")) for c in comments]
    if unchecked_blocks:
        metadata["block_comments_unchecked"] = unchecked_blocks
    return Document(
        source=NAME, id=str(page["id"]), scope=SCOPE.key, title=title, text="\n\n".join(parts),
        updated_at=parse_time(page.get("last_edited_time")), url=str(page.get("url") or ""),
        author=users.get(created_by, created_by), metadata=metadata,
    )


def walk(blocks: list[BlockNode]) -> list[BlockNode]:
    """Every block of a tree in document order (pre-order), iteratively."""
    out: list[BlockNode] = []
    stack = list(reversed(blocks))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.children))
    return out


def event_to_result(event: Mapping[str, Any]) -> WebhookResult:
    """A verified Notion event envelope → refs (pure)."""
    delivery_id, kind = ident(event, "id", NAME), text(event, "type", NAME)
    entity = obj(event, "entity", NAME)
    entity_id, entity_type = ident(entity, "id", NAME, "entity.id"), text(entity, "type", NAME, "entity.type")
    for name, value in (("'id'", delivery_id), ("'type'", kind), ("'entity'", entity),
                        ("'entity.id'", entity_id), ("'entity.type'", entity_type)):
        if not value:
            raise MalformedWebhook(f"notion: event lacks {name}")
    event_at = iso_time(event, "timestamp", NAME) or None
    if entity_type == "comment":
        # A comment lives in its page's document: any comment change re-fetches the page.
        data = event.get("data")
        page_id = data.get("page_id") if isinstance(data, dict) else None
        if not isinstance(page_id, str) or not page_id:
            return WebhookResult(delivery_id=delivery_id, note=f"notion: {kind} names no page_id; ignored")
        storable_id(page_id, NAME, "data.page_id")
        ref = Ref(NAME, page_id, SCOPE.key, "sync", event_at=event_at)
        return WebhookResult(refs=[ref], delivery_id=delivery_id)
    if entity_type != "page":
        # database.*, data_source.*: we index pages only. A schema change renames
        # property lines, which the reconciler's next pass does not see: noted for the logs.
        return WebhookResult(delivery_id=delivery_id, note=f"notion: {kind} on a {entity_type} ignored")
    op = "delete" if kind == "page.deleted" else "sync"
    ref = Ref(NAME, entity_id, SCOPE.key, op, event_at=event_at)  # type: ignore[arg-type]
    return WebhookResult(refs=[ref], delivery_id=delivery_id)


# --- the connector --------------------------------------------------------------------------------
class NotionSource:
    name = NAME
    pushes = True
    #: Per-page block budget (see MAX_BLOCKS); an instance may lower it.
    max_blocks = MAX_BLOCKS
    #: False once Notion answered 403 to the comments endpoint (no "read comments" capability).
    comments_readable = True

    def __init__(self, settings: SourceSettings, http: SourceHTTP, block_comments: int = BLOCK_COMMENTS) -> None:
        self.settings = settings
        self.http = http
        #: Blocks per page asked for their inline comments (NOTION_BLOCK_COMMENTS; 0 = none).
        self.block_comments = block_comments
        #: user id → display name, filled lazily; ids stay when users can't be read.
        self.users: dict[str, str] = {}

    # --- reading --------------------------------------------------------------------------
    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        """The JSON answer, or None on 404 ``object_not_found`` (deleted or not shared)."""
        response = await self.http.request(method, path, **kwargs)
        if response.status_code in (404, 410):
            code = _error_code(response)
            if code == "object_not_found":
                return None
            raise PermanentSourceError(NAME, f"{method} {path}: {response.status_code} {code or 'no code'}",
                                       response.status_code)
        data: dict[str, Any] = response.json()
        return data

    async def _search(self, cursor: str | None, direction: str) -> dict[str, Any]:
        body: dict[str, Any] = {"filter": {"property": "object", "value": "page"}, "page_size": PAGE_SIZE,
                                "sort": {"direction": direction, "timestamp": "last_edited_time"}}
        if cursor:
            body["start_cursor"] = cursor
        data = await self._json("POST", "/v1/search", json=body)
        if data is None:
            raise PermanentSourceError(NAME, "POST /v1/search answered 404")
        return data

    async def scopes(self) -> list[Scope]:
        return [SCOPE]

    async def changes(self, scope: Scope, since: float | None,
                      checkpoint: str | None) -> AsyncIterator[Page]:
        # last_edited_time is minute-rounded: a page edited at 12:00:59 reads 12:00:00.
        floor = since // 60 * 60 if since is not None else None
        cursor = checkpoint
        while True:
            data = await self._search(cursor, "descending")
            refs, high_water, older = [], None, False
            for raw in data.get("results", []):
                if raw.get("object") != "page":
                    continue
                edited = parse_time(raw.get("last_edited_time"))
                if floor is not None and edited < floor:
                    older = True  # sorted newest first: everything after is older still
                    break
                refs.append(Ref(NAME, str(raw["id"]), scope.key))
                high_water = edited if high_water is None else max(high_water, edited)
            more = bool(data.get("has_more")) and not older
            cursor = data.get("next_cursor") if more else None
            yield Page(refs=refs, checkpoint=cursor, high_water=high_water)
            if cursor is None:
                return

    async def live_ids(self, scope: Scope) -> AsyncIterator[str]:
        # Oldest first: a page edited during the listing moves *ahead* of the cursor and is
        # listed (again) rather than skipped, so pruning never deletes a live page for it.
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            data = await self._search(cursor, "ascending")
            for raw in data.get("results", []):
                pid = str(raw.get("id", ""))
                if raw.get("object") == "page" and not is_trashed(raw) and pid not in seen:
                    seen.add(pid)
                    yield pid
            cursor = data.get("next_cursor") if data.get("has_more") else None
            if not cursor:
                return

    async def fetch(self, ref: Ref) -> Document | Gone:
        page = await self._json("GET", f"/v1/pages/{ref.id}")
        if page is None or is_trashed(page):
            return Gone(NAME, ref.id)
        blocks = await self._block_tree(ref.id)
        comments = await self._comments(ref.id)
        inline, unchecked = await self._block_comments(ref.id, blocks)
        comments += inline
        await self._resolve_users(page, comments)
        return page_to_document(page, blocks, self.users, comments, unchecked)

    async def _block_comments(self, page_id: str, blocks: list[BlockNode]) -> tuple[list[dict[str, Any]], int]:
        """The inline comments of the page's blocks (at most ``block_comments`` blocks asked, in
        document order; one request each, a few at a time) and how many blocks were not asked."""
        if self.block_comments <= 0 or not self.comments_readable:
            return [], 0  # switched off (NOTION_BLOCK_COMMENTS=0), or comments cannot be read
        candidates = [n for n in walk(blocks) if n.raw.get("type") not in _OPAQUE and n.raw.get("id")]
        asked = candidates[: self.block_comments]
        unchecked = len(candidates) - len(asked)
        if unchecked:
            log.warning("notion: page %s has %d blocks; inline comments read on the first %d only "
                        "(NOTION_BLOCK_COMMENTS)", page_id, len(candidates), len(asked))
        gate = asyncio.Semaphore(BLOCK_COMMENT_CONCURRENCY)

        async def one(node: BlockNode) -> list[dict[str, Any]]:
            async with gate:
                return await self._comments(str(node.raw["id"]))

        found = await asyncio.gather(*(one(n) for n in asked))
        return [c for comments in found for c in comments], unchecked

    async def _comments(self, block_id: str) -> list[dict[str, Any]]:
        """The un-resolved comments on a page or a block, every page of them. Without the "read
        comments" capability Notion answers 403: the page is indexed without comments (and we
        stop asking until restart) rather than not at all."""
        if not self.comments_readable:
            return []
        try:
            return await self._all_results("/v1/comments", {"block_id": block_id}, f"comments of {block_id}")
        except PermanentSourceError as exc:
            if exc.status != 403:
                raise
            self.comments_readable = False
            return []

    async def _block_tree(self, page_id: str) -> list[BlockNode]:
        """The page's whole block tree, read iteratively: a stack of blocks whose children are
        still to be read, so depth costs no recursion; at most ``max_blocks`` blocks."""
        roots: list[BlockNode] = []
        pending: list[tuple[str, list[BlockNode]]] = [(page_id, roots)]
        count = 0
        while pending:
            block_id, into = pending.pop()
            for raw in await self._children(block_id):
                count += 1
                if count > self.max_blocks:
                    raise PermanentSourceError(
                        NAME, f"page {page_id} has more than {self.max_blocks} blocks; not indexed "
                        "rather than indexed in part (MAX_BLOCKS in core/sources/notion.py)")
                node = BlockNode(raw)
                into.append(node)
                if raw.get("has_children") and raw.get("type") not in _OPAQUE:
                    pending.append((str(raw["id"]), node.children))
        return roots

    async def _children(self, block_id: str) -> list[dict[str, Any]]:
        """Every direct child of one block (or page), all pages of them."""
        return await self._all_results(f"/v1/blocks/{block_id}/children", {}, f"blocks of {block_id}")

    async def _all_results(self, path: str, params: dict[str, Any], what: str) -> list[dict[str, Any]]:
        """Every ``results`` entry of a paged GET (``start_cursor`` / ``has_more``)."""
        results: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {**params, "page_size": PAGE_SIZE, **({"start_cursor": cursor} if cursor else {})}
            data = await self._json("GET", path, params=query)
            if data is None:
                # Trashed or unshared between reading the page and this: not a deletion we can
                # prove here, so fail and let the retry read the page again.
                raise TransientSourceError(NAME, f"{what} vanished during fetch", 404)
            results.extend(data.get("results", []))
            cursor = data.get("next_cursor") if data.get("has_more") else None
            if not cursor:
                return results

    async def _resolve_users(self, page: Mapping[str, Any],
                             comments: list[dict[str, Any]] | None = None) -> None:
        """Names for created_by / last_edited_by and comment authors, cached; without the "read
        user information" capability Notion answers 403 and the ids are kept instead."""
        refs = [page.get("created_by"), page.get("last_edited_by")]
        refs += [c.get("created_by") for c in comments or []]
        for ref in refs:
            uid = (ref or {}).get("id")
            if not uid or uid in self.users:
                continue
            try:
                user = await self._json("GET", f"/v1/users/{uid}")
            except PermanentSourceError:
                user = None
            self.users[uid] = str((user or {}).get("name") or uid)

    # --- webhooks -------------------------------------------------------------------------
    def handshake(self, headers: Mapping[str, str], body: bytes) -> str | None:
        """The verification token from Notion's unsigned first POST, else None.

        Once NOTION_WEBHOOK_TOKEN is configured the subscription is verified, and an unsigned
        verification request is refused (NotConfigured: 403) rather than recorded, so nobody
        can plant a token; to verify a new subscription the operator unsets it first.
        """
        if header(headers, "x-notion-signature"):
            return None
        try:
            data = load_object(body, NAME)
        except MalformedWebhook:
            return None
        token = data.get("verification_token")
        if not (isinstance(token, str) and token and "type" not in data):
            return None
        if self.settings.secret("NOTION_WEBHOOK_TOKEN"):
            raise NotConfigured("notion: NOTION_WEBHOOK_TOKEN is already set, so unsigned verification "
                                "requests are refused; unset it and restart to verify a new subscription")
        storable_id(token, NAME, "verification_token")
        return token

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        token = self.settings.secret("NOTION_WEBHOOK_TOKEN")
        if not token:
            raise NotConfigured("notion: NOTION_WEBHOOK_TOKEN is not set; refusing webhooks")
        check_sha256_signature(headers, body, secret=token, header_name="X-Notion-Signature", source=NAME)

    def parse(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        return event_to_result(load_object(body, NAME))


def _error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("code", "")) if isinstance(body, dict) else ""


def build(settings: SourceSettings, client: httpx.AsyncClient, limiter: Limiter | None = None,
          context: SourceContext | None = None) -> NotionSource:
    """The Notion connector over ``client``; requests go through SourceHTTP with the shared budget."""
    headers = {"Notion-Version": settings.get("NOTION_VERSION") or "2022-06-28",
               "Content-Type": "application/json"}
    token = settings.secret("NOTION_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = (settings.get("NOTION_API_URL") or "https://api.notion.com").rstrip("/")
    http = SourceHTTP(NAME, client, base_url=base, headers=headers, limiter=limiter)
    raw = settings.get("NOTION_BLOCK_COMMENTS")
    return NotionSource(settings, http, int(raw) if raw.strip() else BLOCK_COMMENTS)
