"""Exact OpenAI token counts (issue 15): the shipped encodings, and CJK and base64 corpora that
the old estimate (3 characters a token) sent as requests the real API refuses.

The OpenAI simulator now counts as OpenAI does and refuses what OpenAI refuses, so a defect here
shows as refused requests; the product counts with the same encoding, so there are none.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import openai_bpe
from core.documents import chunk_text, estimate_tokens
from core.embeddings.openai import MAX_INPUT_TOKENS, MAX_REQUEST_TOKENS, OpenAIEmbedder, plan_batches
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import ADMIN_KEY, make_settings

HEADERS = {"X-Admin-Key": ADMIN_KEY}
ROOT = Path(__file__).resolve().parent.parent

#: Common Hanzi, Kana and Hangul: about one cl100k token each, some two or three.
_CJK = ("数据同步索引向量检索会议纪要项目发布版本计划客户问题解决方案团队负责人时间进度风险"
        "データ同期検索会議議事録プロジェクトリリース計画顧客問題解決チーム担当者"
        "데이터동기화검색회의록프로젝트릴리스계획고객문제해결팀담당자")


def cjk_text(seed: int, sentences: int) -> str:
    rng = random.Random(seed)
    return "".join("".join(rng.choice(_CJK) for _ in range(rng.randint(20, 60))) + "。"
                   for _ in range(sentences))


def base64_text(seed: int, blobs: int) -> str:
    rng = random.Random(seed)
    return "\n\n".join(f"attachment {i}: " + base64.b64encode(rng.randbytes(9000)).decode()
                       for i in range(blobs))


# --- the shipped encodings -------------------------------------------------------------------

def test_shipped_encodings_give_tiktokens_known_ids() -> None:
    assert openai_bpe.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert openai_bpe.get_encoding("o200k_base").encode("hello world") == [24912, 2375]
    for model in ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"):
        assert openai_bpe.encoding_name_for_model(model) == "cl100k_base"
    assert openai_bpe.encoding_name_for_model("gpt-4o") == "o200k_base"
    assert openai_bpe.encoding_name_for_model("some-compatible-server-model") == "cl100k_base"


def test_shipped_encodings_equal_tiktokens_own(tmp_path: Path) -> None:
    """tiktoken's own constructors (its pinned hashes, patterns and special tokens), fed our files
    through its cache, tokenise a mixed corpus to the same ids: nothing differs, and nothing is
    downloaded (this machine has no route to tiktoken's blob store: a miss would fail)."""
    for name in openai_bpe.ENCODINGS:
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(openai_bpe.read_ranks(name))
    corpus = [cjk_text(1, 5), base64_text(2, 1), "def f(x):\n    return x ** 2  # ünïcödé 🙂",
              "<|endoftext|> is text here", "0x" + "deadbeef" * 40, "  spaces\n\n\tand tabs  "]
    script = ("import json, sys, tiktoken\n"
              "corpus = json.load(sys.stdin)\n"
              "print(json.dumps({n: [tiktoken.get_encoding(n).encode_ordinary(t) for t in corpus]"
              " for n in sys.argv[1:]}))\n")
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script, *openai_bpe.ENCODINGS], input=json.dumps(corpus),
                          capture_output=True, text=True, env=env, timeout=120, check=True)
    theirs = json.loads(done.stdout)
    for name in openai_bpe.ENCODINGS:
        ours = [openai_bpe.get_encoding(name).encode_ordinary(t) for t in corpus]
        assert ours == theirs[name], name


# --- the defect, in numbers ------------------------------------------------------------------

def test_the_old_estimate_made_inputs_and_requests_the_api_refuses() -> None:
    """What issue 15 observed: chunks and batches planned at 3 characters a token are over the
    real limits for CJK and base64 text; planned with the exact count they are within them."""
    exact = OpenAIEmbedder(api_key="k").count_tokens
    for text in (cjk_text(3, 600), base64_text(4, 8)):
        old_chunks = chunk_text(text, 8000, 0)  # the estimate, as before
        assert max(exact(c) for c in old_chunks) > MAX_INPUT_TOKENS
        old_batches = list(plan_batches(old_chunks * 40, 2048, MAX_REQUEST_TOKENS))
        assert max(sum(exact(c) for c in b) for b in old_batches) > MAX_REQUEST_TOKENS
        chunks = chunk_text(text, 8000, 0, exact)
        assert max(exact(c) for c in chunks) <= 8000
        batches = list(plan_batches(chunks * 40, 2048, MAX_REQUEST_TOKENS, exact))
        assert max(sum(exact(c) for c in b) for b in batches) <= MAX_REQUEST_TOKENS


# --- done when: the corpora go through with no refused request ---------------------------------

@pytest.fixture(scope="module")
def sim() -> Iterator[SandboxServer]:
    server = SandboxServer(create_simulators(["openai"], profile="empty")).start()
    yield server
    server.stop()


def sim_stats(sim: SandboxServer) -> dict:
    return httpx.get(f"{sim.url('openai')}/_sandbox/stats").json()


def test_cjk_and_base64_corpora_embed_with_no_refused_request(sim: SandboxServer) -> None:
    """Through the official SDK: inputs near 8,000 tokens each, requests near 300,000 summed."""
    httpx.delete(f"{sim.url('openai')}/_sandbox/stats")
    env = sim.env()
    embedder = OpenAIEmbedder(api_key=env["OPENAI_API_KEY"], base_url=env["OPENAI_BASE_URL"],
                              dimensions=64, max_retries=0)
    texts = [c for seed in range(6) for c in chunk_text(cjk_text(seed, 300), 8000, 0, embedder.count_tokens)]
    texts += [c for seed in range(6) for c in chunk_text(base64_text(seed, 6), 8000, 0, embedder.count_tokens)]

    async def run() -> list[list[float]]:
        try:
            return await embedder.embed(texts)
        finally:
            await embedder.aclose()

    vectors = asyncio.run(run())
    stats = sim_stats(sim)
    assert len(vectors) == len(texts)
    assert stats["invalid"] == 0 and stats["succeeded"] == embedder.requests > 1
    assert stats["tokens"] == sum(embedder.count_tokens(t) for t in texts) > MAX_REQUEST_TOKENS
    assert sum(embedder.count_tokens(t) for t in texts) > 3 * sum(estimate_tokens(t) for t in texts) / 2


def test_backfill_of_cjk_and_base64_documents_through_the_pipeline(sim, infra, receiver_factory,
                                                                   worker_factory, caplog) -> None:
    """The whole path (receiver, queue, worker, chunker, embedder, pgvector) with OpenAI on:
    no request refused, and no chunk cut short to fit (chunks are cut by the exact count)."""
    caplog.set_level(logging.WARNING, logger="core.embeddings.openai")
    httpx.delete(f"{sim.url('openai')}/_sandbox/stats")
    settings = make_settings(infra, **sim.env(), CHUNK_TOKENS="8000", CHUNK_OVERLAP_TOKENS="0")
    receiver = receiver_factory(settings)
    worker = worker_factory(settings)
    docs = [{"id": f"cjk-{n}", "title": f"会议纪要 {n}", "text": cjk_text(10 + n, 250)} for n in range(4)]
    docs += [{"id": f"b64-{n}", "title": f"blob {n}", "text": base64_text(20 + n, 5)} for n in range(4)]
    for doc in docs:
        response = httpx.post(f"{receiver.url}/api/documents", json={**doc, "updated_at": 1700000001},
                              headers=HEADERS)
        assert response.status_code == 202, response.text
    worker.drain()
    stats = sim_stats(sim)
    assert stats["invalid"] == 0 and stats["succeeded"] >= 1
    for doc in docs:
        assert worker.pipeline.index.list_ids(f"api:{doc['id']}#"), doc["id"]
    assert "embedding input" not in caplog.text  # nothing was cut to fit 8,191 tokens
