"""Embedders: turn chunk texts into vectors, in batches.

Two backends: :mod:`core.embeddings.offline` (deterministic feature hashing, the default, no
download) and :mod:`core.embeddings.openai` (the official SDK; honours ``OPENAI_BASE_URL``).
Each ``embed`` call takes any number of texts and splits them into requests within the API's
limits itself; ``requests`` counts the requests made, so tests and benchmarks can prove that
documents are embedded in batches, not one call each.
"""

from __future__ import annotations

from typing import Protocol

from core.documents import TokenCounter, estimate_tokens
from core.settings import Settings


class Embedder(Protocol):
    model: str
    dimensions: int
    #: Embedding requests made so far (one request may carry up to 2,048 inputs).
    requests: int

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order. Raises EmbeddingError on failure."""
        ...

    async def aclose(self) -> None: ...


def token_counter(embedder: object) -> TokenCounter:
    """How ``embedder`` counts tokens (its ``count_tokens``: exact for OpenAI), else the
    conservative character estimate. Chunks are cut and requests planned with it."""
    count = getattr(embedder, "count_tokens", None)
    return count if callable(count) else estimate_tokens


def build_embedder(settings: Settings) -> Embedder:
    """OpenAI when ``OPENAI_API_KEY`` is set, else the offline hashing embedder."""
    if settings.openai_api_key:
        from core.embeddings.openai import OpenAIEmbedder

        return OpenAIEmbedder(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url or None,
            model=settings.embedding_model,
            dimensions=settings.embedding_dimensions,
            timeout=max(settings.http_timeout, 30.0),
        )
    from core.embeddings.offline import OfflineEmbedder

    return OfflineEmbedder(dimensions=settings.embedding_dimensions)
