"""Documents, references to them, stable ids, chunking and content hashing.

Identity: a document id is ``{source}:{stable id}`` where the stable id survives renames and
moves (Jira issue *id*, Slack ``{channel}:{thread_ts}``, GitHub ``{owner}/{repo}/issues/{n}``,
Notion page id, Tempo worklog id, Fireflies transcript id). A vector id is
``{document id}#{chunk number}``.

Everything here is pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

#: Characters per token, a conservative estimate (English averages ~4; code and ids less).
CHARS_PER_TOKEN = 3.0


def doc_id(source: str, stable_id: str) -> str:
    return f"{source}:{stable_id}"


def split_doc_id(document_id: str) -> tuple[str, str]:
    source, _, stable = document_id.partition(":")
    if not source or not stable:
        raise ValueError(f"not a document id: {document_id!r}")
    return source, stable


def vector_id(document_id: str, chunk: int) -> str:
    return f"{document_id}#{chunk}"


@dataclass(frozen=True)
class Document:
    """The current truth of one document, normalised from its source.

    ``updated_at`` is epoch seconds as the source reports it; it orders versions, so an older
    version never overwrites a newer one. ``metadata`` holds extra flat values (str, int,
    float, bool or list of str) stored on every vector. ``access_list`` is set where the source
    has access control (private channels, meeting participants).
    """

    source: str
    id: str
    scope: str
    title: str
    text: str
    updated_at: float
    url: str = ""
    author: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    access_type: Literal["public", "restricted"] = "public"
    access_list: tuple[str, ...] = ()

    @property
    def document_id(self) -> str:
        return doc_id(self.source, self.id)

    def content_hash(self) -> str:
        """Hash of what gets embedded: a change here means re-embedding."""
        return _sha256({"title": self.title, "text": self.text})

    def metadata_hash(self) -> str:
        """Hash of what only rides along on the vectors: a change means re-upserting metadata."""
        return _sha256(
            {
                "scope": self.scope,
                "url": self.url,
                "author": self.author,
                "metadata": dict(self.metadata),
                "access_type": self.access_type,
                "access_list": list(self.access_list),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metadata"] = dict(self.metadata)
        data["access_list"] = list(self.access_list)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Document:
        data = dict(data)
        data["access_list"] = tuple(data.get("access_list") or ())
        data["metadata"] = dict(data.get("metadata") or {})
        return cls(**data)


@dataclass(frozen=True)
class Gone:
    """What a fetch returns when the document was deleted upstream."""

    source: str
    id: str

    @property
    def document_id(self) -> str:
        return doc_id(self.source, self.id)


@dataclass(frozen=True)
class Ref:
    """A reference to one document that a job should bring up to date.

    ``op`` is ``sync`` (fetch the current truth, then upsert or delete) or ``delete`` (the
    source said it is gone). ``event_at`` (epoch seconds) is when the source saw the change,
    used to ignore events older than what is stored. ``document`` carries the whole content
    when the caller already has it (the push API, or a listing that returned full documents),
    so a rate-limited API is not asked twice.
    """

    source: str
    id: str
    scope: str = ""
    op: Literal["sync", "delete"] = "sync"
    event_at: float | None = None
    document: Document | None = None
    #: When this ref's knowledge was read (our clock, epoch seconds): the listing that carried
    #: ``document``, the push that sent it, the delete request. It orders versions that
    #: ``updated_at`` cannot (a delete has none; a pushed timestamp may be wrong). A worker that
    #: fetches the truth itself uses its own fetch time instead.
    seen_at: float = field(default_factory=time.time, compare=False)

    @property
    def document_id(self) -> str:
        return doc_id(self.source, self.id)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"source": self.source, "id": self.id, "scope": self.scope, "op": self.op,
                                "seen_at": self.seen_at}
        if self.event_at is not None:
            data["event_at"] = self.event_at
        if self.document is not None:
            data["document"] = self.document.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ref:
        document = data.get("document")
        seen = data.get("seen_at")
        return cls(
            source=data["source"],
            id=data["id"],
            scope=data.get("scope", ""),
            op=data.get("op", "sync"),
            event_at=data.get("event_at"),
            document=Document.from_dict(document) if document else None,
            # A message from before seen_at existed: its event time is the best we know.
            seen_at=float(seen) if isinstance(seen, int | float) else float(data.get("event_at") or 0.0),
        )


# --- what the stores can hold ---------------------------------------------------------------

#: Characters Postgres refuses in ``text`` and ``jsonb`` (NUL), and lone UTF-16 surrogates, which
#: no UTF-8 encoder accepts. Nothing else needs cleaning: every other code point is storable.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> bool:
    return _UNSTORABLE.search(text) is not None


def clean_text(text: str) -> str:
    """``text`` without the characters no store can hold (NUL, lone surrogates).

    Lossless for every purpose we have: NUL carries no meaning in prose, and a lone surrogate is
    not a character at all (it is what a broken encoder leaves behind)."""
    return _UNSTORABLE.sub("", text) if _UNSTORABLE.search(text) else text


def escape_unstorable(text: str) -> str:
    """``text`` with each unstorable character written as ``\\uXXXX``: how a document whose id
    cannot be stored is named in the failure it is recorded under."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON (and so jsonb and Pinecone) has no NaN or Infinity: dropped below
    if isinstance(value, list | tuple):
        return [_clean_value(v) for v in value if not (isinstance(v, float) and not math.isfinite(v))]
    if isinstance(value, Mapping):
        return {clean_text(str(k)): _clean_value(v) for k, v in value.items()}
    return value


def clean_document(doc: Document) -> tuple[Document, list[str]]:
    """A copy of ``doc`` the stores can hold, and what was cleaned (for the log line).

    Strips NUL and lone surrogates from the title, text, url, author, scope, metadata keys and
    string values, and access list; drops metadata values that are NaN or infinite (JSON cannot
    carry them). The id is *not* cleaned: two ids that differ only by a NUL would become one
    document; :func:`identity_problem` says when an id cannot be stored at all.
    """
    cleaned: list[str] = []
    changes: dict[str, Any] = {}
    for name in ("title", "text", "url", "author", "scope"):
        value = getattr(doc, name)
        if isinstance(value, str) and unstorable(value):
            changes[name] = clean_text(value)
            cleaned.append(name)
    metadata: dict[str, Any] = {}
    meta_changed = False
    for key, value in doc.metadata.items():
        new_key = clean_text(str(key))
        new_value = _clean_value(value)
        if new_key != key or new_value != value or (new_value is None and value is not None):
            meta_changed = True
            cleaned.append(f"metadata[{new_key}]")
        if new_value is None and value is not None:
            continue
        metadata[new_key] = new_value
    if meta_changed:
        changes["metadata"] = metadata
    if any(unstorable(a) for a in doc.access_list):
        changes["access_list"] = tuple(clean_text(a) for a in doc.access_list)
        cleaned.append("access_list")
    return (replace(doc, **changes) if changes else doc), cleaned


def identity_problem(source: str, stable_id: str, updated_at: float | None = None) -> str | None:
    """Why a document with this identity cannot be stored, or None when it can."""
    for what, value in (("source", source), ("id", stable_id)):
        if not value:
            return f"document {what} is empty"
        if unstorable(value):
            bad = sorted({f"U+{ord(c):04X}" for c in _UNSTORABLE.findall(value)})
            return (f"document {what} contains {', '.join(bad)}, which Postgres cannot store "
                    "(ids are never cleaned: two documents could become one)")
    if updated_at is not None and not math.isfinite(updated_at):
        return f"updated_at is {updated_at!r}, not a time"
    return None


def estimate_tokens(text: str) -> int:
    """A conservative token count from characters (tiktoken would download its encoding)."""
    return int(len(text) / CHARS_PER_TOKEN) + 1


_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def chunk_text(text: str, max_tokens: int = 512, overlap_tokens: int = 48) -> list[str]:
    """Split ``text`` into chunks of at most ``max_tokens`` (estimated), on natural boundaries.

    Paragraphs (blank-line separated) are kept whole when they fit, so a source can make each
    speaker turn or comment a paragraph and keep it in one piece; longer paragraphs split on
    sentences, then on words, then hard on characters. Consecutive chunks of a split paragraph
    overlap by about ``overlap_tokens``. Empty text gives no chunks.
    """
    max_chars = max(16, int(max_tokens * CHARS_PER_TOKEN))
    overlap_chars = min(int(overlap_tokens * CHARS_PER_TOKEN), max_chars // 4)
    pieces: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        paragraph = paragraph.strip()
        if paragraph:
            pieces.extend(_split_long(paragraph, max_chars, overlap_chars))
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current}\n\n{piece}" if current else piece
        if len(candidate) <= max_chars:
            current = candidate
        else:
            if current:
                chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks


def _split_long(paragraph: str, max_chars: int, overlap_chars: int) -> list[str]:
    if len(paragraph) <= max_chars:
        return [paragraph]
    units = _SENTENCE.split(paragraph)
    if len(units) == 1:
        units = paragraph.split(" ")
    out: list[str] = []
    current = ""
    for unit in units:
        while len(unit) > max_chars:  # one enormous word: split hard
            if current:
                out.append(current)
                current = ""
            out.append(unit[:max_chars])
            unit = unit[max_chars - overlap_chars :] if overlap_chars else unit[max_chars:]
        candidate = f"{current} {unit}" if current else unit
        if len(candidate) <= max_chars:
            current = candidate
        else:
            out.append(current)
            tail = current[-overlap_chars:] if overlap_chars else ""
            tail = tail[tail.find(" ") + 1 :] if " " in tail else tail
            current = f"{tail} {unit}".strip() if tail else unit
            if len(current) > max_chars:
                current = unit
    if current:
        out.append(current)
    return out


def _sha256(value: Any) -> str:
    encoded = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()
