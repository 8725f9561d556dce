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

from typing import Any

from core.index.base import MAX_METADATA_BYTES, Match, Vector, VectorIndex
from core.settings import Settings

__all__ = ["MAX_METADATA_BYTES", "Match", "Vector", "VectorIndex", "build_index"]


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
