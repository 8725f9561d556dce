"""OpenAIEmbedder against the OpenAI simulator over real HTTP (the official SDK in between)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator

import httpx
import pytest

from core.embeddings import build_embedder
from core.embeddings.openai import OpenAIEmbedder, plan_batches, prepare_input
from core.embeddings.batching import BatchingEmbedder
from core.errors import (
    EmbeddingError,
    EmbeddingRateLimited,
    EmbeddingRejected,
    EmbeddingUnavailable,
    is_permanent,
    wait_of,
)
from core.settings import Settings
from sandbox.server import SandboxServer, create_simulators


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    srv = SandboxServer(create_simulators(["openai"], profile="empty")).start()
    yield srv
    srv.stop()


@pytest.fixture()
def base(server: SandboxServer) -> Iterator[str]:
    url = server.url("openai")
    httpx.delete(f"{url}/_sandbox/stats")
    yield url
    httpx.put(f"{url}/_sandbox/knobs", json={"rate_limit": None})
    httpx.put(f"{url}/_sandbox/limits", json={"tokens_per_minute": 1_000_000})


def make(server: SandboxServer, **kwargs: object) -> OpenAIEmbedder:
    env = server.env()
    options = {"api_key": env["OPENAI_API_KEY"], "base_url": env["OPENAI_BASE_URL"],
               "timeout": 30.0} | kwargs
    return OpenAIEmbedder(**options)  # type: ignore[arg-type]


def embed(embedder: OpenAIEmbedder, texts: list[str]) -> list[list[float]]:
    async def run() -> list[list[float]]:
        try:
            return await embedder.embed(texts)
        finally:
            await embedder.aclose()

    return asyncio.run(run())


def stats(base: str) -> dict:
    return httpx.get(f"{base}/_sandbox/stats").json()


def test_2500_inputs_go_out_as_two_requests(server: SandboxServer, base: str) -> None:
    embedder = make(server)
    vectors = embed(embedder, [f"chunk {i}" for i in range(2500)])
    assert len(vectors) == 2500
    assert embedder.requests == 2
    assert stats(base)["batch_sizes"] == [2048, 452]


def test_vectors_come_back_in_input_order(server: SandboxServer) -> None:
    texts = [f"text number {i} about topic {i % 7}" for i in range(30)]
    together = embed(make(server), texts)
    one_by_one = [embed(make(server), [t])[0] for t in (texts[0], texts[17], texts[29])]
    for got, expected in zip((together[0], together[17], together[29]), one_by_one):
        assert got == pytest.approx(expected, abs=1e-6)
    assert together[0] != pytest.approx(together[1], abs=1e-6)


def test_dimensions_are_honoured(server: SandboxServer, base: str) -> None:
    embedder = make(server, dimensions=256)
    vectors = embed(embedder, ["short vectors please"])
    assert len(vectors[0]) == 256
    assert math.isclose(math.hypot(*vectors[0]), 1.0, rel_tol=1e-5)
    assert stats(base)["dimensions"] == [256]
    ada = make(server, model="text-embedding-ada-002", dimensions=1536)
    assert len(embed(ada, ["ada does not take dimensions"])[0]) == 1536


def test_batches_respect_the_token_budget(server: SandboxServer, base: str) -> None:
    text = "w" * 60_000  # 30,000 tokens: cut to 8,191
    embedder = make(server)
    vectors = embed(embedder, [text] * 80)
    assert len(vectors) == 80
    per_input = embedder.count_tokens(prepare_input(text, 0, embedder.encoding))
    assert per_input == 8191
    per_request = 300_000 // per_input  # 36 inputs of 8,191 tokens
    assert per_request < 40
    assert stats(base)["batch_sizes"] == [per_request, per_request, 80 - 2 * per_request]
    assert embedder.requests == 3


def test_empty_strings_are_sent_as_a_space(server: SandboxServer) -> None:
    vectors = embed(make(server), ["", "not empty", ""])
    assert len(vectors) == 3 and vectors[0] == pytest.approx(vectors[2])


def test_overlong_input_is_truncated_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="core.embeddings.openai"):
        prepared = prepare_input("q" * 100_000, position=7)
    assert OpenAIEmbedder(api_key="k").count_tokens(prepared) == 8191
    assert "input 7 cut from 50000 to 8191 tokens" in caplog.text


def test_plan_batches_keeps_order_and_limits() -> None:
    texts = [str(i) for i in range(5000)]
    batches = list(plan_batches(texts, max_inputs=2048, max_tokens=300_000))
    assert [len(b) for b in batches] == [2048, 2048, 904]
    assert [t for b in batches for t in b] == texts


def test_rate_limit_is_waited_out_by_the_sdk(server: SandboxServer, base: str) -> None:
    httpx.put(f"{base}/_sandbox/knobs", json={"rate_limit": 2})
    embedder = make(server)

    async def run() -> list[list[list[float]]]:
        try:
            return [await embedder.embed([f"call {i}"]) for i in range(3)]
        finally:
            await embedder.aclose()

    results = asyncio.run(run())
    assert all(len(r) == 1 for r in results)
    seen = stats(base)
    assert seen["rate_limited"] >= 1 and seen["succeeded"] == 3


def test_rate_limit_exhaustion_is_an_embedding_error(server: SandboxServer, base: str) -> None:
    httpx.put(f"{base}/_sandbox/knobs", json={"rate_limit": 1})
    embedder = make(server, max_retries=0)

    async def run() -> None:
        try:
            await embedder.embed(["first"])
            await embedder.embed(["second"])
        finally:
            await embedder.aclose()

    with pytest.raises(EmbeddingError, match="HTTP 429"):
        asyncio.run(run())


def test_wrong_key_is_an_embedding_error(server: SandboxServer) -> None:
    with pytest.raises(EmbeddingError, match="HTTP 401.*Incorrect API key"):
        embed(make(server, api_key="sk-wrong-key-0000"), ["x"])


def test_unreachable_server_is_an_embedding_error() -> None:
    embedder = OpenAIEmbedder(api_key="sk-x", base_url="http://127.0.0.1:9/v1", timeout=2.0,
                              max_retries=0)
    with pytest.raises(EmbeddingError, match="APIConnectionError"):
        embed(embedder, ["x"])


def test_build_embedder_picks_openai_with_a_key(server: SandboxServer, base: str) -> None:
    settings = Settings.from_environ(server.env() | {"EMBEDDING_DIMENSIONS": "512"})
    embedder = build_embedder(settings)
    assert isinstance(embedder, OpenAIEmbedder)
    vectors = embed(embedder, ["through settings"])
    assert len(vectors[0]) == 512 and embedder.requests == 1


# --- how failures are classified (the pipeline's retry policy depends on it) -----------------
@pytest.fixture()
def faults(base: str) -> Iterator[str]:
    yield f"{base}/_sandbox/faults"
    httpx.put(f"{base}/_sandbox/faults", json={})


def test_429_is_rate_limited_with_its_retry_after(server: SandboxServer, faults: str) -> None:
    httpx.put(faults, json={"status": 429, "times": 5, "retry_after": 7})
    with pytest.raises(EmbeddingRateLimited) as caught:
        embed(make(server, max_retries=0), ["x"])
    assert caught.value.retry_after == pytest.approx(7) and wait_of(caught.value) is not None
    assert "rate limited" in str(caught.value)


def test_503_is_an_outage_not_a_rate_limit(server: SandboxServer, faults: str) -> None:
    httpx.put(faults, json={"status": 503, "times": 5, "retry_after": 2})
    with pytest.raises(EmbeddingUnavailable) as caught:
        embed(make(server, max_retries=0), ["x"])
    assert "outage" in str(caught.value) and "rate limited" not in str(caught.value)
    assert not is_permanent(caught.value) and caught.value.retry_after == pytest.approx(2)


def test_500_is_a_real_failure(server: SandboxServer, faults: str) -> None:
    httpx.put(faults, json={"status": 500, "times": 5})
    with pytest.raises(EmbeddingError) as caught:
        embed(make(server, max_retries=0), ["x"])
    assert wait_of(caught.value) is None and not is_permanent(caught.value)


def test_a_refused_input_is_permanent_and_the_batching_embedder_blames_only_its_caller(
        server: SandboxServer, base: str, faults: str) -> None:
    httpx.put(faults, json={"reject_marker": "POISON"})
    with pytest.raises(EmbeddingRejected) as caught:
        embed(make(server), ["fine", "has POISON in it"])
    assert is_permanent(caught.value) and "HTTP 400" in str(caught.value)

    async def two_callers() -> list[object]:
        batching = BatchingEmbedder(make(server))
        try:  # both calls coalesce into one request, which is refused for one caller's input
            return await asyncio.gather(batching.embed(["good words"]), batching.embed(["POISON"]),
                                        return_exceptions=True)
        finally:
            await batching.aclose()

    good, bad = asyncio.run(two_callers())
    assert isinstance(good, list) and len(good) == 1
    assert isinstance(bad, EmbeddingRejected)
