"""The Pinecone data-plane simulator, driven by the official ``pinecone`` SDK over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from pinecone import Pinecone
from pinecone.errors.exceptions import (
    ApiError,
    PayloadTooLargeError,
    PineconeApiException,
    RateLimitError,
    UnauthorizedError,
)

from sandbox.pinecone import PineconeSimulator
from sandbox.server import SandboxServer, create_simulators

DIM = 1536


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    """The default simulator (1536 dimensions) and a small one (4) for count-limit tests."""
    sims = create_simulators(["pinecone"], profile="empty")
    sims["small"] = PineconeSimulator(dimension=4)
    srv = SandboxServer(sims).start()
    yield srv
    srv.stop()


@pytest.fixture()
def index(server: SandboxServer) -> Iterator:
    base = server.url("pinecone")
    httpx.put(f"{base}/_sandbox/index", json={"dimension": DIM})  # empty again
    httpx.delete(f"{base}/_sandbox/stats")
    idx = Pinecone(api_key=server.env()["PINECONE_API_KEY"]).Index(host=base)
    yield idx
    httpx.put(f"{base}/_sandbox/knobs", json={"consistency_delay": 0.0, "rate_limit": None})
    idx.close()


def vec(seed: int, dim: int = DIM) -> list[float]:
    """A distinct, non-zero vector per seed."""
    return [((seed * 31 + i * 17) % 97) / 97.0 + 0.01 for i in range(dim)]


def sim_stats(server: SandboxServer) -> dict:
    return httpx.get(f"{server.url('pinecone')}/_sandbox/stats").json()


def test_env_gives_host_and_key(server: SandboxServer) -> None:
    sim = server.sims["pinecone"]
    env = sim.env(sim.base_url)
    assert env["PINECONE_HOST"] == server.url("pinecone")
    assert env["PINECONE_API_KEY"]


def test_upsert_fetch_and_overwrite(index) -> None:
    answer = index.upsert(
        vectors=[{"id": "a", "values": vec(1), "metadata": {"source": "jira", "n": 1}},
                 ("b", vec(2), {"source": "slack"})],
        namespace="docs",
    )
    assert answer.upserted_count == 2
    fetched = index.fetch(ids=["a", "b", "missing"], namespace="docs")
    assert set(fetched.vectors) == {"a", "b"}
    assert fetched.vectors["a"].metadata == {"source": "jira", "n": 1}
    assert fetched.vectors["a"].values[:3] == pytest.approx(vec(1)[:3])
    index.upsert(vectors=[("a", vec(3), {"source": "github"})], namespace="docs")
    assert index.fetch(ids=["a"], namespace="docs").vectors["a"].metadata == {"source": "github"}


def test_query_with_filters_and_cosine_scores(index) -> None:
    rows = [
        ("j1", vec(1), {"source": "jira", "updated": 10, "tags": ["x", "y"]}),
        ("j2", vec(2), {"source": "jira", "updated": 20}),
        ("s1", vec(3), {"source": "slack", "updated": 30, "tags": ["y"]}),
        ("g1", vec(4), {"source": "github", "updated": 40}),
    ]
    index.upsert(vectors=rows, namespace="q")

    def ids(flt: dict) -> set[str]:
        found = index.query(vector=vec(1), top_k=10, filter=flt, namespace="q")
        return {m.id for m in found.matches}

    assert ids({"source": "jira"}) == {"j1", "j2"}  # implicit $eq
    assert ids({"source": {"$ne": "jira"}}) == {"s1", "g1"}
    assert ids({"source": {"$in": ["slack", "github"]}}) == {"s1", "g1"}
    assert ids({"source": {"$nin": ["slack", "github"]}}) == {"j1", "j2"}
    assert ids({"updated": {"$gt": 20}}) == {"s1", "g1"}
    assert ids({"updated": {"$gte": 20, "$lt": 40}}) == {"j2", "s1"}
    assert ids({"updated": {"$lte": 10}}) == {"j1"}
    assert ids({"tags": "y"}) == {"j1", "s1"}  # list metadata matches any element
    assert ids({"$or": [{"source": "github"}, {"updated": 10}]}) == {"g1", "j1"}
    assert ids({"$and": [{"source": "jira"}, {"updated": {"$gt": 10}}]}) == {"j2"}

    top = index.query(vector=vec(1), top_k=2, namespace="q", include_metadata=True,
                      include_values=True)
    assert top.matches[0].id == "j1"
    assert top.matches[0].score == pytest.approx(1.0)
    assert top.matches[0].score >= top.matches[1].score
    assert top.matches[0].metadata["source"] == "jira"
    assert len(top.matches[0].values) == DIM
    bare = index.query(vector=vec(1), top_k=1, namespace="q")
    assert bare.matches[0].values == [] and bare.matches[0].metadata is None
    by_id = index.query(id="g1", top_k=1, namespace="q")
    assert by_id.matches[0].id == "g1"


def test_bad_filter_and_top_k_are_400(index, server: SandboxServer) -> None:
    index.upsert(vectors=[("a", vec(1))], namespace="q")
    with pytest.raises(ApiError) as err:
        index.query(vector=vec(1), top_k=1, filter={"source": {"$regex": "j"}}, namespace="q")
    assert err.value.status_code == 400
    answer = httpx.post(
        f"{server.url('pinecone')}/query",
        json={"vector": vec(1), "topK": 10_001},
        headers={"Api-Key": server.env()["PINECONE_API_KEY"]},
    )
    assert answer.status_code == 400 and answer.json()["code"] == 3


def test_delete_by_ids_filter_and_all(index) -> None:
    index.upsert(vectors=[(f"d{i}", vec(i), {"kind": "odd" if i % 2 else "even"})
                          for i in range(6)], namespace="del")
    assert index.delete(ids=["d0", "nope"], namespace="del") is None
    index.delete(filter={"kind": "odd"}, namespace="del")
    remaining = [item.id for page in index.list(namespace="del") for item in page.vectors]
    assert remaining == ["d2", "d4"]
    index.delete(delete_all=True, namespace="del")
    assert index.describe_index_stats().namespaces.get("del") is None


def test_delete_answers_empty_object(index, server: SandboxServer) -> None:
    answer = httpx.post(f"{server.url('pinecone')}/vectors/delete",
                        json={"ids": ["x"], "namespace": "n"},
                        headers={"Api-Key": server.env()["PINECONE_API_KEY"]})
    assert answer.status_code == 200 and answer.json() == {}


def test_update_sets_metadata_and_values(index) -> None:
    index.upsert(vectors=[("u", vec(1), {"title": "old", "source": "jira"})], namespace="up")
    index.update(id="u", set_metadata={"title": "new"}, namespace="up")
    index.update(id="u", values=vec(9), namespace="up")
    got = index.fetch(ids=["u"], namespace="up").vectors["u"]
    assert got.metadata == {"title": "new", "source": "jira"}  # merged, not replaced
    assert got.values[:2] == pytest.approx(vec(9)[:2])
    with pytest.raises(ApiError) as err:  # the merged metadata would pass 40 KB
        index.update(id="u", set_metadata={"text": "x" * 41_000}, namespace="up")
    assert err.value.status_code == 400
    matched = index.update(filter={"source": "jira"}, set_metadata={"seen": True},
                           namespace="up")
    assert matched.matched_records == 1
    assert index.fetch(ids=["u"], namespace="up").vectors["u"].metadata["seen"] is True


def test_list_paginates_in_byte_order(index) -> None:
    ids = [f"doc:{i:03d}#0" for i in range(25)] + ["other#1", "Doc:upper#0"]
    index.upsert(vectors=[(v, vec(n)) for n, v in enumerate(ids)], namespace="ls")
    first = index.list_paginated(prefix="doc:", limit=10, namespace="ls")
    assert [v.id for v in first.vectors] == [f"doc:{i:03d}#0" for i in range(10)]
    assert first.pagination is not None and first.pagination.next
    pages = list(index.list(prefix="doc:", limit=10, namespace="ls"))
    assert [len(p.vectors) for p in pages] == [10, 10, 5]
    assert pages[-1].pagination is None  # no pagination on the last page
    everything = [v.id for p in index.list(namespace="ls") for v in p.vectors]
    assert everything == sorted(ids, key=str.encode)  # C collation: "D" < "d" < "o"
    assert everything[0] == "Doc:upper#0"


def test_list_limit_above_100_is_refused(index, server: SandboxServer) -> None:
    answer = httpx.get(f"{server.url('pinecone')}/vectors/list", params={"limit": 101},
                       headers={"Api-Key": server.env()["PINECONE_API_KEY"]})
    assert answer.status_code == 400


def test_describe_index_stats(index) -> None:
    index.upsert(vectors=[("a", vec(1)), ("b", vec(2))], namespace="one")
    index.upsert(vectors=[("c", vec(3))], namespace="")
    stats = index.describe_index_stats()
    assert stats.dimension == DIM
    assert stats.total_vector_count == 3
    assert stats.namespaces["one"].vector_count == 2
    assert stats.namespaces["__default__"].vector_count == 1
    assert stats.metric == "cosine"


def test_empty_and_default_namespace_are_the_same(index) -> None:
    index.upsert(vectors=[("x", vec(1))], namespace="")
    assert set(index.fetch(ids=["x"], namespace="__default__").vectors) == {"x"}
    index.upsert(vectors=[("y", vec(2))], namespace="__default__")
    assert set(index.fetch(ids=["x", "y"]).vectors) == {"x", "y"}
    listed = [v.id for p in index.list(namespace="") for v in p.vectors]
    assert listed == ["x", "y"]


def test_upsert_of_1001_vectors_is_refused_as_by_pinecone(server: SandboxServer) -> None:
    small = Pinecone(api_key=server.env()["PINECONE_API_KEY"]).Index(host=server.url("small"))
    with pytest.raises(PineconeApiException) as err:
        small.upsert(vectors=[(f"v{i}", [0.5, 0.1, 0.2, 0.3]) for i in range(1001)])
    assert err.value.status_code == 400
    assert err.value.body == {"code": 3, "message": err.value.body["message"], "details": []}
    assert "1000" in err.value.body["message"]
    assert small.upsert(vectors=[(f"v{i}", [0.5, 0.1, 0.2, 0.3]) for i in range(1000)]) \
        .upserted_count == 1000
    small.close()


def test_upsert_over_2mb_is_413(index) -> None:
    rows = [(f"big{i}", vec(i)) for i in range(80)]  # ~80 x 30 KB of JSON floats
    with pytest.raises(PayloadTooLargeError) as err:
        index.upsert(vectors=rows, namespace="big")
    assert err.value.status_code == 413
    assert "2MB" in str(err.value)


def test_metadata_over_40kb_and_nulls_are_400(index) -> None:
    with pytest.raises(ApiError) as err:
        index.upsert(vectors=[("m", vec(1), {"text": "x" * 41_000})], namespace="meta")
    assert err.value.status_code == 400
    assert "exceeds the limit of 40960 bytes per vector" in err.value.body["message"]
    with pytest.raises(ApiError) as err:
        index.upsert(vectors=[{"id": "n", "values": vec(1), "metadata": {"a": None}}],
                     namespace="meta")
    assert err.value.status_code == 400 and "null" in err.value.body["message"]
    exactly = {"text": "x" * (40_960 - len('{"text":""}'))}
    assert index.upsert(vectors=[("ok", vec(1), exactly)], namespace="meta").upserted_count == 1


def test_dimension_mismatch_is_400(index) -> None:
    with pytest.raises(ApiError) as err:
        index.upsert(vectors=[("short", [0.1, 0.2, 0.3])], namespace="dim")
    assert err.value.status_code == 400
    assert "does not match the dimension of the index 1536" in err.value.body["message"]


def test_wrong_or_missing_api_key_is_401(server: SandboxServer) -> None:
    wrong = Pinecone(api_key="pcsk_wrong").Index(host=server.url("pinecone"))
    with pytest.raises(UnauthorizedError) as err:
        wrong.describe_index_stats()
    assert err.value.status_code == 401
    answer = httpx.post(f"{server.url('pinecone')}/describe_index_stats", json={})
    assert answer.status_code == 401 and answer.json()["code"] == 16


def test_consistency_delay_hides_fresh_writes(index, server: SandboxServer) -> None:
    base = server.url("pinecone")
    httpx.put(f"{base}/_sandbox/knobs", json={"consistency_delay": 0.4})
    assert index.upsert(vectors=[("late", vec(1))], namespace="c").upserted_count == 1
    assert index.fetch(ids=["late"], namespace="c").vectors == {}
    assert index.describe_index_stats().namespaces.get("c") is None
    time.sleep(0.5)
    assert set(index.fetch(ids=["late"], namespace="c").vectors) == {"late"}
    index.delete(ids=["late"], namespace="c")
    assert set(index.fetch(ids=["late"], namespace="c").vectors) == {"late"}  # delete not seen yet
    time.sleep(0.5)
    assert index.fetch(ids=["late"], namespace="c").vectors == {}


def test_upsert_drop_fault_reports_fewer(index, server: SandboxServer) -> None:
    httpx.put(f"{server.url('pinecone')}/_sandbox/faults", json={"upsert_drop": 2, "times": 1})
    answer = index.upsert(vectors=[(f"f{i}", vec(i)) for i in range(5)], namespace="f")
    assert answer.upserted_count == 3
    assert index.describe_index_stats().namespaces["f"].vector_count == 3
    again = index.upsert(vectors=[(f"f{i}", vec(i)) for i in range(5)], namespace="f")
    assert again.upserted_count == 5  # the fault was for one upsert only
    assert sim_stats(server)["dropped_vectors"] == 2


def test_rate_limit_429_is_retried_by_the_sdk(index, server: SandboxServer) -> None:
    base = server.url("pinecone")
    index.upsert(vectors=[("r", vec(1))], namespace="rl")
    httpx.put(f"{base}/_sandbox/knobs", json={"rate_limit": 2})
    for _ in range(3):  # the third waits out a 429 inside the SDK
        index.fetch(ids=["r"], namespace="rl")
    assert sim_stats(server)["rate_limited"] >= 1
    headers = {"Api-Key": server.env()["PINECONE_API_KEY"]}
    answers = [httpx.get(f"{base}/vectors/fetch", params={"ids": "r"}, headers=headers)
               for _ in range(4)]  # the bucket holds 2, so some of 4 quick calls are refused
    raw = next(a for a in answers if a.status_code != 200)
    assert raw.status_code == 429
    assert int(raw.headers["retry-after"]) >= 1
    assert raw.json()["code"] == 8 and "TOO_MANY_REQUESTS" in raw.json()["message"]
    assert issubclass(RateLimitError, ApiError)
