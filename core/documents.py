"""Documents, references to them, stable ids, chunking and content hashing.

Identity: a document id is ``{source}:{stable id}`` where the stable id survives renames and
moves (Jira issue *id*, Slack ``{channel}:{thread_ts}``, GitHub ``{owner}/{repo}/issues/{n}``,
Notion page id, Tempo worklog id, Fireflies transcript id). A vector id is
``{document id}#{chunk number}``.

Everything here is pure: no I/O.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping
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
    so a rate-limited API is not asked twice. ``payload`` is what a verified webhook already
    said about the document (the source's own object: a GitHub issue, a Jira issue bean), for
    the source's ``from_payload`` to build the document from, asking the source only for what
    the payload lacks (workers/sync.py; docs/architecture.md, "Using what the webhook says").
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
    payload: Mapping[str, Any] | None = field(default=None, compare=False)

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
        if self.payload is not None:
            data["payload"] = dict(self.payload)
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
            payload=data.get("payload") if isinstance(data.get("payload"), Mapping) else None,
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
    """A conservative token count from characters, for the offline embedder (no tokenizer).

    The OpenAI embedder counts exactly instead (``OpenAIEmbedder.count_tokens``)."""
    return int(len(text) / CHARS_PER_TOKEN) + 1


#: Bump when chunk_text would cut the same text differently: the stored content hash includes it
#: (workers/sync.py), so existing vectors are re-embedded rather than mixed with new cuts.
CHUNKER_VERSION = 2

TokenCounter = Callable[[str], int]

#: Boundaries, strongest first: paragraphs (blank lines), lines, sentences (after . ! ? and the
#: CJK full stops, which need no space after them), words. Below words, a hard cut.
_LEVELS = (
    re.compile(r"\n[^\S\n]*\n\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"(?<=[.!?;])\s+|(?<=[\u3002\uff01\uff1f\uff1b])\s*"),
    re.compile(r"\s+"),
)
_HARD = len(_LEVELS)
_PARAGRAPH_BREAK = _LEVELS[0]
_WORD_START = re.compile(r"(?<=\s)\S")


def min_chunk_tokens(max_tokens: int) -> int:
    """The smallest chunk a text split in several chunks may have (a quarter of the budget)."""
    return max(1, max_tokens // 4)


def chunk_text(text: str, max_tokens: int = 512, overlap_tokens: int = 48,
               count: TokenCounter = estimate_tokens) -> list[str]:
    """Split ``text`` into chunks of at most ``max_tokens`` (by ``count``), on natural boundaries.

    See :func:`chunk_spans`; the chunks are exact slices of ``text``. Empty text gives none."""
    return [text[start:end] for start, end in chunk_spans(text, max_tokens, overlap_tokens, count)]


def chunk_spans(text: str, max_tokens: int = 512, overlap_tokens: int = 48,
                count: TokenCounter = estimate_tokens) -> list[tuple[int, int]]:
    """(start, end) offsets of the chunks of ``text``, in order.

    A paragraph that fits is kept whole, so a source can make each speaker turn or comment a
    paragraph and keep it in one piece; one that does not is split on lines, then sentences,
    then words, and a word is cut only when it alone is over the budget. The pieces are packed
    into as few chunks as fit, balanced so that no chunk is a tiny orphan (none below
    :func:`min_chunk_tokens`, while finer boundaries allow it). Consecutive chunks inside one
    paragraph overlap by up to ``overlap_tokens`` of whole words. Every chunk counts at most
    ``max_tokens``; every non-blank character is in some chunk; the result depends on nothing
    but the arguments.
    """
    budget = max(1, max_tokens)
    whole = _trim(text, 0, len(text))
    if whole[0] >= whole[1]:
        return []
    if count(text[whole[0]:whole[1]]) <= budget:
        return [whole]
    overlap = max(0, min(overlap_tokens, budget // 4))
    packer = _Packer(text, budget - overlap, min_chunk_tokens(budget), count)
    spans = packer.pack([_Unit(whole[0], whole[1], 0)])
    return _overlap(text, spans, budget, overlap, count) if overlap else spans


@dataclass(frozen=True)
class _Unit:
    """A piece of text; ``level`` is the boundary kind it would be split on next."""

    start: int
    end: int
    level: int


class _Packer:
    def __init__(self, text: str, budget: int, floor: int, count: TokenCounter) -> None:
        self.text, self.budget, self.floor, self.count = text, max(1, budget), floor, count
        self._costs: dict[tuple[int, int], int] = {}

    def cost(self, start: int, end: int) -> int:
        key = (start, end)
        if key not in self._costs:
            self._costs[key] = self.count(self.text[start:end])
        return self._costs[key]

    def pack(self, units: list[_Unit]) -> list[tuple[int, int]]:
        units = [piece for unit in units for piece in self._fitting(unit)]
        while True:
            groups = self._balance(units)
            small = len(groups) > 1 and any(self._span_cost(g) < self.floor for g in groups)
            finer = self._refine(units) if small else units
            if finer is units:
                break
            units = finer
        return [span for group in groups for span in self._verified(group)]

    def _fitting(self, unit: _Unit) -> list[_Unit]:
        """``unit`` split at ever finer boundaries until every piece fits the budget."""
        if self.cost(unit.start, unit.end) <= self.budget:
            return [unit]
        pieces = self._split(unit)
        return [p for piece in pieces for p in self._fitting(piece)]

    def _split(self, unit: _Unit) -> list[_Unit]:
        """``unit`` cut at its next boundary level that divides it (hard cuts last)."""
        pieces = _finer(self.text, unit)
        return pieces if len(pieces) > 1 else self._hard(unit)

    def _hard(self, unit: _Unit) -> list[_Unit]:
        """A word longer than a chunk: cut into nearly equal pieces of about the minimum chunk
        size, which the packer then joins up to the budget (with the words around it)."""
        length = unit.end - unit.start
        parts = max(2, -(-self.cost(unit.start, unit.end) // self.floor))
        while True:
            bounds = [unit.start + length * i // parts for i in range(parts + 1)]
            pieces = [_Unit(a, b, _HARD) for a, b in zip(bounds, bounds[1:]) if b > a]
            if all(self.cost(p.start, p.end) <= self.budget for p in pieces) or parts >= length:
                return pieces
            parts += 1

    def _refine(self, units: list[_Unit]) -> list[_Unit]:
        """Each unit that can be split further, split one level (to rebalance around orphans);
        ``units`` itself when none can."""
        finer: list[_Unit] = []
        changed = False
        for unit in units:
            pieces = _finer(self.text, unit)
            if len(pieces) > 1:
                finer.extend(pieces)
                changed = True
            else:
                finer.append(unit)
        return finer if changed else units

    def _span_cost(self, group: list[_Unit]) -> int:
        return self.cost(group[0].start, group[-1].end)

    def _balance(self, units: list[_Unit]) -> list[list[_Unit]]:
        """The fewest groups that fit, with cuts nearest to equal shares of the total."""
        costs = [self.cost(u.start, u.end) for u in units]
        prefix = [0]
        for c in costs:
            prefix.append(prefix[-1] + c)
        parts = max(1, self._greedy_count(costs))
        while parts < len(units):
            cuts = _nearest_cuts(prefix, parts)
            if cuts is not None and all(prefix[b] - prefix[a] <= self.budget
                                        for a, b in zip(cuts, cuts[1:])):
                return [units[a:b] for a, b in zip(cuts, cuts[1:])]
            parts += 1
        return [[u] for u in units]

    def _greedy_count(self, costs: list[int]) -> int:
        parts, size = 0, 0
        for c in costs:
            if parts == 0 or size + c > self.budget:
                parts, size = parts + 1, c
            else:
                size += c
        return parts

    def _verified(self, group: list[_Unit]) -> list[tuple[int, int]]:
        """The group as one span, or split in two when its real count is over the budget (a
        tokenizer may count a joined text above the sum of its pieces)."""
        span = (group[0].start, group[-1].end)
        if len(group) == 1 or self.cost(*span) <= self.budget:
            return [span]
        half = len(group) // 2
        return self._verified(group[:half]) + self._verified(group[half:])


def _finer(text: str, unit: _Unit) -> list[_Unit]:
    """``unit`` split at the next boundary level that divides it; never a hard cut (a word that
    fits is never cut to rebalance)."""
    level = unit.level
    while level < _HARD:
        pieces = _pieces(text, unit.start, unit.end, level)
        if len(pieces) > 1:
            return pieces
        level += 1
    return [unit]


def _nearest_cuts(prefix: list[int], parts: int) -> list[int] | None:
    """Unit indexes cutting ``prefix`` (cumulative costs) nearest to ``parts`` equal shares."""
    total, n = prefix[-1], len(prefix) - 1
    cuts = [0]
    for j in range(1, parts):
        ideal = total * j / parts
        i = bisect.bisect_left(prefix, ideal)
        if i > 0 and (i > n or ideal - prefix[i - 1] <= prefix[i] - ideal):
            i -= 1
        i = max(i, cuts[-1] + 1)
        if i > n - (parts - j):
            return None
        cuts.append(i)
    cuts.append(n)
    return cuts


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _pieces(text: str, start: int, end: int, level: int) -> list[_Unit]:
    """The non-blank pieces of text[start:end] between boundaries of ``level``."""
    out: list[_Unit] = []
    at = start
    for match in _LEVELS[level].finditer(text, start, end):
        if match.end() == match.start() and match.start() in (start, end):
            continue
        a, b = _trim(text, at, match.start())
        if b > a:
            out.append(_Unit(a, b, level + 1))
        at = match.end()
    a, b = _trim(text, at, end)
    if b > a:
        out.append(_Unit(a, b, level + 1))
    return out


def _overlap(text: str, spans: list[tuple[int, int]], budget: int, overlap: int,
             count: TokenCounter) -> list[tuple[int, int]]:
    """Start each chunk that continues a paragraph with the previous chunk's last whole words
    (up to ``overlap`` tokens, within the budget)."""
    out = [spans[0]]
    for (prev_start, prev_end), (start, end) in zip(spans, spans[1:]):
        if _PARAGRAPH_BREAK.search(text, prev_end, start):
            out.append((start, end))
            continue
        starts = [start]  # word starts to begin at, from the chunk's own start backwards
        window = text[prev_start:prev_end]
        for offset in reversed([m.start() for m in _WORD_START.finditer(window)]):
            candidate = prev_start + offset
            if candidate <= out[-1][0] or count(text[candidate:prev_end]) > overlap:
                break
            starts.append(candidate)
        # The chunk was packed to the budget less the overlap, so the longest overlap nearly
        # always fits; a tokenizer that counts the joined text higher gets a shorter one.
        while len(starts) > 1 and count(text[starts[-1]:end]) > budget:
            starts.pop()
        out.append((starts[-1], end))
    return out


def _sha256(value: Any) -> str:
    encoded = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()
