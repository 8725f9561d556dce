"""The OpenAI simulator, driven by the official ``openai`` SDK over real HTTP on loopback."""

from __future__ import annotations

import base64
import array
import math
from collections.abc import Iterator

import httpx
import openai
import pytest

from sandbox.openai import count_tokens, go_duration
from sandbox.server import SandboxServer, create_simulators

MODEL = "text-embedding-3-small"


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    srv = SandboxServer(create_simulators(["openai"], profile="empty")).start()
    yield srv
    srv.stop()


@pytest.fixture()
def base(server: SandboxServer) -> Iterator[str]:
    """The simulator's base URL, with stats, knobs and budgets reset around each test."""
    url = server.url("openai")
    httpx.delete(f"{url}/_sandbox/stats")
    httpx.put(f"{url}/_sandbox/limits", json={"tokens_per_minute": 1_000_000})
    yield url
    httpx.put(f"{url}/_sandbox/knobs", json={"rate_limit": None})
    httpx.put(f"{url}/_sandbox/limits", json={"tokens_per_minute": 1_000_000})


def client(server: SandboxServer, **kwargs: object) -> openai.OpenAI:
    env = server.env()
    options = {"api_key": env["OPENAI_API_KEY"], "base_url": env["OPENAI_BASE_URL"]} | kwargs
    return openai.OpenAI(**options)  # type: ignore[arg-type]


def stats(base: str) -> dict:
    return httpx.get(f"{base}/_sandbox/stats").json()


def test_env_points_the_sdk_at_v1(server: SandboxServer) -> None:
    env = server.env()
    assert env["OPENAI_BASE_URL"] == server.url("openai") + "/v1"
    assert env["OPENAI_API_KEY"]


def test_embeddings_create_with_sdk_defaults(server: SandboxServer, base: str) -> None:
    response = client(server).embeddings.create(model=MODEL, input=["alpha", "beta gamma"])
    assert [d.index for d in response.data] == [0, 1]
    assert all(len(d.embedding) == 1536 for d in response.data)
    assert math.isclose(math.hypot(*response.data[0].embedding), 1.0, rel_tol=1e-5)
    assert response.model == MODEL
    # Counted as OpenAI counts (cl100k_base): "alpha" is 1 token, "beta gamma" 2.
    assert response.usage.prompt_tokens == response.usage.total_tokens == 1 + 2
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    assert stats(base)["encoding_formats"] == ["base64"]


def test_same_text_same_vector_and_float_matches_base64(server: SandboxServer) -> None:
    sdk = client(server)
    as_float = sdk.embeddings.create(model=MODEL, input="same text", encoding_format="float")
    again = sdk.embeddings.create(model=MODEL, input="same text")
    first, second = as_float.data[0].embedding, again.data[0].embedding
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(first, second))
    other = sdk.embeddings.create(model=MODEL, input="different words entirely").data[0]
    assert other.embedding[:8] != first[:8]


def test_raw_base64_is_little_endian_float32(server: SandboxServer, base: str) -> None:
    body = {"model": MODEL, "input": "raw", "encoding_format": "base64", "dimensions": 8}
    headers = {"Authorization": f"Bearer {server.env()['OPENAI_API_KEY']}"}
    answer = httpx.post(f"{base}/v1/embeddings", json=body, headers=headers).json()
    values = array.array("f", base64.b64decode(answer["data"][0]["embedding"]))
    assert len(values) == 8
    assert math.isclose(math.hypot(*values), 1.0, rel_tol=1e-5)


def test_lexical_overlap_is_closer(server: SandboxServer) -> None:
    data = client(server).embeddings.create(
        model=MODEL,
        input=["SUBS billing decision", "what did we decide about SUBS billing", "lunch menu"],
        encoding_format="float",
    ).data

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    assert cos(data[0].embedding, data[1].embedding) > cos(data[0].embedding, data[2].embedding)


def test_dimensions_shorten_and_models_have_their_sizes(server: SandboxServer) -> None:
    sdk = client(server)
    short = sdk.embeddings.create(model=MODEL, input="x", dimensions=256).data[0].embedding
    assert len(short) == 256
    assert math.isclose(math.hypot(*short), 1.0, rel_tol=1e-5)
    large = sdk.embeddings.create(model="text-embedding-3-large", input="x").data[0]
    assert len(large.embedding) == 3072
    ada = sdk.embeddings.create(model="text-embedding-ada-002", input="x").data[0]
    assert len(ada.embedding) == 1536
    with pytest.raises(openai.BadRequestError) as err:
        sdk.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=256)
    assert err.value.body["param"] == "dimensions"  # type: ignore[index]


def test_unknown_model_is_404_model_not_found(server: SandboxServer) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(server).embeddings.create(model="text-embedding-4-imaginary", input="x")
    assert err.value.code == "model_not_found"


def test_2049_inputs_are_refused_with_openais_error_shape(server: SandboxServer,
                                                          base: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(server).embeddings.create(model=MODEL, input=["a"] * 2049)
    assert err.value.status_code == 400
    body = err.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    assert set(body) == {"message", "type", "param", "code"}
    assert "'$.input' is invalid" in body["message"]
    assert stats(base)["succeeded"] == 0
    # 2,048 is allowed.
    assert len(client(server).embeddings.create(model=MODEL, input=["a"] * 2048).data) == 2048


def test_empty_string_is_refused(server: SandboxServer) -> None:
    with pytest.raises(openai.BadRequestError):
        client(server).embeddings.create(model=MODEL, input=["ok", ""])


def test_input_over_8192_tokens_is_refused(server: SandboxServer) -> None:
    assert count_tokens(" hello" * 8192) == 8192  # one cl100k token per " hello"
    client(server).embeddings.create(model=MODEL, input=" hello" * 8192)
    with pytest.raises(openai.BadRequestError) as err:
        client(server).embeddings.create(model=MODEL, input=" hello" * 8193)
    assert err.value.status_code == 400
    assert err.value.body == {"message": "Invalid 'input': maximum context length is 8192 tokens.",
                              "type": "invalid_request_error", "param": None, "code": None}


def test_over_300000_tokens_per_request_is_refused(server: SandboxServer) -> None:
    text = " hello" * 8000  # 8,000 tokens each
    with pytest.raises(openai.BadRequestError) as err:
        client(server).embeddings.create(model=MODEL, input=[text] * 38)  # 304,000
    assert err.value.code == "max_tokens_per_request"
    assert err.value.status_code == 400
    assert err.value.body == {"message": "Requested 304000 tokens, max 300000 tokens per request",
                              "type": "max_tokens_per_request", "param": None,
                              "code": "max_tokens_per_request"}


def test_token_arrays_are_accepted(server: SandboxServer) -> None:
    response = client(server).embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]])
    assert len(response.data) == 2
    assert response.usage.prompt_tokens == 5


def test_simulator_counts_what_vector_sync_counts_and_more_than_the_old_estimate() -> None:
    """Both sides count exactly (same encoding): CJK and base64 run far above 1 token per 3
    characters, which is what made the real API refuse what the old estimate let through."""
    from core.documents import estimate_tokens
    from core.embeddings.openai import OpenAIEmbedder

    ours = OpenAIEmbedder(api_key="k")
    cjk = "数据同步索引向量检索会议纪要" * 200
    b64 = base64.b64encode(bytes(range(256)) * 30).decode()
    for text in (cjk, b64, "plain English words " * 50):
        assert count_tokens(text) == ours.count_tokens(text)
    assert count_tokens(cjk) > 2 * estimate_tokens(cjk)
    assert count_tokens(b64) > estimate_tokens(b64)


def test_wrong_and_missing_api_keys_get_401(server: SandboxServer, base: str) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        client(server, api_key="sk-not-the-right-key").embeddings.create(model=MODEL, input="x")
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    answer = httpx.post(f"{base}/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_rate_limit_headers_on_success(server: SandboxServer) -> None:
    raw = client(server).embeddings.with_raw_response.create(model=MODEL, input="x")
    for name in ("requests", "tokens"):
        assert int(raw.headers[f"x-ratelimit-limit-{name}"]) > 0
        assert int(raw.headers[f"x-ratelimit-remaining-{name}"]) >= 0
        assert raw.headers[f"x-ratelimit-reset-{name}"].endswith("s")
    assert int(raw.headers["x-ratelimit-limit-tokens"]) == 1_000_000


def test_429_is_retried_after_retry_after_then_succeeds(server: SandboxServer, base: str) -> None:
    # One request per 5 s (a burst of 1): the second request, sent at once, is refused however
    # slow the machine is (at 4/s a busy machine refilled the budget between calls), and the
    # SDK's wait for Retry-After is 5 s at most.
    httpx.put(f"{base}/_sandbox/knobs", json={"rate_limit": 0.2})
    sdk = client(server, max_retries=3)
    sdk.embeddings.create(model=MODEL, input="spend the burst")
    response = sdk.embeddings.create(model=MODEL, input="this one waits")
    assert len(response.data) == 1
    seen = stats(base)
    assert seen["rate_limited"] >= 1  # the simulator refused it at least once ...
    assert seen["succeeded"] == 2  # ... and the SDK's retry got through
    assert seen["requests"] == 2 + seen["rate_limited"]


def test_429_body_and_headers(server: SandboxServer, base: str) -> None:
    httpx.put(f"{base}/_sandbox/knobs", json={"rate_limit": 0.2})  # one per 5 s: see above
    sdk = client(server, max_retries=0)
    sdk.embeddings.create(model=MODEL, input="first")
    with pytest.raises(openai.RateLimitError) as err:
        sdk.embeddings.create(model=MODEL, input="second")
    headers = err.value.response.headers
    assert 0 < int(headers["retry-after-ms"]) <= 5000
    assert int(headers["retry-after"]) >= 1
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.body["type"] == "requests"  # type: ignore[index]


def test_token_budget_gives_429_on_tokens(server: SandboxServer, base: str) -> None:
    httpx.put(f"{base}/_sandbox/limits", json={"tokens_per_minute": 6000})
    sdk = client(server, max_retries=0)
    sdk.embeddings.create(model=MODEL, input=" hello" * 5000)  # 5,000 of 6,000
    with pytest.raises(openai.RateLimitError) as err:
        sdk.embeddings.create(model=MODEL, input=" hello" * 5000)
    assert err.value.body["type"] == "tokens"  # type: ignore[index]


def test_stats_count_requests_and_inputs(server: SandboxServer, base: str) -> None:
    sdk = client(server)
    sdk.embeddings.create(model=MODEL, input=["a", "b", "c"])
    sdk.embeddings.create(model=MODEL, input="d", dimensions=64)
    seen = stats(base)
    assert seen["succeeded"] == 2
    assert seen["inputs"] == 4
    assert seen["batch_sizes"] == [3, 1]
    assert seen["dimensions"] == [1536, 64]


def test_go_duration_format() -> None:
    assert go_duration(0.02) == "20ms"
    assert go_duration(1.5) == "1.5s"
    assert go_duration(360) == "6m0s"
