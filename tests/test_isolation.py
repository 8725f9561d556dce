"""One failing document fails alone, and only failed refs are retried (issue 9).

Real Postgres, real Redis, real Dramatiq workers; Jira and OpenAI are their simulators over
loopback HTTP. Faults come from the simulators' knobs, or from Postgres itself (a trigger that
refuses one document's row: a real database error, not a mock).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core import queue, state
from core.documents import Document, Ref
from core.sources.jira import build
from sandbox.server import SandboxServer, create_simulators
from tests.conftest import FAST_BUDGETS, make_settings, wait_for

_keys = (f"I{n}" for n in itertools.count(10))


@pytest.fixture(scope="module")
def sims() -> Iterator[SandboxServer]:
    server = SandboxServer(create_simulators(["jira", "openai"], profile="empty")).start()
    yield server
    server.stop()


@pytest.fixture
def openai_faults(sims: SandboxServer) -> Iterator[str]:
    base = sims.url("openai")
    httpx.put(f"{base}/_sandbox/faults", json={})
    yield f"{base}/_sandbox/faults"
    httpx.put(f"{base}/_sandbox/faults", json={})


def jira_ctl(sims: SandboxServer) -> httpx.Client:
    return httpx.Client(base_url=sims.url("jira") + "/_sandbox/jira", timeout=30)


def new_project(sims: SandboxServer, issues: int, special: dict[int, dict[str, Any]] | None = None) -> tuple[str, list[str]]:
    """A fresh project with ``issues`` issues; ``special[n]`` overrides issue n's fields."""
    key = next(_keys)
    with jira_ctl(sims) as ctl:
        ctl.post("/projects", json={"key": key, "name": f"Project {key}"}).raise_for_status()
        ids = []
        for n in range(issues):
            fields = {"project": key, "summary": f"Issue {n} of {key}",
                      "description": f"Plain words for issue {n} in {key}."} | (special or {}).get(n, {})
            response = ctl.post("/issues", json=fields)
            response.raise_for_status()
            ids.append(str(response.json()["id"]))
    return key, ids


def listing_page(sims: SandboxServer, settings: Any, key: str) -> list[Ref]:
    """The refs the reconciler would enqueue for the project: one listing page, whole documents."""
    from core.sources.base import Scope

    async def run() -> list[Ref]:
        async with httpx.AsyncClient(timeout=30) as client:
            source = build(settings.source("jira"), client)
            return [r async for page in source.changes(Scope("jira", key), None, None) for r in page.refs]

    return asyncio.run(run())


def indexed(services: Any, prefix: str = "jira:") -> dict[str, int]:
    with services.pool.connection() as conn:
        rows = conn.execute(
            "SELECT document_id, chunk_count FROM documents WHERE document_id LIKE %s "
            "AND deleted_at IS NULL AND chunk_count > 0", (prefix + "%",)).fetchall()
    return dict(rows)


def jira_settings(infra: dict[str, str], sims: SandboxServer, **env: str) -> Any:
    jira_env = {k: v for k, v in sims.env().items() if k.startswith("JIRA")}
    return make_settings(infra, **jira_env, **FAST_BUDGETS, **env)


@pytest.fixture
def record_trigger(services: Any) -> Iterator[Any]:
    """``arm(document_id, times)``: Postgres refuses to record that document as indexed (``times``
    times, or always with None). A real database error, raised by a trigger."""
    armed: list[str] = []

    def arm(document_id: str, times: int | None = None) -> None:
        limit = "true" if times is None else f"nextval('vs_test_poison') <= {int(times)}"
        with services.pool.connection() as conn:
            conn.execute("DROP SEQUENCE IF EXISTS vs_test_poison")
            conn.execute("CREATE SEQUENCE vs_test_poison")
            conn.execute(f"""CREATE OR REPLACE FUNCTION vs_test_refuse() RETURNS trigger AS $$
                BEGIN
                    IF NEW.document_id = '{document_id}' AND NEW.content_hash IS NOT NULL THEN
                        IF {limit} THEN
                            RAISE EXCEPTION 'poison record refused for %', NEW.document_id;
                        END IF;
                    END IF;
                    RETURN NEW;
                END $$ LANGUAGE plpgsql""")
            conn.execute("DROP TRIGGER IF EXISTS vs_test_refuse ON documents")
            conn.execute("CREATE TRIGGER vs_test_refuse BEFORE INSERT OR UPDATE ON documents "
                         "FOR EACH ROW EXECUTE FUNCTION vs_test_refuse()")
        armed.append(document_id)

    yield arm
    with services.pool.connection() as conn:
        conn.execute("DROP TRIGGER IF EXISTS vs_test_refuse ON documents")
        conn.execute("DROP FUNCTION IF EXISTS vs_test_refuse()")
        conn.execute("DROP SEQUENCE IF EXISTS vs_test_poison")


class TestTextTheStoresCannotHold:
    def test_nul_in_a_jira_summary_is_cleaned_and_its_page_is_indexed(self, infra, sims, services,
                                                                      worker_factory):
        """A summary with U+0000 used to fail its whole listing page (psycopg DataError on the
        title, UntranslatableCharacter in jsonb); now it is stripped and all 50 are indexed."""
        settings = jira_settings(infra, sims, MAX_RETRIES="0")
        key, ids = new_project(sims, 50, {7: {"summary": "Broken\u0000summary",
                                              "description": "Text with a NUL\u0000 inside",
                                              "labels": ["bad\u0000label"]}})
        refs = listing_page(sims, settings, key)
        assert len(refs) == 50 and queue.enqueue(services.broker, refs) == 1  # one page, one job
        worker_factory(settings).drain()
        done = indexed(services)
        assert set(done) == {f"jira:{i}" for i in ids}
        assert state.failed_documents(services.pool) == []
        assert queue.dead_letters(services.broker) == []
        [hit] = [m for m in services.index.fetch([f"jira:{ids[7]}#0"]).values()]
        assert hit["title"] == f"{key}-8: Brokensummary" and "\x00" not in hit["text"]
        assert hit["labels"] == ["badlabel"]

    def test_an_id_postgres_cannot_store_fails_validation_alone(self, services, worker):
        """A document whose identity itself is unstorable is recorded failed at 'validate' (under
        its escaped id); the other documents of the job are indexed."""
        refs = [Ref("api", f"ok{n}", document=Document("api", f"ok{n}", "", f"Ok {n}", "fine text", 1.0))
                for n in range(5)]
        refs.insert(2, Ref("api", "bad\x00id", document=Document("api", "bad\x00id", "", "Bad", "text", 1.0)))
        queue.enqueue(services.broker, refs)
        worker.drain()
        assert set(indexed(services, "api:")) == {f"api:ok{n}" for n in range(5)}
        [failed] = state.failed_documents(services.pool)
        assert failed["document_id"] == "api:bad\\u0000id" and failed["stage"] == "validate"
        assert "U+0000" in failed["error"] and "cannot store" in failed["error"]
        [letter] = queue.dead_letters(services.broker)
        assert [r["id"] for r in letter["refs"]] == ["bad\x00id"]


class TestPoisonDocuments:
    def test_a_document_the_embedder_refuses_fails_alone(self, infra, sims, services, worker_factory,
                                                        openai_faults):
        settings = jira_settings(infra, sims, **{k: v for k, v in sims.env().items() if k.startswith("OPENAI")},
                                 EMBEDDING_DIMENSIONS="256")
        httpx.put(openai_faults, json={"reject_marker": "POISON-PILL"}).raise_for_status()
        key, ids = new_project(sims, 50, {31: {"description": "This one carries a POISON-PILL."}})
        queue.enqueue(services.broker, listing_page(sims, settings, key))
        worker = worker_factory(settings)
        worker.drain()
        assert set(indexed(services)) == {f"jira:{i}" for i in ids} - {f"jira:{ids[31]}"}
        [failed] = state.failed_documents(services.pool)
        assert failed["document_id"] == f"jira:{ids[31]}" and failed["stage"] == "embed"
        assert "HTTP 400" in failed["error"] and "input" in failed["error"]
        # Permanent: straight to the dead letters, holding that one ref and the reason.
        [letter] = queue.dead_letters(services.broker)
        assert [r["id"] for r in letter["refs"]] == [ids[31]]
        assert "permanent" in letter["error"][0] and "HTTP 400" in letter["error"][0]
        # Finding the culprit took a bisection, not one request per document.
        assert worker.pipeline.embedder.requests <= 2 * 6 + 1
        with services.pool.connection() as conn:
            stats = conn.execute("SELECT synced, failed, failures_by_stage, last_error_stage "
                                 "FROM source_stats WHERE source = 'jira'").fetchone()
        assert stats == (49, 1, {"embed": 1}, "embed")

    def test_a_fetch_that_fails_for_good_fails_alone(self, infra, sims, services, worker_factory):
        """49 webhook-style refs (the worker fetches each) and one for a source no longer
        configured: 49 indexed, 1 recorded failed at 'fetch'."""
        settings = jira_settings(infra, sims)
        key, ids = new_project(sims, 49)
        refs = [Ref("jira", i, key) for i in ids]
        refs.insert(20, Ref("notion", "0f3a", "account"))
        queue.enqueue(services.broker, refs)
        worker_factory(settings).drain()
        assert set(indexed(services)) == {f"jira:{i}" for i in ids}
        [failed] = state.failed_documents(services.pool)
        assert (failed["document_id"], failed["stage"]) == ("notion:0f3a", "fetch")
        assert "not configured" in failed["error"]

    def test_a_document_postgres_refuses_to_record_fails_alone(self, infra, sims, services, worker_factory,
                                                              record_trigger):
        settings = jira_settings(infra, sims, MAX_RETRIES="0")
        key, ids = new_project(sims, 50)
        record_trigger(f"jira:{ids[12]}")
        queue.enqueue(services.broker, listing_page(sims, settings, key))
        worker_factory(settings).drain()
        assert set(indexed(services)) == {f"jira:{i}" for i in ids} - {f"jira:{ids[12]}"}
        [failed] = state.failed_documents(services.pool)
        assert failed["document_id"] == f"jira:{ids[12]}" and failed["stage"] == "record"
        assert "poison record refused" in failed["error"]
        [letter] = queue.dead_letters(services.broker)
        assert [r["id"] for r in letter["refs"]] == [ids[12]]
        assert "retries exhausted" in letter["error"][0] and "poison record refused" in letter["error"][0]


class TestOnlyFailedRefsAreRetried:
    def test_one_failure_in_100_refetches_one_document_not_100(self, infra, sims, services,
                                                              worker_factory, record_trigger):
        settings = jira_settings(infra, sims)
        key, ids = new_project(sims, 100)
        # Refused twice, then fine: once in the batch's one bookkeeping statement, once when
        # recorded alone (the worker's fallback, so its 99 neighbours are recorded); then retried.
        record_trigger(f"jira:{ids[57]}", times=2)
        jira = sims.sims["jira"]
        before = {i: jira.fetched[i] for i in ids}
        assert queue.enqueue(services.broker, [Ref("jira", i, key) for i in ids]) == 1
        worker_factory(settings).drain()
        assert set(indexed(services)) == {f"jira:{i}" for i in ids}
        fetched = {i: jira.fetched[i] - before[i] for i in ids}
        assert fetched.pop(ids[57]) == 2  # the failed one: its own retry
        assert set(fetched.values()) == {1}  # the 99 others: fetched once, never again
        assert state.failed_documents(services.pool) == []  # the retry cleared its error
        assert queue.dead_letters(services.broker) == []


class TestRetryAccounting:
    def test_waiting_for_an_embedder_outage_does_not_use_up_retries(self, infra, sims, services,
                                                                   worker_factory, openai_faults):
        """MAX_RETRIES=0: one counted failure would dead-letter the job. Twelve 503s with
        Retry-After (an outage the SDK's own retries do not outlast) are waited out instead."""
        settings = jira_settings(infra, sims, **{k: v for k, v in sims.env().items() if k.startswith("OPENAI")},
                                 EMBEDDING_DIMENSIONS="256", MAX_RETRIES="0")
        httpx.put(openai_faults, json={"status": 503, "times": 12, "retry_after": 0.05}).raise_for_status()
        key, ids = new_project(sims, 3)
        queue.enqueue(services.broker, listing_page(sims, settings, key))
        worker_factory(settings).drain(timeout=120)
        assert set(indexed(services)) == {f"jira:{i}" for i in ids}
        assert queue.dead_letters(services.broker) == []
        stats = httpx.get(f"{sims.url('openai')}/_sandbox/stats").json()
        assert stats["faulted"] == 12

    def test_the_dead_letter_keeps_the_real_last_error_not_the_wait(self, infra, sims, services,
                                                                  worker_factory, openai_faults,
                                                                  record_trigger):
        settings = jira_settings(infra, sims, **{k: v for k, v in sims.env().items() if k.startswith("OPENAI")},
                                 EMBEDDING_DIMENSIONS="256", MAX_RETRIES="1")
        key, ids = new_project(sims, 3)
        record_trigger(f"jira:{ids[1]}")  # always refused: a real failure every time
        httpx.put(openai_faults, json={"status": 503, "times": 6, "retry_after": 0.05}).raise_for_status()
        queue.enqueue(services.broker, listing_page(sims, settings, key))
        worker = worker_factory(settings)
        wait_for(lambda: queue.dead_letters(services.broker), timeout=120)
        worker.drain(timeout=60)
        assert set(indexed(services)) == {f"jira:{ids[0]}", f"jira:{ids[2]}"}
        [letter] = queue.dead_letters(services.broker)
        assert [r["id"] for r in letter["refs"]] == [ids[1]]
        assert letter["retries"] == 1  # two real failures; the outage before them did not count
        assert "poison record refused" in letter["error"][0]
        assert "rate limited" not in letter["error"][0] and "503" not in letter["error"][0]

    def test_an_outage_longer_than_max_wait_ends_in_a_dead_letter_named_an_outage(
            self, infra, sims, services, worker_factory, openai_faults):
        settings = jira_settings(infra, sims, **{k: v for k, v in sims.env().items() if k.startswith("OPENAI")},
                                 EMBEDDING_DIMENSIONS="256", MAX_WAIT="2s")
        httpx.put(openai_faults, json={"status": 503, "times": 100_000, "retry_after": 0.05}).raise_for_status()
        queue.enqueue(services.broker, [Ref("api", "w", document=Document("api", "w", "", "W", "words", 1.0))])
        worker = worker_factory(settings)
        [letter] = wait_for(lambda: queue.dead_letters(services.broker), timeout=120)
        httpx.put(openai_faults, json={}).raise_for_status()
        worker.drain(timeout=60)
        assert letter["retries"] == 0
        assert "gave up waiting" in letter["error"][0] and "outage" in letter["error"][0]
        assert "rate limited" not in letter["error"][0]
        [failed] = state.failed_documents(services.pool)
        assert failed["stage"] == "embed" and "503" in failed["error"]


class TestIndexStageFailures:
    @pytest.fixture(scope="class")
    def pinecone(self) -> Iterator[SandboxServer]:
        server = SandboxServer(create_simulators(["pinecone"], profile="empty")).start()
        yield server
        server.stop()

    def settings(self, infra: dict[str, str], pinecone: SandboxServer, **env: str) -> Any:
        return make_settings(infra, **pinecone.env(), EMBEDDING_DIMENSIONS="1536",
                             PINECONE_NAMESPACE=f"iso-{next(_keys)}", **env)

    @staticmethod
    def docs(names: list[str]) -> list[Ref]:
        return [Ref("api", n, document=Document("api", n, "", f"Doc {n}", f"words about {n}", 1.0)) for n in names]

    def test_an_id_pinecone_refuses_fails_at_index_alone(self, infra, pinecone, services, worker_factory):
        settings = self.settings(infra, pinecone, MAX_RETRIES="0")
        names = [f"p{n}" for n in range(9)] + ["café"]  # Pinecone ids are ASCII; Postgres's are not
        queue.enqueue(services.broker, self.docs(names))
        worker = worker_factory(settings)
        worker.drain()
        index = worker.pipeline.index
        assert all(index.list_ids(f"api:p{n}#") == [f"api:p{n}#0"] for n in range(9))
        [failed] = state.failed_documents(services.pool)
        assert (failed["document_id"], failed["stage"]) == ("api:café", "index")
        assert "ASCII" in failed["error"]
        assert indexed(services, "api:").keys() == {f"api:p{n}" for n in range(9)}

    def test_an_upsert_count_mismatch_is_recorded_per_document(self, infra, pinecone, services,
                                                              worker_factory):
        settings = self.settings(infra, pinecone, MAX_RETRIES="0")
        faults = f"{pinecone.url('pinecone')}/_sandbox/faults"
        httpx.put(faults, json={"upsert_drop": 1, "times": 1}).raise_for_status()
        queue.enqueue(services.broker, self.docs(["m0", "m1", "m2"]))
        worker = worker_factory(settings)
        worker.drain()
        # The batch came back one short; each document was then upserted on its own and checked.
        assert indexed(services, "api:").keys() == {"api:m0", "api:m1", "api:m2"}
        httpx.put(faults, json={"upsert_drop": 1, "times": 1000}).raise_for_status()
        try:
            queue.enqueue(services.broker, self.docs(["n0", "n1"]))
            worker.drain()
        finally:
            httpx.put(faults, json={}).raise_for_status()
        failed = {f["document_id"]: f for f in state.failed_documents(services.pool)}
        assert failed.keys() == {"api:n0", "api:n1"}
        assert all(f["stage"] == "index" and "stored 0 of 1" in f["error"] for f in failed.values())
        with services.pool.connection() as conn:
            by_stage = conn.execute("SELECT failures_by_stage FROM source_stats WHERE source = 'api'").fetchone()[0]
        assert by_stage == {"index": 2}
