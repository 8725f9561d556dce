"""Pinecone serverless through the official ``pinecone`` SDK (REST), one explicit namespace.

Pinecone's data-plane limits (docs.pinecone.io, database limits), kept on our side so a request
never fails for size:

- upsert: at most 1,000 vectors and 2 MB of request body: batches are cut on both, estimating
  the JSON size of each record;
- metadata: at most 40 KB per record, no nulls: :func:`trim_metadata` shortens the longest
  values (never identity fields) and marks ``metadata_trimmed: true`` rather than dropping the
  record, and None values are removed;
- fetch and delete: at most 1,000 ids per request.

Every upsert batch's ``upserted_count`` is compared with what was sent; a shortfall raises
:class:`core.errors.UpsertMismatch` (the job retries, and upserts are idempotent).

Errors are classified by status (after the SDK's own retries): 429 is
:class:`~core.errors.IndexRateLimited` and 502/503/504 :class:`~core.errors.IndexUnavailable`
(waits, not failures), other 4xx :class:`~core.errors.IndexRejected` (permanent), the rest
:class:`~core.errors.IndexError_`. A document's vectors are deleted by listing the ids with its
prefix ``"{document_id}#"`` and deleting them (``delete_documents``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from pinecone import Pinecone
from pinecone.errors.exceptions import (
    PineconeConnectionError,
    PineconeError,
    PineconeTypeError,
    PineconeValueError,
    ValidationError,
)

from core import metrics
from core.errors import IndexError_, IndexRateLimited, IndexRejected, IndexUnavailable, UpsertMismatch
from core.index.base import MAX_METADATA_BYTES, Match, Vector

log = logging.getLogger(__name__)

#: Most vectors per upsert request.
MAX_UPSERT_VECTORS = 1000
#: Request-body budget per upsert, bytes: 2 MB read strictly (10^6) less 5 % for the JSON
#: encoder's float formatting differing from ours.
MAX_UPSERT_BYTES = 1_900_000
#: Most ids per fetch or delete request.
MAX_IDS = 1000
#: Metadata budget per record, bytes: the 40 KB limit less room for how the server measures.
METADATA_BUDGET = MAX_METADATA_BYTES - 512
#: Keys never shortened: they identify the vector or decide who may see it.
PROTECTED_KEYS = frozenset(
    {"document_id", "source", "chunk", "scope", "url", "updated_at", "access_type", "access_list"}
)
#: The marker added to metadata that had to be shortened.
TRIMMED_KEY = "metadata_trimmed"
#: Bytes added to the request body by the envelope around the vectors.
_ENVELOPE_BYTES = 256


def json_size(value: Any) -> int:
    """Bytes of the compact UTF-8 JSON encoding of ``value`` (how the SDK sends it)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def trim_metadata(metadata: Mapping[str, Any], max_bytes: int = METADATA_BUDGET) -> dict[str, Any]:
    """A copy of ``metadata`` without None values whose JSON fits in ``max_bytes``.

    When it does not fit, the largest values are shortened first (long strings are cut from the
    end, lists lose items from the end) until it does, and ``metadata_trimmed: True`` is set.
    The chunk text is normally the largest value, so it is what gets shortened; identity and
    access fields (:data:`PROTECTED_KEYS`) are only touched if nothing else is left, and then
    access lists lose members (fail closed: fewer people see the chunk, never more).
    Raises ValueError if even that cannot make it fit.
    """
    clean = _without_none(metadata)
    if json_size(clean) <= max_bytes:
        return clean
    clean[TRIMMED_KEY] = True
    for protected in (False, True):
        while (excess := json_size(clean) - max_bytes) > 0:
            key = _largest(clean, protected)
            if key is None:
                break
            clean[key] = _shorten(clean[key], excess)
    if json_size(clean) > max_bytes:
        raise ValueError(f"metadata cannot be trimmed to {max_bytes} bytes")
    return clean


def _without_none(metadata: Mapping[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = [item for item in value if item is not None]
        clean[key] = value
    return clean


def _largest(metadata: dict[str, Any], include_protected: bool) -> str | None:
    """The key of the largest shortenable value, or None when nothing is left to shorten."""
    best, best_size = None, 0
    for key, value in metadata.items():
        if key == TRIMMED_KEY or (key in PROTECTED_KEYS and not include_protected):
            continue
        if key in ("document_id", "source", "chunk"):
            continue  # the vector's identity: never shortened
        if isinstance(value, (str, list)) and value:
            size = json_size(value)
            if size > best_size:
                best, best_size = key, size
    return best


def _shorten(value: str | list[Any], excess: int) -> str | list[Any]:
    """Cut ``value`` so its JSON shrinks by at least about ``excess`` bytes (loops converge)."""
    size = json_size(value)
    # Keep the same share of characters/items as of bytes, minus one for rounding.
    keep = max(0, int(len(value) * (size - excess) / size) - 1)
    return value[:keep]


class PineconeIndex:
    """A :class:`core.index.VectorIndex` on one Pinecone index host and namespace."""

    def __init__(self, *, api_key: str, host: str, namespace: str, timeout: float = 10.0,
                 max_upsert_bytes: int = MAX_UPSERT_BYTES) -> None:
        """``host`` is the index's data-plane URL (``http://`` is kept, as the SDK does);
        ``timeout`` is seconds per HTTP attempt."""
        self.namespace = namespace
        self.writes = 0
        self.max_upsert_bytes = max_upsert_bytes
        self._client = Pinecone(api_key=api_key, timeout=timeout)
        self._index = self._client.Index(host=host)

    # --- writes -----------------------------------------------------------------------
    def upsert(self, vectors: list[Vector]) -> int:
        """Store ``vectors`` in batches; returns how many were stored. Raises UpsertMismatch."""
        records = [self._record(v) for v in vectors]
        stored = 0
        for number, batch in enumerate(plan_upserts(records, self.max_upsert_bytes), 1):
            self.writes += 1
            response = self._call("upsert", self._index.upsert, vectors=batch,
                                  namespace=self.namespace)
            if response.upserted_count != len(batch):
                raise UpsertMismatch(
                    f"pinecone upsert batch {number} stored {response.upserted_count} of "
                    f"{len(batch)} vectors (namespace {self.namespace!r})"
                )
            stored += response.upserted_count
        return stored

    def _record(self, vector: Vector) -> dict[str, Any]:
        metadata = _trim(vector.id, vector.metadata)
        record: dict[str, Any] = {"id": vector.id, "values": list(vector.values)}
        if metadata:
            record["metadata"] = metadata
        return record

    def update_metadata(self, metadata: Mapping[str, Mapping[str, Any]]) -> None:
        """Set new metadata on existing vectors without touching their values.

        Pinecone's ``setMetadata`` merges keys, it cannot remove one; callers send the full
        metadata each time. ``metadata_trimmed`` is always sent so a stale ``True`` is cleared.
        """
        for vid, values in metadata.items():
            trimmed = _trim(vid, values)
            trimmed.setdefault(TRIMMED_KEY, False)
            self.writes += 1
            self._call("update", self._index.update, id=vid, set_metadata=trimmed,
                       namespace=self.namespace)

    def delete(self, ids: list[str]) -> None:
        """Delete by id in requests of at most 1,000 ids; missing ids are ignored."""
        for batch in _chunks(ids, MAX_IDS):
            self.writes += 1
            self._call("delete", self._index.delete, ids=batch, namespace=self.namespace)

    def delete_documents(self, document_ids: list[str], keep: Collection[str] = ()) -> int:
        """Delete every vector whose id starts with ``"{document_id}#"``, except ``keep``.

        Pinecone serverless cannot delete by metadata filter, so the ids are listed by prefix
        first. A write not yet visible to ``list`` (Pinecone is eventually consistent) can be
        missed; the drift audit's orphan sweep catches that case."""
        kept = set(keep)
        doomed: list[str] = []
        for document_id in document_ids:
            doomed += [vid for vid in self.list_ids(f"{document_id}#") if vid not in kept]
        self.delete(doomed)
        return len(doomed)

    # --- reads ------------------------------------------------------------------------
    def fetch(self, ids: list[str]) -> dict[str, Mapping[str, Any]]:
        """Metadata of the vectors that exist among ``ids`` (missing ids are absent)."""
        found: dict[str, Mapping[str, Any]] = {}
        for batch in _chunks(ids, MAX_IDS):
            response = self._call("fetch", self._index.fetch, ids=batch, namespace=self.namespace)
            for vid, vector in response.vectors.items():
                found[vid] = dict(vector.metadata or {})
        return found

    def query(self, vector: list[float], top_k: int,
              filter: Mapping[str, Any] | None = None) -> list[Match]:
        """The ``top_k`` nearest vectors by cosine similarity, closest first."""
        response = self._call(
            "query", self._index.query, vector=vector, top_k=top_k,
            filter=dict(filter) if filter else None, include_metadata=True,
            namespace=self.namespace,
        )
        return [Match(id=m.id, score=float(m.score), metadata=dict(m.metadata or {}))
                for m in response.matches]

    def list_ids(self, prefix: str) -> list[str]:
        """Every vector id in our namespace starting with ``prefix`` (pages followed)."""
        pages = self._call("list", lambda: list(self._index.list(
            prefix=prefix or None, namespace=self.namespace)))
        return [item.id for page in pages for item in page.vectors if item.id is not None]

    def count(self) -> int:
        """Vectors in our namespace (Pinecone lists the default namespace as ``__default__``)."""
        stats = self._call("describe_index_stats", self._index.describe_index_stats)
        key = self.namespace or "__default__"
        summary = stats.namespaces.get(key)
        return int(summary.vector_count) if summary is not None else 0

    def close(self) -> None:
        self._index.close()
        self._client.close()

    @staticmethod
    def _call(what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            with metrics.timed(metrics.INDEX, backend="pinecone", operation=what):
                return method(*args, **kwargs)
        except (PineconeValueError, PineconeTypeError, ValidationError) as exc:  # refused before sending
            raise IndexRejected(f"pinecone {what} refused: {_short(exc)}") from exc
        except PineconeConnectionError as exc:
            raise IndexUnavailable(f"pinecone {what} failed: unreachable: {_short(exc)}") from exc
        except PineconeError as exc:
            status = getattr(exc, "status_code", None)
            detail = f"pinecone {what} failed (HTTP {status}): {_short(exc)}"
            if status == 429:
                raise IndexRateLimited(f"{detail} (rate limited)", status, _retry_after(exc) or 1.0) from exc
            if status in (502, 503, 504):
                raise IndexUnavailable(f"{detail} (outage)", status, _retry_after(exc)) from exc
            if isinstance(status, int) and 400 <= status < 500 and status != 408:
                raise IndexRejected(detail, status) from exc
            raise IndexError_(detail, status) from exc
        except (OSError, ValueError) as exc:  # connection refused, urllib3 errors
            raise IndexUnavailable(f"pinecone {what} failed: {type(exc).__name__}: {exc}") from exc


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:500]


def _retry_after(exc: Exception) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    try:
        raw = dict(headers).get("Retry-After") or dict(headers).get("retry-after")
        return float(raw) if raw else None
    except (TypeError, ValueError):
        return None


def plan_upserts(records: Sequence[dict[str, Any]],
                 max_bytes: int = MAX_UPSERT_BYTES) -> Iterator[list[dict[str, Any]]]:
    """Split records in order into batches of at most 1,000 and about ``max_bytes`` of JSON."""
    batch: list[dict[str, Any]] = []
    size = _ENVELOPE_BYTES
    for record in records:
        cost = json_size(record) + 1  # + the comma between records
        if batch and (len(batch) >= MAX_UPSERT_VECTORS or size + cost > max_bytes):
            yield batch
            batch, size = [], _ENVELOPE_BYTES
        batch.append(record)
        size += cost
    if batch:
        yield batch


def _trim(vid: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`trim_metadata` with a log line when it cut something (the loss is visible)."""
    try:
        trimmed = trim_metadata(metadata)
    except ValueError as exc:
        raise IndexRejected(f"vector {vid}: {exc}") from exc
    if trimmed.get(TRIMMED_KEY):
        log.warning("metadata of vector %s trimmed to fit Pinecone's 40 KB limit", vid)
    return trimmed


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
