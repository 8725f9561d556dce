"""Bulk loads into pgvector (issue 12): vectors travel in binary and come back exact; a load into
an empty or much smaller index defers the HNSW index, searches stay exact meanwhile, and the index
always comes back: when the load ends, or, after a crash mid-load, when its lease lapses (at the
latest on the next start). One builder at a time.

Real Postgres (the session's), small vectors (8 dimensions) in a table of their own.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import textwrap
from array import array
from collections.abc import Iterator

import pytest

from core import state
from core.index import pgvector
from core.index.base import Vector
from core.index.pgvector import PgvectorIndex
from tests.conftest import wait_for

DIMS = 8
TABLE = f"vectors_{DIMS}"


@pytest.fixture
def pool(infra: dict[str, str]) -> Iterator[object]:
    pool = state.open_pool(infra["DATABASE_URL"], max_size=4)
    with pool.connection() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute("CREATE TABLE IF NOT EXISTS vector_bulk_loads (index_table text, owner text, "
                     "listing_done boolean NOT NULL DEFAULT false, lease_until timestamptz NOT NULL, "
                     "started_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (index_table, owner))")
        conn.execute("DELETE FROM vector_bulk_loads WHERE index_table = %s", (TABLE,))
    yield pool
    pool.close()


@pytest.fixture
def index(pool: object) -> Iterator[PgvectorIndex]:
    idx = PgvectorIndex(pool, dimensions=DIMS)  # type: ignore[arg-type]
    yield idx
    idx.close()


def random_vectors(n: int, prefix: str, seed: int) -> list[Vector]:
    rng = random.Random(seed)
    return [Vector(f"{prefix}:{i}#0", [rng.uniform(-1, 1) for _ in range(DIMS)],
                   {"document_id": f"{prefix}:{i}", "source": "api", "n": i}) for i in range(n)]


def exact_top(vectors: list[Vector], query: list[float], k: int) -> list[str]:
    """The ``k`` nearest by cosine distance, computed here on the float4 values Postgres holds."""
    def cosine(a: list[float]) -> float:
        a32 = array("f", a)
        dot = sum(x * y for x, y in zip(a32, query, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a32)) * math.sqrt(sum(y * y for y in query)))
    return [v.id for v in sorted(vectors, key=lambda v: -cosine(v.values))[:k]]


def hnsw_present(index: PgvectorIndex) -> bool:
    return index._hnsw_present()


def test_binary_round_trip_is_exact(index: PgvectorIndex, pool: object) -> None:
    """Values go over the wire as float4 and come back bit for bit (the old text literal kept 7
    significant digits); metadata survives as JSON; two vectors with one id in a batch: the
    last wins, and the count check still holds."""
    values = [1 / 3, -2.718281828459045, 1e-30, 3.4e38, -0.0, 123456.789, 0.1, 1.0]
    meta = {"document_id": "doc", "title": "caf\u00e9 \u2603", "n": 7, "tags": ["a", "b"]}
    stored = index.upsert([Vector("doc#0", [0.5] * DIMS, {"document_id": "doc"}),
                           Vector("doc#0", values, meta)])
    assert stored == 1
    with pool.connection() as conn:  # type: ignore[attr-defined]
        got = conn.execute(f"SELECT embedding::real[], metadata FROM {TABLE} WHERE id = 'doc#0'").fetchone()
    assert array("f", got[0]).tobytes() == array("f", values).tobytes()
    assert got[1] == meta
    assert index.fetch(["doc#0"]) == {"doc#0": meta}


def test_search_stays_exact_while_the_index_is_deferred(index: PgvectorIndex) -> None:
    """A load into an (almost) empty index drops the HNSW index; searches meanwhile scan exactly
    and find every vector written so far; when the load ends the index comes back by itself and
    searches still agree."""
    before = random_vectors(50, "old", seed=1)
    index.upsert(before)
    assert hnsw_present(index)

    # When: a backfill starts loading (50 vectors < BULK_EMPTY: defer at once)
    assert index.bulk_progress("backfill:1", 100)
    assert not hnsw_present(index)
    loaded = random_vectors(400, "new", seed=2)
    for start in range(0, len(loaded), 100):
        index.upsert(loaded[start : start + 100])
        index.bulk_progress("backfill:1", 100 + start)  # renews the lease, stays deferred
        assert not hnsw_present(index)

        # Then: every search is exact over what is there so far
        everything = before + loaded[: start + 100]
        query = [random.Random(start).uniform(-1, 1) for _ in range(DIMS)]
        assert [m.id for m in index.query(query, 10)] == exact_top(everything, query, 10)

    # When: the listing ends and the writes stop
    index.bulk_finished("backfill:1")

    # Then: the index is rebuilt (by this process's watcher) and searches agree with it
    wait_for(lambda: hnsw_present(index), timeout=60)
    query = [0.3] * DIMS
    assert [m.id for m in index.query(query, 10)] == exact_top(before + loaded, query, 10)


def test_a_small_load_into_a_large_index_keeps_the_index(index: PgvectorIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backfill that adds little to what is indexed keeps HNSW (rebuilding would cost more);
    one that grows past BULK_RATIO times the index defers it."""
    monkeypatch.setattr(pgvector, "BULK_EMPTY", 100)
    index.upsert(random_vectors(200, "big", seed=3))
    assert not index.bulk_progress("backfill:2", 100)
    assert not index.bulk_progress("backfill:2", 400)
    assert hnsw_present(index)
    assert index.bulk_progress("backfill:2", 401)
    assert not hnsw_present(index)
    index.bulk_finished("backfill:2")
    wait_for(lambda: hnsw_present(index), timeout=60)


CRASHING_LOADER = textwrap.dedent("""
    import sys, time
    from core import state
    from core.index import pgvector
    from core.index.base import Vector
    pgvector.LEASE_S = float(sys.argv[2])
    pool = state.open_pool(sys.argv[1], max_size=2)
    index = pgvector.PgvectorIndex(pool, dimensions=%d)
    assert index.bulk_progress("backfill:crash", 1000)
    index.upsert([Vector(f"crash:{i}#0", [float(i + 1)] * %d, {"document_id": f"crash:{i}"}) for i in range(50)])
    print("loading", flush=True)
    time.sleep(600)
""" % (DIMS, DIMS))


def test_a_crash_mid_load_never_leaves_the_index_missing(pool: object, infra: dict[str, str]) -> None:
    """A loader killed mid-load (SIGKILL: no goodbye) stops renewing its lease; while the lease
    is live a starting process leaves the index deferred, and once it lapses the index is rebuilt
    without anyone finishing the load."""
    lease_s = 600.0
    # Given: another process deferred the index for its load and is killed mid-load
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_LOADER, infra["DATABASE_URL"], str(lease_s)],
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "loading"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    # When: the next process starts while the lease is still live (it is re-read as live here,
    # not assumed: the lease is pushed on so a slow machine cannot let it lapse first)
    with pool.connection() as conn:  # type: ignore[attr-defined]
        conn.execute("UPDATE vector_bulk_loads SET lease_until = now() + interval '10 minutes' "
                     "WHERE index_table = %s", (TABLE,))
    restarted = PgvectorIndex(pool, dimensions=DIMS)  # type: ignore[arg-type]
    try:
        # Then: it does not build behind the live load's back; search answers meanwhile
        assert not restarted.settle()
        assert not hnsw_present(restarted)
        assert len(restarted.query([1.0] * DIMS, 3)) == 3
        # When: the lease lapses (its time is up: no one renews it)
        with pool.connection() as conn:  # type: ignore[attr-defined]
            conn.execute("UPDATE vector_bulk_loads SET lease_until = now() WHERE index_table = %s", (TABLE,))
        # Then: the restarted process's watcher rebuilds the index
        wait_for(lambda: hnsw_present(restarted), timeout=60)
        with pool.connection() as conn:  # type: ignore[attr-defined]
            left = conn.execute("SELECT count(*) FROM vector_bulk_loads WHERE index_table = %s",
                                (TABLE,)).fetchone()[0]
        assert left == 0
        assert restarted.count() == 50
    finally:
        restarted.close()


def test_an_invalid_index_left_by_a_dead_build_is_rebuilt(index: PgvectorIndex, pool: object) -> None:
    """``CREATE INDEX CONCURRENTLY`` killed midway leaves an INVALID index that searches ignore;
    it is not taken for a built one."""
    index.upsert(random_vectors(20, "inv", seed=4))
    with pool.connection() as conn:  # type: ignore[attr-defined]
        conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(%s)",
                     (f"{TABLE}_hnsw",))
    assert not hnsw_present(index)
    assert index.settle()
    assert hnsw_present(index)


def test_one_builder_at_a_time(index: PgvectorIndex, pool: object) -> None:
    """While another process holds the build lock, settle() neither builds nor waits."""
    index.upsert(random_vectors(20, "one", seed=5))
    index.bulk_progress("backfill:3", 100)
    with pool.connection() as conn:  # type: ignore[attr-defined]
        conn.execute("DELETE FROM vector_bulk_loads WHERE index_table = %s", (TABLE,))
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"{TABLE}:build",))
        try:
            assert not index.settle()
            assert not hnsw_present(index)
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"{TABLE}:build",))
    wait_for(lambda: hnsw_present(index), timeout=60)


def test_bookkeeping_records_a_batch_in_one_call(services) -> None:  # type: ignore[no-untyped-def]
    """record_indexed_many / record_deleted_many write every row of a batch with its own values,
    clear a document's earlier failure, and a deletion keeps the newest deletion read."""
    pool = services.pool
    state.record_document_error(pool, "api:b1", "api", "boom", stage="embed")
    rows = [state.Indexed(f"api:b{i}", "api", "s", f"t{i}", f"u{i}", f"h{i}", f"m{i}", 100.0 + i, i + 1,
                          1000.0 + i) for i in range(1, 6)]
    state.record_indexed_many(pool, rows)
    got = state.get_documents(pool, [r.document_id for r in rows])
    assert {d: (r.content_hash, r.chunk_count, r.source_updated_at, r.seen_at) for d, r in got.items()} == {
        f"api:b{i}": (f"h{i}", i + 1, 100.0 + i, 1000.0 + i) for i in range(1, 6)}
    assert state.failed_documents(pool, "api") == []

    state.record_deleted_many(pool, [("api:b1", "api", 2000.0), ("api:b9", "api", None)])
    got = state.get_documents(pool, ["api:b1", "api:b2", "api:b9"])
    assert got["api:b1"].deleted_at is not None and got["api:b1"].chunk_count == 0
    assert got["api:b1"].deleted_seen_at == 2000.0
    assert got["api:b9"].deleted_at is not None
    assert got["api:b2"].deleted_at is None


def test_a_resumed_load_takes_its_lease_back(pool: object, index: PgvectorIndex,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A backfill resumed by another process (same run, same owner) keeps the index deferred
    instead of paying per row for the rest of the load while its old lease runs out."""
    monkeypatch.setattr(pgvector, "BULK_EMPTY", 10)
    index.upsert(random_vectors(30, "res", seed=6))
    assert index.bulk_progress("backfill:7", 100)  # 100 > 2 x 30: deferred
    resumed = PgvectorIndex(pool, dimensions=DIMS)  # type: ignore[arg-type]
    try:
        assert resumed.bulk_progress("backfill:7", 1)  # 1 <= 2 x 30: only the lease defers
        assert not hnsw_present(resumed)
        resumed.bulk_finished("backfill:7")
        wait_for(lambda: hnsw_present(resumed), timeout=60)
    finally:
        resumed.close()


def test_a_backfill_into_an_empty_index_defers_it_and_brings_it_back(
        services, infra, worker_factory, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The real path: a Jira backfill (the simulator's small profile) into an empty index drops
    the HNSW index while it lists; the worker indexes the queued pages without it; once the
    writes stop the index is back, and every listed document is searchable by its own vector."""
    from core.runtime import SourceSet
    from reconciler.backfill import Backfill, create_run, owner_name
    from tests.conftest import FAST_BUDGETS, make_settings, run, running_sandbox

    # A quiet period longer than any test (a busy machine can stall for seconds between the
    # listing's end and the first check): the lease is lapsed by hand once the worker is done.
    monkeypatch.setattr(pgvector, "QUIET_S", 3600.0)
    with running_sandbox("jira", seed=5) as sandbox:
        settings = make_settings(infra, **sandbox.env(), **FAST_BUDGETS)
        run_id = create_run(services.pool, "jira", [], None, owner=owner_name())

        async def listing() -> dict:  # type: ignore[type-arg]
            sources = SourceSet(settings, services.pool)
            try:
                return await Backfill(services, sources, run_id, owner_name()).run()
            finally:
                await sources.aclose()

        # When: the listing runs with no worker yet (everything waits in the queue)
        listed = run(listing())["listed"]
        assert listed > 0
        # Then: the index is deferred, its lease now only waiting for the writes to stop
        assert not hnsw_present(services.index)
        with services.pool.connection() as conn:
            assert conn.execute("SELECT listing_done FROM vector_bulk_loads WHERE owner = %s",
                                (f"backfill:{run_id}",)).fetchone() == (True,)

        # When: the worker indexes the queue
        worker_factory(settings).drain(timeout=120)

        assert not hnsw_present(services.index)  # the quiet period has not run out

        # When: the writes have stopped and the quiet period runs out
        with services.pool.connection() as conn:
            conn.execute("UPDATE vector_bulk_loads SET lease_until = now() - interval '1 second' "
                         "WHERE owner = %s", (f"backfill:{run_id}",))

        # Then: the index comes back, and it finds each document by its own vector
        wait_for(lambda: hnsw_present(services.index), timeout=90)
        assert services.index.count() >= listed
        ids = services.index.list_ids("jira:")[:5]
        table = services.index.table
        with services.pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")  # through the HNSW index, not a scan
            plan = "\n".join(r[0] for r in conn.execute(
                f"EXPLAIN SELECT id FROM {table} ORDER BY embedding <=> "
                f"(SELECT embedding FROM {table} LIMIT 1) LIMIT 1").fetchall())
            assert f"{table}_hnsw" in plan
            for vid in ids:
                # The nearest is the vector itself (or an identical twin): distance 0.
                [(distance,)] = conn.execute(
                    f"SELECT embedding <=> q FROM {table}, "
                    f"(SELECT embedding AS q FROM {table} WHERE id = %s) AS s "
                    f"ORDER BY embedding <=> q LIMIT 1", (vid,)).fetchall()
                assert distance < 1e-6
