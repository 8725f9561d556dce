"""filtered-search: pgvector queries under filters of every selectivity, at 100k vectors.

100,000 vectors of 1,536 dimensions (the product's default size), clustered like embeddings are
(200 random centres, each vector a centre plus two noise vectors from pools of 1,000), added
inside Postgres and loaded
before the HNSW index is built (loading is not what this measures). Their metadata is as the
product writes it, with a chunk text of 1,200 characters, and gives
filters matching 50 % (``source=jira``), 10 % (``slack``), 1 % (``github``) and 0.1 %
(``notion``) of the rows, scope filters matching 1 % and 3 %, and a permission filter: 1 % of the rows
are restricted, a tenth of those to the searching user, so ``public + restricted to me`` over
``source=github`` keeps about 0.9 %.

Each filter: 100 queries (vectors drawn the same way) through ``PgvectorIndex.query`` with
``top_k`` 40 (what ``core.search`` asks for top_k 10), one at a time: p50/p99 latency, the plan
taken, and recall against the exact answer (every matching row ranked, no index) on 20 of them;
rows short of min(top_k, matches) are counted as missing. The previous plan (HNSW with
ef_search 160, post-filtered, then an exact scan of the whole table when short, as before issue
12) runs on 20 queries of each filter, interleaved with the new one, for comparison. ``--quick``: 10,000 vectors, 30 queries.
"""

from __future__ import annotations

import random
import time
from typing import Any

from benchmarks.harness import Infra, latency_summary
from core import state
from core.access import AccessView, access_filter, combine
from core.index import pgvector
from core.index.pgvector import PgvectorIndex, _where, vector_literal

DIM = 1536
CENTRES = 200
#: Two pools of noise vectors (standard deviation NOISE per dimension) added to a centre.
NOISES = 1000
NOISE = 0.5
TOP_K = 40
USER = "me@example.com"

#: Source by row number modulo 1000: notion 1 (0.1 %), github 10 (1 %), slack 100 (10 %),
#: jira 500 (50 %), tempo the rest.
SOURCE_SQL = """CASE WHEN i % 1000 = 0 THEN 'notion' WHEN i % 1000 <= 10 THEN 'github'
                     WHEN i % 1000 <= 110 THEN 'slack' WHEN i % 1000 <= 610 THEN 'jira'
                     ELSE 'tempo' END"""

FILTERS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "source 50% (jira)": {"source": {"$in": ["jira"]}},
    "source 10% (slack)": {"source": {"$in": ["slack"]}},
    "source 1% (github)": {"source": {"$in": ["github"]}},
    "source 0.1% (notion)": {"source": {"$in": ["notion"]}},
    "scope 1% (P7)": {"scope": {"$in": ["P7"]}},
    "scope 3% (P1-P3)": {"scope": {"$in": ["P1", "P2", "P3"]}},
    "public + mine (99%)": access_filter(AccessView(principal=USER)),
    "public + mine, source 1%": combine({"source": {"$in": ["github"]}}, access_filter(AccessView(principal=USER))),
}


def centres(rng: random.Random) -> list[list[float]]:
    return [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(CENTRES)]


def query_vector(rng: random.Random, middle: list[list[float]]) -> list[float]:
    centre = rng.choice(middle)
    return [c + rng.gauss(0, NOISE * 1.41) for c in centre]


def load(pool: Any, index: PgvectorIndex, rows: int, middle: list[list[float]],
         rng: random.Random) -> dict[str, float]:
    table = index.table
    timings: dict[str, float] = {}
    noise = [[[rng.gauss(0, NOISE) for _ in range(DIM)] for _ in range(NOISES)] for _ in range(2)]
    with pool.connection() as conn:
        conn.execute(f"TRUNCATE {table}")
        conn.execute(f"DROP INDEX IF EXISTS {table}_hnsw")
        conn.execute("DROP TABLE IF EXISTS bench_parts")
        conn.execute(f"CREATE UNLOGGED TABLE bench_parts (kind int, n int, v vector({DIM}), PRIMARY KEY (kind, n))")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO bench_parts VALUES (%s, %s, %s::vector)",
                            [(kind, n, vector_literal(v))
                             for kind, vectors in enumerate([middle, *noise]) for n, v in enumerate(vectors)])
        started = time.monotonic()
        # No parameters, so psycopg leaves the SQL's % alone. One row per i: a random centre
        # plus two noise vectors (one by i, one random) from pools, added inside Postgres;
        # metadata as the product writes it (the source, scope and access fields).
        conn.execute(
            f"""INSERT INTO {table} (id, document_id, embedding, metadata)
                SELECT 'b' || i || '#0', 'b' || i, c.v + n1.v + n2.v,
                       jsonb_build_object(
                           'source', {SOURCE_SQL}, 'scope', 'P' || (i % 100),
                           'document_id', 'b' || i, 'title', 'document ' || i,
                           'text', (SELECT string_agg(md5(i::text || '/' || j::text), ' ')
                                    FROM generate_series(1, 36) AS j),
                           'access_type', CASE WHEN i % 100 = 50 THEN 'restricted' ELSE 'public' END,
                           'access_list', CASE WHEN i % 100 = 50 THEN
                                jsonb_build_array(CASE WHEN i % 1000 = 50 THEN '{USER}' ELSE 'other@example.com' END)
                                ELSE '[]'::jsonb END)
                FROM (SELECT i, floor(random() * {CENTRES})::int AS ci, i % {NOISES} AS n1i,
                             floor(random() * {NOISES})::int AS n2i
                      FROM generate_series(1, {int(rows)}) AS i) AS g
                JOIN bench_parts c ON c.kind = 0 AND c.n = g.ci
                JOIN bench_parts n1 ON n1.kind = 1 AND n1.n = g.n1i
                JOIN bench_parts n2 ON n2.kind = 2 AND n2.n = g.n2i"""
        )
        timings["load_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        conn.execute("SET maintenance_work_mem = '2GB'")
        conn.execute(f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops)")
        timings["hnsw_build_s"] = round(time.monotonic() - started, 1)
        conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute("DROP TABLE bench_parts")
    return timings


def exact_ids(pool: Any, table: str, vector: list[float], flt: dict[str, Any] | None, k: int) -> list[str]:
    where, params = _where(flt or {})
    literal = vector_literal(vector)
    with pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        rows = conn.execute(f"SELECT id FROM {table} {where} ORDER BY embedding <=> %s::vector LIMIT %s",
                            (*params, literal, k)).fetchall()
    return [r[0] for r in rows]


def previous_plan(pool: Any, table: str, vector: list[float], flt: dict[str, Any] | None, k: int) -> int:
    """The plan before issue 12: HNSW post-filtered over JSONB, then the whole table when short."""
    where, params = _where(flt or {})
    literal = vector_literal(vector)
    sql = f"""SELECT id, 1 - (embedding <=> %s::vector) AS score, metadata FROM {table} {where}
              ORDER BY embedding <=> %s::vector LIMIT %s"""
    args = (literal, *params, literal, k)
    with pool.connection() as conn, conn.transaction():
        conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(1000, k * 4))}")
        rows = conn.execute(sql, args).fetchall()
        if where and len(rows) < k:
            conn.execute("SET LOCAL enable_indexscan = off")
            rows = conn.execute(sql, args).fetchall()
    return len(rows)


def run(infra: Infra, quick: bool) -> dict[str, Any]:
    rows, n_queries, n_recall, n_previous = (10_000, 30, 10, 10) if quick else (100_000, 100, 20, 20)
    rng = random.Random(12)
    middle = centres(rng)
    pool = state.open_pool(infra.urls["DATABASE_URL"], max_size=2)
    index = PgvectorIndex(pool, dimensions=DIM)
    figures: dict[str, Any] = {}
    try:
        figures |= load(pool, index, rows, middle, rng)
        figures["vectors"] = index.count()
        figures["pgvector_version"] = index.pgvector_version
        figures["iterative_scan"] = index.iterative_scan
        figures["exact_rows_threshold"] = pgvector.EXACT_ROWS
        for name, flt in FILTERS.items():
            where, params = _where(flt or {})
            with pool.connection() as conn:
                matching = conn.execute(f"SELECT count(*) FROM {index.table} {where}", params).fetchone()[0]
            qrng = random.Random(hash(name) % 10_000)
            vectors = [query_vector(qrng, middle) for _ in range(n_queries)]
            ms: list[float] = []
            plans: dict[str, int] = {}
            recalls: list[float] = []
            missing = 0
            before: list[float] = []
            for n, vector in enumerate(vectors):
                if n < n_previous:
                    # Interleaved with the new plan, so both see the same machine load.
                    t0 = time.perf_counter()
                    previous_plan(pool, index.table, vector, flt, TOP_K)
                    before.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                got = index.query(vector, TOP_K, flt)
                ms.append((time.perf_counter() - t0) * 1000)
                plans[index.last_plan] = plans.get(index.last_plan, 0) + 1
                missing += max(0, min(TOP_K, matching) - len(got))
                if n < n_recall:
                    want = exact_ids(pool, index.table, vector, flt, TOP_K)
                    recalls.append(len({m.id for m in got} & set(want)) / len(want) if want else 1.0)
            summary = latency_summary(ms)
            prev = latency_summary(before)
            figures[name] = {
                "matching_rows": matching,
                "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"], "max_ms": summary["max_ms"],
                "recall_vs_exact": round(sum(recalls) / len(recalls), 4),
                "min_recall": round(min(recalls), 4),
                "missing_rows": missing,
                "plans": plans,
                "previous_plan_p50_ms": prev["p50_ms"], "previous_plan_p99_ms": prev["p99_ms"],
                "p99_target_50ms": "met" if summary["p99_ms"] <= 50 else "NOT met",
            }
    finally:
        with pool.connection() as conn:
            conn.execute(f"TRUNCATE {index.table}")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {index.table}_hnsw ON {index.table} "
                         "USING hnsw (embedding vector_cosine_ops)")
        pool.close()
    return {"params": {"vectors": rows, "dimensions": DIM, "top_k": TOP_K, "queries_per_filter": n_queries,
                       "recall_queries_per_filter": n_recall, "previous_plan_queries": n_previous},
            "figures": figures}
