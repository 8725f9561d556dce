"""Search, shared by the HTTP API (receiver/search.py), the CLI and the MCP server: one parser
for what a caller may ask, one function that asks the index, so every surface answers alike.

Access is part of the index query (see :mod:`core.access`), never a filter applied afterwards.
Each result says how fresh it is: ``as_of`` (when the document was last confirmed against its
source: ``documents.checked_at``) and ``stale`` (its scope is stale, failing or deactivated).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from core import access, state
from core.access import AccessView
from core.settings import SOURCE_NAMES, Settings

MAX_TOP_K = 100
MAX_QUERY_CHARS = 2000
MODES = ("hybrid", "vector")
#: Fields a metadata filter may not name (they have their own parameters, or are the text).
RESERVED = {"text", "chunk", "document_id", "source", "scope", "author", "updated_at",
            "access_type", "access_list"}
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: Identifiers people type, looked up exactly in metadata and ranked first (hybrid mode):
#: a Jira issue key (SUBS-652) and a GitHub issue or pull request (acme/api#42).
JIRA_KEY = re.compile(r"(?<![\w-])([A-Za-z][A-Za-z0-9]{1,9}-\d{1,9})(?![\w-])")
GITHUB_REF = re.compile(r"(?<![\w/.-])([\w.-]{1,100}/[\w.-]{1,100})#(\d{1,9})\b")

#: Fields of a POST body; the GET form takes the same names except ``metadata``.
BODY_FIELDS = {"q", "top_k", "source", "scope", "updated_after", "updated_before", "author",
               "metadata", "as_user", "include_restricted", "mode"}
QUERY_PARAMS = BODY_FIELDS - {"metadata"}


class BadQuery(ValueError):
    """What is wrong with a search request (answered 400)."""


@dataclass(frozen=True)
class SearchQuery:
    q: str
    top_k: int = 10
    sources: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    updated_after: float | None = None
    updated_before: float | None = None
    author: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    as_user: str | None = None
    include_restricted: bool = False
    mode: str = "hybrid"

    def index_filter(self) -> dict[str, Any] | None:
        parts: list[dict[str, Any]] = []
        if self.sources:
            parts.append({"source": {"$in": list(self.sources)}})
        if self.scopes:
            parts.append({"scope": {"$in": list(self.scopes)}})
        if self.author:
            parts.append({"author": {"$eq": self.author}})
        if self.updated_after is not None:
            parts.append({"updated_at": {"$gte": self.updated_after}})
        if self.updated_before is not None:
            parts.append({"updated_at": {"$lte": self.updated_before}})
        parts += [{key: {"$eq": value}} for key, value in sorted(self.metadata.items())]
        return access.combine(*parts)


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise BadQuery(f"'{what}' must be a string or a list of strings")
    items = [v for v in items if v]
    if any(len(v) > 512 for v in items):
        raise BadQuery(f"'{what}' values must be at most 512 characters")
    return tuple(dict.fromkeys(items))


def _when(value: Any, what: str) -> float | None:
    """Epoch seconds, or an ISO 8601 date/time (UTC when it names no zone)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadQuery(f"'{what}' must be epoch seconds or an ISO 8601 date")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadQuery(f"'{what}' must be epoch seconds or an ISO 8601 date, not {value[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    raise BadQuery(f"'{what}' must be epoch seconds or an ISO 8601 date")


def flag(value: Any, what: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", ""):
        return value.lower() in ("true", "1")
    raise BadQuery(f"'{what}' must be true or false")


def parse(data: Mapping[str, Any], *, query_string: bool = False) -> SearchQuery:
    """A search request from a JSON body (or, with ``query_string``, from GET parameters, all
    strings). Unknown fields are refused by name: a filter silently ignored returns wrong
    results with a 200, which is worse than an error."""
    allowed = QUERY_PARAMS if query_string else BODY_FIELDS
    if _has_nul(data):
        # Postgres text and jsonb cannot hold U+0000; no identifier or word contains one.
        raise BadQuery("values must not contain NUL characters")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadQuery(f"unknown {'parameter' if query_string else 'field'}(s): {', '.join(unknown)}; "
                       f"allowed: {', '.join(sorted(allowed))}")
    q = data.get("q")
    if not isinstance(q, str) or not q.strip():
        raise BadQuery("'q' is required: the words to search for")
    if len(q) > MAX_QUERY_CHARS:
        raise BadQuery(f"'q' must be at most {MAX_QUERY_CHARS} characters")
    top_k: Any = data.get("top_k", 10)
    if isinstance(top_k, str):
        try:
            top_k = int(top_k)
        except ValueError:
            raise BadQuery("'top_k' must be a whole number") from None
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise BadQuery("'top_k' must be a whole number")
    if not 1 <= top_k <= MAX_TOP_K:
        raise BadQuery(f"'top_k' must be between 1 and {MAX_TOP_K}")
    sources = _names(data.get("source"), "source")
    known = {*SOURCE_NAMES, "api"}
    if bad := [s for s in sources if s not in known]:
        raise BadQuery(f"unknown source {bad[0]!r}; one of {', '.join(sorted(known))}")
    author = data.get("author")
    if author is not None and (not isinstance(author, str) or len(author) > 512):
        raise BadQuery("'author' must be a string")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise BadQuery("'metadata' must be an object of field: value")
    for key, value in metadata.items():
        if not isinstance(key, str) or not _FIELD.match(key):
            raise BadQuery(f"metadata field {str(key)[:64]!r} is not a field name")
        if key in RESERVED:
            raise BadQuery(f"metadata field {key!r} has its own filter or cannot be filtered on")
        if not isinstance(value, str | int | float | bool) or (isinstance(value, str) and len(value) > 512):
            raise BadQuery(f"metadata field {key!r}: the value must be a string, number or boolean")
    as_user = data.get("as_user")
    if as_user is not None and not isinstance(as_user, str):
        raise BadQuery("'as_user' must be an email address")
    if as_user == "":
        as_user = None
    mode = data.get("mode", "hybrid")
    if mode not in MODES:
        raise BadQuery(f"'mode' must be one of {', '.join(MODES)}")
    after, before = _when(data.get("updated_after"), "updated_after"), _when(data.get("updated_before"), "updated_before")
    if after is not None and before is not None and after > before:
        raise BadQuery("'updated_after' is later than 'updated_before'")
    return SearchQuery(
        q=q.strip(), top_k=top_k, sources=sources, scopes=_names(data.get("scope"), "scope"),
        updated_after=after, updated_before=before, author=author or None, metadata=dict(metadata),
        as_user=as_user, include_restricted=flag(data.get("include_restricted"), "include_restricted"),
        mode=mode,
    )


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def identifier_filters(q: str) -> list[dict[str, Any]]:
    """Exact-match filters for the identifiers in ``q``, in the order they appear."""
    found: list[tuple[int, dict[str, Any]]] = []
    for m in GITHUB_REF.finditer(q):
        found.append((m.start(), {"$and": [{"repo": {"$eq": m.group(1)}}, {"number": {"$eq": int(m.group(2))}}]}))
    for m in JIRA_KEY.finditer(q):
        found.append((m.start(), {"key": {"$eq": m.group(1).upper()}}))
    return [f for _, f in sorted(found, key=lambda item: item[0])][:5]


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), timezone.utc).isoformat()
    return None


def stale_after(settings: Settings) -> dict[str, float]:
    return {name: settings.source(name).stale_after for name in SOURCE_NAMES}


#: Chunks asked of the index for one search at most (top_k documents, several chunks each).
MAX_CANDIDATES = 2000


async def _candidates(index: Any, vector: list[float], query: SearchQuery, flt: Any, wanted: int,
                      identifiers: bool) -> list[Any]:
    """Up to ``wanted`` matching chunks, best first (hybrid: text and vector fused)."""
    hybrid = query.mode == "hybrid" and hasattr(index, "hybrid_query")  # pgvector: text + vector
    if hybrid:
        matches = await asyncio.to_thread(index.hybrid_query, vector, query.q, wanted, flt)
    else:
        matches = await asyncio.to_thread(index.query, vector, wanted, flt)
    if query.mode == "hybrid" and identifiers:
        # Identifiers first: the document an exact key names is the answer, whatever the
        # embeddings think (an issue key is one token among hundreds of words). Same filter,
        # so access holds; works on both backends (a metadata-filtered query).
        exact = []
        for ident in identifier_filters(query.q):
            exact += await asyncio.to_thread(index.query, vector, 3, access.combine(flt, ident))
        seen = {e.id for e in exact}
        matches = exact + [m for m in matches if m.id not in seen]
    return list(matches)


async def search(services: Any, embedder: Any, settings: Settings, query: SearchQuery,
                 view: AccessView, *, identifiers: bool = True) -> dict[str, Any]:
    """Run one search; the body every surface returns (``{"query", "results", ...}``).
    ``identifiers=False`` drops the exact-identifier lane (the benchmark measures without it)."""
    [vector] = await embedder.embed([query.q])
    flt = access.combine(query.index_filter(), access.access_filter(view))
    index = services.index
    # Several chunks of one document may match: ask for more, keep each document's best; when
    # long documents (a transcript has a chunk per speaker turn) fill the candidates with fewer
    # than top_k documents, ask again for more rather than answer short.
    wanted = min(query.top_k * 4, MAX_CANDIDATES)
    while True:
        matches = await _candidates(index, vector, query, flt, wanted, identifiers)
        best: dict[str, Any] = {}
        for match in matches:
            document_id = str(match.metadata.get("document_id", match.id.rsplit("#", 1)[0]))
            if document_id not in best:
                best[document_id] = match
                if len(best) == query.top_k:
                    break
        if len(best) == query.top_k or len(matches) < wanted or wanted >= MAX_CANDIDATES:
            break
        wanted = min(wanted * 4, MAX_CANDIDATES)
    rows = await asyncio.to_thread(_document_rows, services.pool, list(best))
    pairs = {(str(m.metadata.get("source", "")), str(m.metadata.get("scope", ""))) for m in best.values()}
    stale = await asyncio.to_thread(access.stale_scopes, services.pool, stale_after(settings), pairs)
    results = []
    for document_id, match in best.items():
        meta = match.metadata
        row = rows.get(document_id, {})
        source, scope = str(meta.get("source", "")), str(meta.get("scope", ""))
        results.append({
            "document_id": document_id,
            "title": meta.get("title", ""),
            "url": meta.get("url", ""),
            "source": source,
            "scope": scope,
            "text": meta.get("text", ""),
            "score": round(float(match.score), 6),
            "author": meta.get("author", ""),
            "access_type": meta.get("access_type", "public"),
            "source_updated_at": _iso(meta.get("updated_at")),
            "updated_at": meta.get("updated_at"),
            "as_of": _iso(row.get("checked_at") or row.get("indexed_at")),
            "stale": (source, scope) in stale,
            "chunk": meta.get("chunk"),
            "vector_id": match.id,
        })
    text_search = query.mode == "hybrid" and hasattr(index, "hybrid_query")
    return {"query": query.q, "mode": query.mode, "text_search": text_search, "access": view.describe(),
            "results": results}


def _document_rows(pool: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    with state.dict_cursor(pool) as cur:
        cur.execute(
            "SELECT document_id, checked_at, indexed_at FROM documents WHERE document_id = ANY(%s)", (ids,)
        )
        return {r["document_id"]: r for r in cur.fetchall()}


def document(services: Any, document_id: str, view: AccessView) -> dict[str, Any] | None:
    """What is indexed for one document, or None when it is unknown *or* the view may not read
    it (the two look alike, so a restricted document's existence is not revealed)."""
    with state.dict_cursor(services.pool) as cur:
        cur.execute(
            """SELECT document_id, source, scope, title, url, content_hash, source_updated_at,
                      chunk_count, indexed_at, checked_at, deferred_at, deleted_at, last_error,
                      last_error_at, error_stage
               FROM documents WHERE document_id = %s""",
            (document_id,),
        )
        row = cur.fetchone()
    if row is None:
        return None
    first = services.index.fetch([f"{document_id}#0"]).get(f"{document_id}#0")
    if not access.can_read(first, view):
        return None
    if row["deleted_at"] is not None:
        status = "deleted"
    elif row["last_error"] and (row["indexed_at"] is None or (row["last_error_at"] and row["last_error_at"] > row["indexed_at"])):
        status = "failing"
    elif row["deferred_at"] is not None and row["indexed_at"] is None:
        status = "deferred"
    elif row["indexed_at"] is None:
        status = "pending"
    else:
        status = "indexed"
    meta = first or {}
    out = {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in row.items()}
    out["source_updated_at"] = _iso(row["source_updated_at"])
    out["state"] = status
    out["as_of"] = _iso(row["checked_at"] or row["indexed_at"])
    stale = access.stale_scopes(services.pool, stale_after(services.settings), [(row["source"], row["scope"])])
    out["stale"] = bool(stale)
    out["access_type"] = meta.get("access_type", "public" if first is not None else None)
    # The list itself is only shown to the admin's full view (it names people).
    if view.see_all:
        out["access_list"] = list(meta.get("access_list") or [])
    return out
