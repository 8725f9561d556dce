"""PineconeIndex against the Pinecone simulator over real HTTP (the official SDK in between)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import httpx
import pytest

from core.errors import IndexError_, IndexRejected, IndexUnavailable, UpsertMismatch, is_permanent, wait_of
from core.index import MAX_METADATA_BYTES, Match, Vector, build_index
from core.index.pinecone import (
    PROTECTED_KEYS,
    TRIMMED_KEY,
    PineconeIndex,
    json_size,
    plan_upserts,
    trim_metadata,
)
from core.settings import Settings
from sandbox.pinecone import API_KEY, PineconeSimulator
from sandbox.server import SandboxServer

NARROW = 8  # dimension of the index used where request size should not matter
WIDE = 1536


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    sims = {"pinecone": PineconeSimulator(dimension=NARROW),
            "wide": PineconeSimulator(dimension=WIDE)}
    srv = SandboxServer(sims).start()
    yield srv
    srv.stop()


def reset(server: SandboxServer, name: str, dimension: int) -> str:
    base = server.url(name)
    httpx.put(f"{base}/_sandbox/index", json={"dimension": dimension})
    httpx.delete(f"{base}/_sandbox/stats")
    return base


@pytest.fixture()
def index(server: SandboxServer) -> Iterator[PineconeIndex]:
    reset(server, "pinecone", NARROW)
    idx = PineconeIndex(api_key=API_KEY, host=server.url("pinecone"), namespace="vector-sync")
    yield idx
    idx.close()


def sim_stats(server: SandboxServer, name: str = "pinecone") -> dict:
    return httpx.get(f"{server.url(name)}/_sandbox/stats").json()


def values(seed: int, dim: int = NARROW) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(-1, 1) for _ in range(dim)]


def doc_vectors(count: int, prefix: str = "jira:1", dim: int = NARROW) -> list[Vector]:
    return [Vector(f"{prefix}#{i}", values(i, dim),
                   {"document_id": prefix, "source": prefix.split(":")[0], "chunk": i,
                    "text": f"chunk {i}"})
            for i in range(count)]


def test_2500_vectors_go_out_as_three_upserts(index: PineconeIndex,
                                              server: SandboxServer) -> None:
    assert index.upsert(doc_vectors(2500)) == 2500
    assert sim_stats(server)["upsert_batches"] == [1000, 1000, 500]
    assert index.writes == 3
    assert index.count() == 2500


def test_wide_vectors_are_cut_by_request_size(server: SandboxServer) -> None:
    base = reset(server, "wide", WIDE)
    idx = PineconeIndex(api_key=API_KEY, host=base, namespace="wide")
    try:
        # ~30 KB of JSON per 1536-float vector: 200 of them are about 6 MB.
        assert idx.upsert(doc_vectors(200, dim=WIDE)) == 200
    finally:
        idx.close()
    seen = sim_stats(server, "wide")
    assert len(seen["upsert_batches"]) >= 3
    assert sum(seen["upsert_batches"]) == 200
    assert max(seen["upsert_bytes"]) <= 2_000_000
    assert seen["rejected"] == 0


def test_60kb_of_metadata_is_trimmed_not_rejected(index: PineconeIndex) -> None:
    text = "The decision about SUBS billing. " * 1900  # ~62 KB
    meta = {"document_id": "slack:C1:1700000000.1", "source": "slack", "chunk": 0,
            "scope": "C1", "url": "https://slack.example/archives/C1/p1700000000",
            "title": "billing thread", "text": text, "author": None}
    assert index.upsert([Vector("slack:C1:1700000000.1#0", values(1), meta)]) == 1
    stored = index.fetch(["slack:C1:1700000000.1#0"])["slack:C1:1700000000.1#0"]
    assert stored[TRIMMED_KEY] is True
    assert json_size(stored) <= MAX_METADATA_BYTES
    for key in ("document_id", "source", "chunk", "scope", "url", "title"):
        assert stored[key] == meta[key]
    assert text.startswith(stored["text"]) and 30_000 < len(stored["text"]) < len(text)
    assert "author" not in stored  # None values are removed, not sent


def test_upsert_count_mismatch_is_caught(index: PineconeIndex, server: SandboxServer) -> None:
    httpx.put(f"{server.url('pinecone')}/_sandbox/faults", json={"upsert_drop": 1, "times": 1})
    with pytest.raises(UpsertMismatch, match="stored 1499 of 1500|stored 999 of 1000"):
        index.upsert(doc_vectors(2500))
    # A retry (the job's) stores everything.
    assert index.upsert(doc_vectors(2500)) == 2500


def test_fetch_and_delete_go_in_batches_of_1000(index: PineconeIndex,
                                                server: SandboxServer) -> None:
    index.upsert(doc_vectors(2500))
    ids = [f"jira:1#{i}" for i in range(2500)] + ["jira:1#missing"]
    found = index.fetch(ids)
    assert len(found) == 2500 and found["jira:1#7"]["chunk"] == 7
    assert sim_stats(server)["requests"]["fetch"] == 3
    index.delete(ids)
    assert sim_stats(server)["requests"]["delete"] == 3
    assert index.count() == 0
    assert index.fetch(["jira:1#0"]) == {}


def test_query_returns_matches_with_metadata(index: PineconeIndex) -> None:
    index.upsert(doc_vectors(5, "jira:1") + doc_vectors(5, "slack:C9:1"))
    target = values(3)
    matches = index.query(target, top_k=3)
    assert all(isinstance(m, Match) for m in matches)
    assert matches[0].id in {"jira:1#3", "slack:C9:1#3"}
    assert matches[0].score == pytest.approx(1.0)
    filtered = index.query(target, top_k=10, filter={"source": "slack"})
    assert {m.metadata["source"] for m in filtered} == {"slack"}
    assert len(filtered) == 5
    in_filter = index.query(target, top_k=10, filter={"source": {"$in": ["jira"]}})
    assert {m.id for m in in_filter} == {f"jira:1#{i}" for i in range(5)}


def test_list_ids_follows_pagination(index: PineconeIndex, server: SandboxServer) -> None:
    index.upsert(doc_vectors(250, "github:o/r/issues/1") + doc_vectors(3, "github:o/r/issues/2"))
    ids = index.list_ids("github:o/r/issues/1#")
    assert len(ids) == 250 and len(set(ids)) == 250
    assert sim_stats(server)["requests"]["list"] == 3  # pages of 100
    assert index.list_ids("github:o/r/issues/2#") == [f"github:o/r/issues/2#{i}" for i in range(3)]
    assert len(index.list_ids("")) == 253


def test_update_metadata_keeps_values(index: PineconeIndex) -> None:
    index.upsert(doc_vectors(2))
    index.update_metadata({"jira:1#0": {"document_id": "jira:1", "source": "jira", "chunk": 0,
                                        "title": "renamed", "text": "chunk 0"}})
    stored = index.fetch(["jira:1#0"])["jira:1#0"]
    assert stored["title"] == "renamed" and stored[TRIMMED_KEY] is False
    assert index.query(values(0), top_k=1)[0].id == "jira:1#0"  # values untouched
    assert index.writes == 2


def test_namespace_is_explicit_and_isolated(server: SandboxServer) -> None:
    reset(server, "pinecone", NARROW)
    mine = PineconeIndex(api_key=API_KEY, host=server.url("pinecone"), namespace="mine")
    other = PineconeIndex(api_key=API_KEY, host=server.url("pinecone"), namespace="")
    try:
        mine.upsert(doc_vectors(4))
        other.upsert(doc_vectors(2))
        assert mine.count() == 4 and other.count() == 2
        assert len(mine.list_ids("")) == 4
        assert mine.query(values(0), top_k=10)[0].id == "jira:1#0"
        assert len(other.query(values(0), top_k=10)) == 2
    finally:
        mine.close()
        other.close()


def test_wrong_key_and_bad_requests_are_index_errors(server: SandboxServer) -> None:
    wrong = PineconeIndex(api_key="pcsk_wrong", host=server.url("pinecone"), namespace="x")
    with pytest.raises(IndexError_, match="HTTP 401"):
        wrong.count()
    wrong.close()
    idx = PineconeIndex(api_key=API_KEY, host=server.url("pinecone"), namespace="x")
    with pytest.raises(IndexError_, match="HTTP 400"):
        idx.upsert([Vector("bad#0", [0.1, 0.2], {})])  # wrong dimension
    idx.close()


def test_build_index_picks_pinecone(server: SandboxServer) -> None:
    settings = Settings.from_environ({"PINECONE_API_KEY": API_KEY,
                                      "PINECONE_HOST": server.url("pinecone")})
    idx = build_index(settings, pool=None)
    assert isinstance(idx, PineconeIndex) and idx.namespace == "vector-sync"
    assert idx.count() >= 0
    idx.close()


# --- trim_metadata (pure) --------------------------------------------------------------------
def test_trim_leaves_small_metadata_alone_but_drops_none() -> None:
    meta = {"source": "jira", "title": "x", "assignee": None, "labels": ["a", None, "b"]}
    assert trim_metadata(meta) == {"source": "jira", "title": "x", "labels": ["a", "b"]}


def test_trim_cuts_the_largest_value_first() -> None:
    meta = {"document_id": "notion:p1", "source": "notion", "chunk": 3,
            "title": "t" * 2000, "text": "x" * 70_000}
    trimmed = trim_metadata(meta, 40_000)
    assert json_size(trimmed) <= 40_000
    assert trimmed["title"] == "t" * 2000  # not the largest: untouched
    assert trimmed[TRIMMED_KEY] is True
    assert trimmed["document_id"] == "notion:p1" and trimmed["chunk"] == 3


def test_trim_drops_list_items_from_the_end() -> None:
    meta = {"source": "fireflies", "keywords": [f"keyword-{i:05d}" for i in range(5000)]}
    trimmed = trim_metadata(meta, 10_000)
    assert json_size(trimmed) <= 10_000
    assert trimmed["keywords"] == meta["keywords"][: len(trimmed["keywords"])]


def test_trim_touches_protected_fields_only_as_a_last_resort() -> None:
    meta = {"document_id": "fireflies:t1", "source": "fireflies", "chunk": 0,
            "text": "x" * 5000, "access_list": [f"user{i}@example.com" for i in range(3000)]}
    trimmed = trim_metadata(meta, 20_000)
    assert json_size(trimmed) <= 20_000
    assert trimmed["text"] == ""  # everything unprotected went first
    # Fail closed: the access list lost members from the end, it did not gain any.
    assert 0 < len(trimmed["access_list"]) < 3000
    assert set(trimmed["access_list"]) <= set(meta["access_list"])
    assert "access_list" in PROTECTED_KEYS


def test_trim_raises_when_identity_alone_is_too_big() -> None:
    with pytest.raises(ValueError):
        trim_metadata({"document_id": "d" * 500, "source": "s"}, 100)


def test_trim_handles_multibyte_text() -> None:
    meta = {"source": "slack", "text": "日本語のテキスト" * 3000}
    trimmed = trim_metadata(meta, MAX_METADATA_BYTES - 512)
    encoded = json.dumps(trimmed, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(encoded) <= MAX_METADATA_BYTES - 512


def test_plan_upserts_cuts_on_count_and_size() -> None:
    small = [{"id": f"v{i}", "values": [0.5]} for i in range(2001)]
    assert [len(b) for b in plan_upserts(small)] == [1000, 1000, 1]
    big = [{"id": f"v{i}", "values": [0.123456789] * 1000} for i in range(100)]
    batches = list(plan_upserts(big, max_bytes=100_000))
    assert all(sum(json_size(r) for r in b) <= 100_000 for b in batches)
    assert [r for b in batches for r in b] == big


def test_delete_documents_deletes_by_prefix_and_keeps_what_is_asked(index: PineconeIndex) -> None:
    index.upsert(doc_vectors(5, "jira:1") + doc_vectors(3, "jira:10"))  # "jira:1" prefixes "jira:10"
    assert index.delete_documents(["jira:1"], keep={"jira:1#0", "jira:1#1"}) == 3
    assert sorted(index.list_ids("jira:1#")) == ["jira:1#0", "jira:1#1"]
    assert len(index.list_ids("jira:10#")) == 3
    assert index.delete_documents(["jira:1", "jira:10"]) == 5
    assert index.count() == 0


def test_index_failures_are_classified(index: PineconeIndex, server: SandboxServer) -> None:
    faults = f"{server.url('pinecone')}/_sandbox/faults"
    try:
        httpx.put(faults, json={"status": 503, "times": 50, "op": "upsert"})
        with pytest.raises(IndexUnavailable, match="outage"):
            index.upsert(doc_vectors(2))
        httpx.put(faults, json={"status": 500, "times": 50, "op": "upsert"})
        with pytest.raises(IndexError_) as caught:
            index.upsert(doc_vectors(2))
        assert wait_of(caught.value) is None and not is_permanent(caught.value)
    finally:
        httpx.put(faults, json={})
    with pytest.raises(IndexRejected):
        index.upsert([Vector("café#0", values(1), {})])  # Pinecone ids are ASCII
    assert index.upsert(doc_vectors(2)) == 2
