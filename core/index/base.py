"""The vector index's types and protocol (the backends import these, and the package imports
the backends, so they live apart from ``core.index`` to keep the imports one-way)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

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
