"""Vector indexes: where chunks' vectors and metadata live, and where search reads.

Two backends: :mod:`core.index.pgvector` (the default, in the same Postgres, HNSW + cosine) and
:mod:`core.index.pinecone` (the official SDK against a serverless index host). Both batch
internally within their limits and check what they were told back: an upsert whose reported
count differs from what was sent raises ``UpsertMismatch``, which the job retries.

A document's vectors are deleted *by document* (``delete_documents``), never by guessing chunk
ids from a stored count: after a write, every id of the document that is not in the new set is
deleted, so a shorter version or a crash between writes leaves no orphan chunk behind.

Metadata values are str, int, float, bool or list[str] (Pinecone's rule; no nulls).
Filters use Pinecone's equality subset: ``{"source": "jira"}`` or ``{"source": {"$eq": "jira"}}``
or ``{"source": {"$in": ["jira", "slack"]}}``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.settings import Settings

#: Pinecone's per-record metadata limit, bytes (of the JSON encoding).
MAX_METADATA_BYTES = 40 * 1024


@dataclass(frozen=True)
class Vector:
    id: str
    values: list[float]
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Match:
    id: str
    score: float
    metadata: Mapping[str, Any]


class VectorIndex(Protocol):
    #: Write requests made so far (upserts, deletes, metadata updates).
    writes: int

    def upsert(self, vectors: list[Vector]) -> int:
        """Insert or overwrite; returns how many were stored. Raises UpsertMismatch."""
        ...

    def update_metadata(self, metadata: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the metadata of existing vectors (by id) without touching their values."""
        ...

    def delete(self, ids: list[str]) -> None:
        """Delete vectors by id; ids that do not exist are ignored."""
        ...

    def delete_documents(self, document_ids: list[str], keep: Collection[str] = ()) -> int:
        """Delete every vector of these documents (ids ``{document_id}#…``) except the ids in
        ``keep``; returns how many were deleted (as far as the backend can tell)."""
        ...

    def fetch(self, ids: list[str]) -> dict[str, Mapping[str, Any]]:
        """Metadata of the vectors that exist among ``ids`` (missing ids are absent)."""
        ...

    def query(
        self, vector: list[float], top_k: int, filter: Mapping[str, Any] | None = None
    ) -> list[Match]:
        """The ``top_k`` nearest vectors by cosine similarity (higher score = closer)."""
        ...

    def list_ids(self, prefix: str) -> list[str]:
        """Every vector id starting with ``prefix``."""
        ...

    def count(self) -> int:
        """How many vectors the index holds (in our namespace)."""
        ...

    def close(self) -> None: ...


def build_index(settings: Settings, pool: Any) -> VectorIndex:
    """Pinecone when ``PINECONE_API_KEY`` and ``PINECONE_HOST`` are set, else pgvector."""
    if settings.pinecone_api_key and settings.pinecone_host:
        from core.index.pinecone import PineconeIndex

        return PineconeIndex(
            api_key=settings.pinecone_api_key,
            host=settings.pinecone_host,
            namespace=settings.pinecone_namespace,
            timeout=settings.http_timeout,
        )
    from core.index.pgvector import PgvectorIndex

    return PgvectorIndex(pool, dimensions=settings.embedding_dimensions)
