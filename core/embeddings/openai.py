"""OpenAI embeddings through the official ``openai`` SDK (any OpenAI-compatible server works).

Limits respected per request (OpenAI's API reference): at most 2,048 inputs, at most 300,000
tokens summed, each input at most 8,192 tokens (8,191 on the older model pages: we keep to
8,191), no empty strings. Tokens are counted exactly, as OpenAI counts them: tiktoken with the
model's encoding (cl100k_base for every OpenAI embedding model; a model tiktoken does not know,
on an OpenAI-compatible server, is counted with cl100k_base too), built from the encoding files
shipped in ``openai_bpe`` (nothing is downloaded). Chunks are cut with the same count
(:meth:`OpenAIEmbedder.count_tokens`), so Chinese, Japanese or Korean text, hex and base64, which
run far above the old estimate of one token per three characters, never make a request the API
refuses.

The SDK itself retries connection errors, 408, 409, 429 and 5xx (``max_retries`` times, waiting
``retry-after-ms``/``retry-after`` when given); whatever is left is classified (:func:`classify`)
so the pipeline knows what to do with it:

- 429: :class:`~core.errors.EmbeddingRateLimited` with the ``Retry-After`` it named: the job
  waits without using up retries;
- 502/503/504, connection failures: :class:`~core.errors.EmbeddingUnavailable`, an outage: a
  wait too;
- 400 (and 413, 422): :class:`~core.errors.EmbeddingRejected`, permanent and *per input*: the
  pipeline splits the batch to find the input(s) refused, so they fail alone;
- 401, 403, 404: :class:`~core.errors.EmbeddingRefused` (key or model wrong), permanent;
- anything else (500, timeouts, a malformed answer): :class:`~core.errors.EmbeddingError`, a real
  failure retried with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import openai
import tiktoken

import openai_bpe
from core import metrics
from core.documents import TokenCounter, estimate_tokens
from core.errors import (
    EmbeddingError,
    EmbeddingRateLimited,
    EmbeddingRefused,
    EmbeddingRejected,
    EmbeddingUnavailable,
)
from core.http import OUTAGE_STATUSES

log = logging.getLogger(__name__)

#: Most inputs OpenAI accepts in one request.
MAX_INPUTS = 2048
#: Most tokens, summed over the inputs, OpenAI accepts in one request.
MAX_REQUEST_TOKENS = 300_000
#: Most tokens one input may have (the stricter of the published 8,191 / 8,192).
MAX_INPUT_TOKENS = 8191
#: SDK retries of one request (429 honours Retry-After) before we give up and raise.
DEFAULT_MAX_RETRIES = 4
#: Models whose output can be shortened with the ``dimensions`` parameter.
SHORTENABLE_PREFIX = "text-embedding-3"


class OpenAIEmbedder:
    """An :class:`core.embeddings.Embedder` backed by OpenAI's ``/v1/embeddings``."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str = "text-embedding-3-small",
        dimensions: int = 1536,
        timeout: float = 30.0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_inputs: int = MAX_INPUTS,
        max_request_tokens: int = MAX_REQUEST_TOKENS,
    ) -> None:
        """``timeout`` is seconds per HTTP attempt; ``base_url`` None means the SDK's own
        default (``OPENAI_BASE_URL``, else api.openai.com)."""
        self.model = model
        self.dimensions = dimensions
        self.requests = 0
        self.max_inputs = min(max_inputs, MAX_INPUTS)
        self.max_request_tokens = min(max_request_tokens, MAX_REQUEST_TOKENS)
        # Older models (ada-002) refuse the parameter and always answer at their native size.
        self._send_dimensions = model.startswith(SHORTENABLE_PREFIX)
        self.encoding: tiktoken.Encoding = openai_bpe.encoding_for_model(model)
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector of ``dimensions`` floats per text, in order. Raises EmbeddingError."""
        prepared = [prepare_input(text, i, self.encoding) for i, text in enumerate(texts)]
        vectors: list[list[float]] = []
        for batch in plan_batches(prepared, self.max_inputs, self.max_request_tokens,
                                  self.count_tokens):
            vectors.extend(await self._embed_batch(batch))
        return vectors

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as OpenAI counts them for this model."""
        return openai_bpe.count_tokens(text, self.encoding)

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        self.requests += 1
        with metrics.timed(metrics.EMBEDDING, backend="openai"):
            try:
                if self._send_dimensions:
                    response = await self._client.embeddings.create(
                        model=self.model, input=batch, dimensions=self.dimensions
                    )
                else:
                    response = await self._client.embeddings.create(model=self.model, input=batch)
            except openai.OpenAIError as exc:
                raise classify(exc) from exc
            return self._check(response, len(batch))

    def _check(self, response: object, expected: int) -> list[list[float]]:
        data = sorted(getattr(response, "data", []), key=lambda item: item.index)
        if len(data) != expected:
            raise EmbeddingError(f"OpenAI returned {len(data)} embeddings for {expected} inputs")
        vectors = [list(item.embedding) for item in data]
        for vector in vectors:
            if len(vector) != self.dimensions:
                raise EmbeddingError(
                    f"OpenAI returned {len(vector)} dimensions, expected {self.dimensions} "
                    f"(model {self.model})"
                )
        return vectors

    async def aclose(self) -> None:
        await self._client.close()


def prepare_input(text: str, position: int = 0, encoding: tiktoken.Encoding | None = None) -> str:
    """Make one text acceptable: a space for an empty string, cut to 8,191 tokens.

    Chunking upstream keeps chunks far below the limit, so the cut is a safety net; it is logged
    because the tail of the text is then not represented in the vector. ``encoding`` None means
    the model's default (cl100k_base).
    """
    if not text:
        return " "  # OpenAI refuses empty strings; a space embeds as "nothing".
    encoding = encoding or openai_bpe.get_encoding(openai_bpe.DEFAULT_ENCODING)
    tokens = encoding.encode_ordinary(text)
    if len(tokens) <= MAX_INPUT_TOKENS:
        return text
    keep = MAX_INPUT_TOKENS
    while True:  # a cut inside a multi-byte character is dropped, which can re-tokenise longer
        cut = encoding.decode(tokens[:keep], errors="ignore")
        if openai_bpe.count_tokens(cut, encoding) <= MAX_INPUT_TOKENS:
            break
        keep -= 16
    log.warning(
        "embedding input %d cut from %d to %d tokens (%d of %d characters kept)",
        position, len(tokens), keep, len(cut), len(text),
    )
    return cut


def plan_batches(texts: list[str], max_inputs: int = MAX_INPUTS,
                 max_tokens: int = MAX_REQUEST_TOKENS,
                 count: TokenCounter = estimate_tokens) -> Iterator[list[str]]:
    """Split ``texts`` in order into requests of at most ``max_inputs`` and ``max_tokens``
    (counted by ``count``: the embedder passes its exact count)."""
    batch: list[str] = []
    tokens = 0
    for text in texts:
        cost = count(text)
        if batch and (len(batch) >= max_inputs or tokens + cost > max_tokens):
            yield batch
            batch, tokens = [], 0
        batch.append(text)
        tokens += cost
    if batch:
        yield batch


def classify(exc: openai.OpenAIError) -> EmbeddingError:
    """Our error for what the SDK raised (after its own retries)."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = f"OpenAI embeddings failed with HTTP {status}: {_message(exc)}"
        if status == 429:
            return EmbeddingRateLimited(f"{detail} (rate limited)", status, _retry_after(exc) or 1.0)
        if status in OUTAGE_STATUSES:
            return EmbeddingUnavailable(f"{detail} (outage)", status, _retry_after(exc))
        if status in (400, 413, 422):
            return EmbeddingRejected(detail, status)
        if status in (401, 403, 404):
            return EmbeddingRefused(detail, status)
        return EmbeddingError(detail, status)
    detail = f"OpenAI embeddings failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
        return EmbeddingUnavailable(f"{detail} (unreachable)")
    return EmbeddingError(detail)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers if exc.response is not None else {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                continue
    return None


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(exc)
