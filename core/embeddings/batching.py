"""Coalesce concurrent ``embed`` calls into shared requests.

A worker runs several jobs at once on one event loop; each job already embeds all of its
documents' chunks in one call, and this wrapper goes further: calls that arrive within
``window`` seconds of each other go out together (up to ``max_inputs`` inputs), so ten pushed
documents waiting in the queue cost one embedding request, not ten.

A coalesced request refused for its *inputs* (``EmbeddingRejected``) is not blamed on every
caller: each caller's inputs are sent again on their own, so one job's bad input never fails
another job's documents.
"""

from __future__ import annotations

import asyncio

from core.embeddings import Embedder, token_counter
from core.errors import EmbeddingRejected


class BatchingEmbedder:
    def __init__(self, inner: Embedder, *, window: float = 0.025, max_inputs: int = 2048) -> None:
        self.inner = inner
        self.model = inner.model
        self.dimensions = inner.dimensions
        self.window = window
        self.max_inputs = max_inputs
        self._pending: list[tuple[list[str], asyncio.Future[list[list[float]]]]] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def requests(self) -> int:
        return self.inner.requests

    def count_tokens(self, text: str) -> int:
        """The inner embedder's count (exact for OpenAI), so chunks are cut to its limits."""
        return token_counter(self.inner)(text)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[list[float]]] = loop.create_future()
        self._pending.append((texts, future))
        self._size += len(texts)
        if self._size >= self.max_inputs:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._size = self._pending, [], 0
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[list[str], asyncio.Future[list[list[float]]]]]) -> None:
        inputs = [text for texts, _ in batch for text in texts]
        try:
            vectors = await self.inner.embed(inputs)
        except EmbeddingRejected as exc:
            if len(batch) == 1:
                _fail(batch, exc)
            else:  # whose input was it? Each caller's inputs on their own.
                await asyncio.gather(*(self._run([item]) for item in batch))
            return
        except BaseException as exc:  # every waiting caller must hear about it
            _fail(batch, exc)
            return
        position = 0
        for texts, future in batch:
            if not future.done():
                future.set_result(vectors[position : position + len(texts)])
            position += len(texts)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _fail(batch: list[tuple[list[str], asyncio.Future[list[list[float]]]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
