"""The pgvector index, in the same Postgres as the state: HNSW, cosine distance.

One table per dimension (``vectors_1536``), created on first use, so switching embedders
with different dimensions never mixes vectors. Metadata is JSONB; filters use containment,
except on the fields every search filters by (source, scope, access_type, access_list) and the
identifiers it looks up (key, repo), which are generated ``text[]`` columns under one GIN index
(migration 0011).

A filtered query is planned (:meth:`PgvectorIndex.query`): a selective filter is answered by an
exact scan of just the rows it matches, found through the GIN index (cost proportional to them);
a broad one by HNSW with a raised ``ef_search`` (and pgvector >= 0.8's iterative scan when the
server has it); a short HNSW answer always falls back to the exact scan, so a short answer means
there is no more, never that the index gave up. docs/architecture.md has the figures.

Writes send vectors in pgvector's binary form (the ``pgvector`` adapter), a whole batch in one
``INSERT ... SELECT FROM unnest(...)`` statement, at most :data:`WRITERS` at a time per process.

**Bulk loads defer the HNSW index.** Inserting into an HNSW graph costs far more than the insert
itself (15.8 ms a vector at 7,500 vectors of 1,536 dimensions, on 2 cores), while building the
graph once over the loaded rows costs a fraction of that. A backfill into an empty or much smaller
index (:meth:`PgvectorIndex.bulk_progress`) drops the HNSW index and records a *bulk load* row
with a lease in ``vector_bulk_loads``; searches meanwhile scan exactly (correct, only slower).
The backfill renews the lease with every listing page and shortens it to :data:`QUIET_S` when its
listing ends; every write while the row exists pushes that short lease on, so the tail of the
queue is still written without the index. Once no lease is live, any process holding the index
rebuilds it (``CREATE INDEX CONCURRENTLY``: writes and searches go on meanwhile), one process at a
time (an advisory lock). A crashed backfill stops renewing: its lease lapses and the index comes
back, at the latest when the next process starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Collection, Mapping
from typing import Any

try:
    from pgvector import Vector as Binary  # pgvector >= 0.4
except ImportError:  # 0.3.x: what langchain-postgres allows (the bench venv, constraints-bench.txt)
    from pgvector.utils import Vector as Binary
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from core import metrics
from core.errors import UpsertMismatch
from core.index.base import Match, Vector

log = logging.getLogger("vector_sync.index")

#: Rows per INSERT statement: large enough to amortise round trips, small enough for memory.
BATCH = 500

#: Write statements in flight at once per process, so writers never take every connection of the
#: pool (8) from the reads and bookkeeping that share it. Not tighter: on 2 cores a probe of 2,400
#: HNSW inserts from 8 threads took as long with 2 writers as with 8 (8.9 ms a vector each), or
#: longer (16.4 vs 9.0) when other processes competed for the CPU.
WRITERS = 2 * max(2, os.cpu_count() or 2)

#: A filter matching at most this many rows is answered by an exact scan of those rows (found
#: through the filter columns' GIN index) instead of HNSW. Each row costs its 6 KB vector read
#: from TOAST and a distance: about 10-30 us on the 2-core machine (idle to busy), so 1,500 rows
#: stay well inside the 50 ms budget, while above it HNSW at 100k vectors finds enough matches
#: within its candidates (docs/benchmarks.md, "filtered-search").
EXACT_ROWS = 1500

#: pgvector >= 0.8's iterative index scan mode (``hnsw.iterative_scan``) for filtered HNSW:
#: relaxed (then re-sorted here), pgvector's advice for recall; strict_order measured lower
#: recall in the 1.5-6 % band (0.86 against 0.91 at 100k vectors, docs/benchmarks.md).
ITERATIVE_SCAN = "relaxed_order"

#: Metadata fields with a generated ``text[]`` column (migration 0011: their string values):
#: what every search filters by, and the identifiers hybrid search looks up exactly
#: (``core.search.identifier_filters``: a Jira issue key, a GitHub repo).
FILTER_COLUMNS = {"source": "filter_source", "scope": "filter_scope",
                  "access_type": "filter_access_type", "access_list": "filter_access_list",
                  "key": "filter_key", "repo": "filter_repo"}

#: Reciprocal-rank fusion constant (Cormack et al. 2009): damps the weight of the very top ranks.
RRF_K = 60

#: A bulk load defers the HNSW index at once when the index holds fewer vectors than this
#: (rebuilding them costs next to nothing) ...
BULK_EMPTY = 1_000
#: ... and otherwise once it has listed this many times the vectors the index held at its start.
BULK_RATIO = 2
#: Seconds a bulk load's lease lasts unless renewed (every listing page renews it).
LEASE_S = 300.0
#: Seconds without a write, once the listing is over, before the index is rebuilt.
QUIET_S = 1.0
#: Seconds between a process's checks on a deferred index.
POLL_S = 0.25
#: Memory for building the HNSW graph: the build is several times faster when the graph fits.
BUILD_MEMORY = "512MB"


def vector_literal(values: list[float]) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in values) + "]"


class PgvectorIndex:
    def __init__(self, pool: ConnectionPool, dimensions: int = 1536) -> None:
        self.pool = pool
        self.dimensions = dimensions
        self.table = f"vectors_{dimensions}"
        self.writes = 0
        self.hnsw = f"{self.table}_hnsw"
        self._writers = threading.BoundedSemaphore(WRITERS)
        #: Bulk loads this process runs: owner → vectors in the index when it began (None once
        #: it deferred the HNSW index).
        self._bulk: dict[str, int | None] = {}
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watch_lock = threading.Lock()
        self._vector_type: TypeInfo | None = None
        self._ensure_table()
        self._ensure_filter_columns()  # before any build: adding them rewrites the table
        if not self._hnsw_present():
            self._watch()  # deferred by a bulk load, or left missing by a crash: see to it

    def _ready(self) -> bool:
        """Whether the table and everything ``_ensure_table`` creates are there already. Then
        no DDL runs: even ``ALTER TABLE ... IF NOT EXISTS`` takes the table's ACCESS EXCLUSIVE
        lock first, so a process starting while another rebuilds the HNSW index (``CREATE
        INDEX CONCURRENTLY``) would queue behind the build, stall every search and write queued
        behind it, and deadlock with the build (which waits for the starting transaction)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                """SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL
                          AND to_regclass(%s) IS NOT NULL AND to_regclass('vector_bulk_loads') IS NOT NULL
                          AND EXISTS (SELECT 1 FROM information_schema.columns
                                      WHERE table_schema = current_schema() AND table_name = %s
                                        AND column_name = 'tsv')""",
                (self.table, f"{self.table}_doc", f"{self.table}_tsv", self.table),
            ).fetchone()
            ready = bool(row and row[0])
            if ready and conn.execute("SELECT to_regclass(%s) IS NULL", (self.hnsw,)).fetchone()[0]:
                # No HNSW index (and so no build under way): an empty table gets it the cheap
                # way, in _ensure_table; one with rows is left to the watcher.
                ready = not self._table_empty(conn)
            if ready:
                self._vector_type = TypeInfo.fetch(conn, "vector")
        return ready

    def _ensure_table(self) -> None:
        if self._ready():
            return
        with self.pool.connection() as conn, conn.transaction():
            # Several processes may start at once: serialise the DDL (the lock lasts until the
            # transaction ends, so it must be a real transaction, not autocommit).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.table} (
                    id text PRIMARY KEY,
                    document_id text NOT NULL,
                    embedding vector({self.dimensions}) NOT NULL,
                    metadata jsonb NOT NULL DEFAULT '{{}}'
                )"""
            )
            conn.execute(
                """CREATE TABLE IF NOT EXISTS vector_bulk_loads (
                    index_table  text NOT NULL,
                    owner        text NOT NULL,
                    listing_done boolean NOT NULL DEFAULT false,
                    lease_until  timestamptz NOT NULL,
                    started_at   timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (index_table, owner))"""
            )
            if self._table_empty(conn) and not self._leased(conn):
                # A new (or emptied) table: the index costs nothing to create here. A table with
                # rows and no index is rebuilt by the watcher, without blocking start-up.
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {self.hnsw} ON {self.table} "
                    "USING hnsw (embedding vector_cosine_ops)"
                )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_doc ON {self.table} (document_id)"
            )
            # Full-text search over the title and chunk text, for hybrid retrieval: the
            # 'simple' configuration keeps identifiers (SUBS-652, acme/api) and names as typed,
            # without stemming or stop words.
            conn.execute(
                f"""ALTER TABLE {self.table} ADD COLUMN IF NOT EXISTS tsv tsvector
                    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig,
                        coalesce(metadata ->> 'title', '') || ' ' || coalesce(metadata ->> 'text', '')))
                    STORED"""
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_tsv ON {self.table} USING gin (tsv)"
            )
            self._vector_type = TypeInfo.fetch(conn, "vector")

    def _table_empty(self, conn: Any) -> bool:
        return conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {self.table})").fetchone()[0]

    def _leased(self, conn: Any) -> bool:
        """Whether a bulk load holds a live lease on this table (the HNSW index stays away)."""
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM vector_bulk_loads WHERE index_table = %s AND lease_until > now())",
            (self.table,),
        ).fetchone()
        return bool(row[0])

    @metrics.index_call("pgvector", "upsert")
    def upsert(self, vectors: list[Vector]) -> int:
        stored = 0
        for start in range(0, len(vectors), BATCH):
            # The last of two vectors with one id wins, as with one INSERT each.
            batch = list({v.id: v for v in vectors[start : start + BATCH]}.values())
            with self._writers, self.pool.connection() as conn:
                with conn.cursor() as cur:
                    assert self._vector_type is not None
                    register_vector_info(cur, self._vector_type)  # this cursor only
                    cur.execute(
                        f"""INSERT INTO {self.table} (id, document_id, embedding, metadata)
                            SELECT * FROM unnest(%b::text[], %b::text[], %b::vector[], %b::jsonb[])
                            ON CONFLICT (id) DO UPDATE
                            SET document_id = excluded.document_id,
                                embedding = excluded.embedding,
                                metadata = excluded.metadata""",
                        (
                            [v.id for v in batch],
                            [str(v.metadata.get("document_id", v.id.rsplit("#", 1)[0])) for v in batch],
                            [Binary(list(v.values)) for v in batch],
                            [Jsonb(dict(v.metadata)) for v in batch],
                        ),
                    )
                    got = cur.rowcount
                    # A write during a bulk load keeps the index deferred a little longer (the
                    # tail of the load); the answer also tells a process that one is under way.
                    # A statement of its own (autocommit): the row is locked only while it runs.
                    bulk = cur.execute(
                        """UPDATE vector_bulk_loads SET lease_until = CASE WHEN listing_done
                               THEN greatest(lease_until, now() + make_interval(secs => %s))
                               ELSE lease_until END
                           WHERE index_table = %s""",
                        (QUIET_S, self.table),
                    ).rowcount
            self.writes += 1
            if bulk:
                self._watch()
            if got != len(batch):
                raise UpsertMismatch(f"pgvector stored {got} of {len(batch)} vectors")
            stored += got
        return stored

    @metrics.index_call("pgvector", "update_metadata")
    def update_metadata(self, metadata: Mapping[str, Mapping[str, Any]]) -> None:
        if not metadata:
            return
        with self.pool.connection() as conn:
            with conn.cursor() as cur:
                cur.executemany(
                    f"UPDATE {self.table} SET metadata = %s::jsonb WHERE id = %s",
                    [(json.dumps(dict(m)), vid) for vid, m in metadata.items()],
                )
        self.writes += 1

    @metrics.index_call("pgvector", "delete")
    def delete(self, ids: list[str]) -> None:
        if not ids:
            return
        with self.pool.connection() as conn:
            conn.execute(f"DELETE FROM {self.table} WHERE id = ANY(%s)", (list(ids),))
        self.writes += 1

    @metrics.index_call("pgvector", "delete_documents")
    def delete_documents(self, document_ids: list[str], keep: Collection[str] = ()) -> int:
        if not document_ids:
            return 0
        with self.pool.connection() as conn:
            cur = conn.execute(
                f"DELETE FROM {self.table} WHERE document_id = ANY(%s) AND NOT (id = ANY(%s))",
                (list(document_ids), list(keep)),
            )
            deleted = cur.rowcount
        self.writes += 1
        return deleted

    @metrics.index_call("pgvector", "fetch")
    def fetch(self, ids: list[str]) -> dict[str, Mapping[str, Any]]:
        if not ids:
            return {}
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT id, metadata FROM {self.table} WHERE id = ANY(%s)", (list(ids),)
            ).fetchall()
        return {row[0]: row[1] for row in rows}

    # --- search ---------------------------------------------------------------------------

    def _ensure_filter_columns(self) -> None:
        """The filter columns and their index on this table (migration 0011 defines them and
        adds them to the tables that existed; a table created since gets them here), and which
        pgvector the server runs (iterative index scans arrived in 0.8)."""
        def columns() -> int:
            with self.pool.connection() as conn:
                row = conn.execute(
                    """SELECT count(*) FROM information_schema.columns
                       WHERE table_schema = current_schema() AND table_name = %s AND column_name = ANY(%s)""",
                    (self.table, list(FILTER_COLUMNS.values())),
                ).fetchone()
            return int(row[0]) if row else 0

        have = columns()
        with self.pool.connection() as conn:
            defined = conn.execute("SELECT to_regproc('vs_filter_columns') IS NOT NULL").fetchone()
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        if have < len(FILTER_COLUMNS) and defined and defined[0]:
            with self.pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
                conn.execute("SELECT vs_filter_columns(%s)", (self.table,))
            have = columns()
        #: Without migration 0011 (a database never migrated) filters stay on the JSONB.
        self.filter_columns = have == len(FILTER_COLUMNS)
        self.pgvector_version = version[0] if version else ""
        self.iterative_scan = _version(self.pgvector_version) >= (0, 8)
        #: How the last query was answered (benchmarks and tests read it): "hnsw", "exact",
        #: or "hnsw+exact" (HNSW came back short, the exact scan answered).
        self.last_plan = ""

    @metrics.index_call("pgvector", "query")
    def query(
        self, vector: list[float], top_k: int, filter: Mapping[str, Any] | None = None
    ) -> list[Match]:
        """The ``top_k`` nearest vectors matching ``filter``: never fewer while more match.

        Unfiltered: HNSW. Filtered by an indexed field (source, scope, access): unless the
        planner puts the filter far above :data:`EXACT_ROWS`, its rows are counted up to
        EXACT_ROWS through the GIN index; that few are ranked exactly (cost proportional to
        them, recall 1.0); more are searched by HNSW with ``ef_search`` raised for the filter's
        share of the table. Any other filter: HNSW. A
        filtered HNSW answer that comes back short is replaced by the exact scan.
        """
        flt = filter or {}
        where, params = _where(flt, columns=self.filter_columns)
        literal = vector_literal(vector)
        sql = f"""SELECT id, 1 - (embedding <=> %s::vector) AS score, metadata
                  FROM {self.table} {where}
                  ORDER BY embedding <=> %s::vector LIMIT %s"""
        args = (literal, *params, literal, top_k)
        with self.pool.connection() as conn, conn.transaction():
            if not where:
                self.last_plan = "hnsw"
                conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(1000, top_k * 4))}")
                rows = conn.execute(sql, args).fetchall()
            else:
                matching = None
                indexed = self.filter_columns and _indexed(flt)
                total = self._rows(conn)
                if indexed:
                    # The planner's estimate (column statistics) says whether counting is worth
                    # it: a filter it puts far above EXACT_ROWS goes to HNSW without a count
                    # (counting 50k matches through the index costs more than the search).
                    estimate = self._estimate(conn, where, params)
                    if estimate <= 4 * EXACT_ROWS:
                        # Bounded: at most EXACT_ROWS + 1 matching rows, found by the index.
                        conn.execute("SET LOCAL enable_seqscan = off")
                        found = conn.execute(
                            f"SELECT count(*) FROM (SELECT 1 FROM {self.table} {where} LIMIT %s) AS m",
                            (*params, EXACT_ROWS + 1),
                        ).fetchone()
                        conn.execute("SET LOCAL enable_seqscan = on")
                        matching = int(found[0]) if found else 0
                        if matching > EXACT_ROWS:
                            matching = max(matching, estimate)
                    else:
                        matching = estimate
                if matching is not None and matching <= EXACT_ROWS:
                    self.last_plan = "exact"
                    rows = self._exact(conn, sql, args, indexed=True) if matching else []
                else:
                    rows = self._filtered_hnsw(conn, sql, args, top_k, matching, total)
                    self.last_plan = "hnsw"
                    if len(rows) < top_k:
                        # HNSW gave up before the filter's matches ran out (or there are no
                        # more): the exact scan answers either way.
                        self.last_plan = "hnsw+exact"
                        rows = self._exact(conn, sql, args, indexed=bool(indexed))
        return [Match(id=r[0], score=float(r[1]), metadata=r[2]) for r in rows]

    def _rows(self, conn: Any) -> float:
        row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (self.table,)).fetchone()
        return max(float(row[0]) if row else 0.0, 0.0)

    def _estimate(self, conn: Any, where: str, params: list[Any]) -> int:
        """The planner's estimate of the rows ``where`` matches (no rows are read)."""
        plan = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {self.table} {where}", params).fetchone()
        try:
            return int(plan[0][0]["Plan"]["Plan Rows"])
        except (TypeError, KeyError, IndexError, ValueError):
            return 0

    def _filtered_hnsw(self, conn: Any, sql: str, args: tuple[Any, ...], top_k: int,
                       matching: int | None, total: float) -> list[Any]:
        """HNSW under a filter: ``ef_search`` wide enough that the candidates hold about twice
        ``top_k`` matches at the filter's share of the table (``matching`` rows, counted or
        estimated, of ``total``), capped at pgvector's 1000; on pgvector >= 0.8 the scan also
        continues past ef_search until enough match (iterative, relaxed order, then re-sorted
        by distance)."""
        ef = max(40, top_k * 4)
        if matching:
            ef = max(ef, math.ceil(2 * top_k * max(total, float(matching)) / matching))
        conn.execute(f"SET LOCAL hnsw.ef_search = {min(1000, ef)}")
        # The HNSW scan, not the planner's pick: with the filter index there, a newer planner
        # (PostgreSQL 18, pgvector 0.8) ranks a 50 % filter by reading all its rows through
        # the GIN index (0.6-1.1 s at 100k vectors, where HNSW takes 10-30 ms).
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        if not self.iterative_scan:
            return list(conn.execute(sql, args).fetchall())
        conn.execute(f"SET LOCAL hnsw.iterative_scan = {ITERATIVE_SCAN}")
        return list(conn.execute(
            f"SELECT id, score, metadata FROM ({sql}) AS relaxed ORDER BY score DESC, id", args
        ).fetchall())

    @staticmethod
    def _exact(conn: Any, sql: str, args: tuple[Any, ...], *, indexed: bool) -> list[Any]:
        """The exact answer: no HNSW (an index scan), so every matching row is ranked; with an
        indexed filter, through the GIN index (a bitmap scan), so only matching rows are read."""
        conn.execute("SET LOCAL enable_indexscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = on")
        conn.execute(f"SET LOCAL enable_seqscan = {'off' if indexed else 'on'}")
        return list(conn.execute(sql, args).fetchall())

    @metrics.index_call("pgvector", "text_query")
    def text_query(
        self, text: str, top_k: int, filter: Mapping[str, Any] | None = None
    ) -> list[Match]:
        """The ``top_k`` chunks that best match ``text`` by full-text search (any of its words;
        the whole phrase in order ranks far higher), under the same filter as :meth:`query`.
        Scores are Postgres text ranks, not cosine similarities."""
        where, params = _where(filter or {}, columns=self.filter_columns)
        where = f"{where} AND tsv @@ q.any_word" if where else "WHERE tsv @@ q.any_word"
        # The query's own lexemes (the same parser as the column), OR-ed: a chunk matching more
        # of them ranks higher; NULL (no words at all) matches nothing.
        sql = f"""WITH q AS (
                      SELECT (SELECT string_agg(quote_literal(w), ' | ')
                              FROM unnest(tsvector_to_array(to_tsvector('simple'::regconfig, %s))) AS w
                             )::tsquery AS any_word,
                             phraseto_tsquery('simple'::regconfig, %s) AS phrase)
                  SELECT id, ts_rank(tsv, q.any_word)
                             + CASE WHEN tsv @@ q.phrase THEN 1.0 ELSE 0.0 END AS score, metadata
                  FROM {self.table}, q {where}
                  ORDER BY score DESC, id LIMIT %s"""
        with self.pool.connection() as conn:
            rows = conn.execute(sql, (text, text, *params, top_k)).fetchall()
        return [Match(id=r[0], score=float(r[1]), metadata=r[2]) for r in rows]

    @metrics.index_call("pgvector", "hybrid_query")
    def hybrid_query(
        self, vector: list[float], text: str, top_k: int, filter: Mapping[str, Any] | None = None,
        *, depth: int | None = None,
    ) -> list[Match]:
        """Vector similarity and full-text search fused by reciprocal rank (k = 60): each list
        contributes 1 / (60 + rank). A chunk both lists rank high comes first; an exact
        identifier that embeddings blur still surfaces through the text list."""
        depth = depth or max(top_k, 50)
        by_vector = self.query(vector, depth, filter)
        by_text = self.text_query(text, depth, filter)
        fused: dict[str, float] = {}
        found: dict[str, Match] = {}
        for ranked in (by_vector, by_text):
            for rank, match in enumerate(ranked, start=1):
                fused[match.id] = fused.get(match.id, 0.0) + 1.0 / (RRF_K + rank)
                found.setdefault(match.id, match)
        order = sorted(fused, key=lambda vid: (-fused[vid], vid))[:top_k]
        return [Match(id=vid, score=fused[vid], metadata=found[vid].metadata) for vid in order]

    @metrics.index_call("pgvector", "list_ids")
    def list_ids(self, prefix: str) -> list[str]:
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT id FROM {self.table} WHERE id LIKE %s ORDER BY id COLLATE \"C\"", (like,)
            ).fetchall()
        return [r[0] for r in rows]

    @metrics.index_call("pgvector", "count")
    def count(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()
        return int(row[0]) if row else 0

    # --- bulk loads: the HNSW index deferred, then rebuilt -------------------------------

    def bulk_progress(self, owner: str, listed: int) -> bool:
        """A bulk load (``owner``: one per backfill run) has listed ``listed`` documents so far.
        The first call notes the index's size; the HNSW index is deferred once the load is
        large next to it (:data:`BULK_EMPTY`, :data:`BULK_RATIO`). Renews the lease once
        deferred. True while this load defers the index."""
        if owner not in self._bulk:
            # A resumed load (its process died) takes its lease back if it is still there.
            self._bulk[owner] = None if self._holds(owner) else self.count()
        base = self._bulk[owner]
        if base is None:
            self._renew(owner)
            return True
        if base >= BULK_EMPTY and listed <= BULK_RATIO * base:
            return False
        self._defer(owner)
        self._bulk[owner] = None
        return True

    def bulk_finished(self, owner: str) -> None:
        """The load's listing is over (or failed): the index comes back once its writes stop."""
        if self._bulk.pop(owner, 0) is None:
            with self.pool.connection() as conn:
                conn.execute(
                    """UPDATE vector_bulk_loads SET listing_done = true,
                           lease_until = now() + make_interval(secs => %s)
                       WHERE index_table = %s AND owner = %s""",
                    (QUIET_S, self.table, owner),
                )
            self._watch()

    def _defer(self, owner: str) -> None:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            # The table lock first: a writer holds the table and then touches the lease row, so
            # taking them the other way round could deadlock with it.
            conn.execute(f"DROP INDEX IF EXISTS {self.hnsw}")
            conn.execute(
                """INSERT INTO vector_bulk_loads (index_table, owner, lease_until)
                   VALUES (%s, %s, now() + make_interval(secs => %s))
                   ON CONFLICT (index_table, owner) DO UPDATE
                   SET lease_until = excluded.lease_until, listing_done = false""",
                (self.table, owner, LEASE_S),
            )
        log.info("HNSW index deferred for a bulk load", extra={"table": self.table, "owner": owner})
        self._watch()

    def _holds(self, owner: str) -> bool:
        with self.pool.connection() as conn:
            row = conn.execute(
                """SELECT EXISTS (SELECT 1 FROM vector_bulk_loads
                                  WHERE index_table = %s AND owner = %s AND lease_until > now())""",
                (self.table, owner),
            ).fetchone()
        return bool(row and row[0])

    def _renew(self, owner: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                """UPDATE vector_bulk_loads SET lease_until = now() + make_interval(secs => %s)
                   WHERE index_table = %s AND owner = %s""",
                (LEASE_S, self.table, owner),
            )

    def _hnsw_present(self) -> bool:
        """Whether the HNSW index exists and is valid (a crashed concurrent build leaves an
        invalid one behind, which searches ignore)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                """SELECT i.indisvalid FROM pg_index i
                   WHERE i.indexrelid = to_regclass(%s)""",
                (self.hnsw,),
            ).fetchone()
        return bool(row and row[0])

    def settle(self) -> bool:
        """Rebuild the HNSW index if it is missing and no bulk load holds it off. True when the
        index is there afterwards (built here or elsewhere), False while it is deferred or
        another process is building it."""
        if self._hnsw_present():
            return True
        with self.pool.connection() as conn:
            # One builder at a time (a lock of its own, so starting processes do not wait on it).
            got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                               (self.table + ":build",)).fetchone()
            if not (got and got[0]):
                return False
            try:
                if self._leased(conn):
                    return False
                self._build(conn)
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (self.table + ":build",))
        return True

    def _build(self, conn: Any) -> None:
        conn.execute("DELETE FROM vector_bulk_loads WHERE index_table = %s AND lease_until <= now()",
                     (self.table,))
        row = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                           (self.hnsw,)).fetchone()
        if row and row[0]:
            return
        if row:  # an invalid leftover of a build that died: start again
            conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {self.hnsw}")
        conn.execute(f"SET maintenance_work_mem = '{BUILD_MEMORY}'")
        # pgvector builds HNSW in parallel since 0.6.0 (the embedded server ships 0.6.2): the
        # leader plus one worker per spare core. The vectors live in TOAST, so the heap looks
        # small and Postgres would plan no worker at all without the size floor lifted.
        conn.execute(f"SET max_parallel_maintenance_workers = {max(0, (os.cpu_count() or 1) - 1)}")
        conn.execute("SET min_parallel_table_scan_size = 0")
        try:
            conn.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {self.hnsw} ON {self.table} "
                "USING hnsw (embedding vector_cosine_ops)"
            )
        finally:
            conn.execute("RESET maintenance_work_mem")
            conn.execute("RESET max_parallel_maintenance_workers")
            conn.execute("RESET min_parallel_table_scan_size")
        log.info("HNSW index built", extra={"table": self.table})

    def _watch(self) -> None:
        """Start this process's watcher (once): it rebuilds the index when the leases lapse."""
        with self._watch_lock:
            if self._closed.is_set() or (self._watcher is not None and self._watcher.is_alive()):
                return
            self._watcher = threading.Thread(target=self._watch_loop, name=f"{self.table}-hnsw",
                                             daemon=True)
            self._watcher.start()

    def _watch_loop(self) -> None:
        while not self._closed.wait(POLL_S):
            try:
                if self.settle() and not self._live_lease():
                    return
            except Exception:  # noqa: BLE001 - Postgres away: try again on the next tick
                if self._closed.is_set() or self.pool.closed:
                    return
                log.warning("could not check the deferred HNSW index", exc_info=True)

    def _live_lease(self) -> bool:
        with self.pool.connection() as conn:
            return self._leased(conn)

    def close(self) -> None:
        self._closed.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            # Not for a whole build: one cut short leaves an INVALID index, which the next
            # watcher (in this or any process) drops and builds again.
            watcher.join(timeout=5)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _where(filter: Mapping[str, Any], *, columns: bool = False) -> tuple[str, list[Any]]:
    """A Pinecone-language filter as SQL over the JSONB metadata (and, with ``columns``, over
    the filter columns of migration 0011 where a clause names one of their fields).

    Supported: field equality (``{"f": v}``, ``$eq``), ``$in``, ``$gt``/``$gte``/``$lt``/``$lte``
    on numbers, and ``$and``/``$or`` of such clauses. As in Pinecone, a list field matches
    ``$eq``/``$in`` when any of its elements does.
    """
    sql, params = _clause(filter, columns)
    return ("WHERE " + sql) if filter else "", params


_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _column_values(key: str, op: str, arg: Any) -> list[str] | None:
    """The string values of an ``$eq``/``$in`` clause on a filter column, or None when the
    clause is not one (its field has no column, or a value is not a string)."""
    if key not in FILTER_COLUMNS or op not in ("$eq", "$in"):
        return None
    values = [arg] if op == "$eq" else arg
    if not isinstance(values, list | tuple) or not values or not all(isinstance(v, str) for v in values):
        return None
    return list(values)


def _indexed(filter: Mapping[str, Any]) -> bool:
    """Whether the GIN index over the filter columns finds every row ``filter`` can match: a
    column clause does; an AND does when one of its parts does; an OR when all of them do."""
    found = False
    for key, condition in filter.items():
        if key == "$and":
            found = found or any(_indexed(part) for part in condition)
        elif key == "$or":
            found = found or all(_indexed(part) for part in condition)
        elif not key.startswith("$"):
            ops = condition if isinstance(condition, Mapping) else {"$eq": condition}
            found = found or any(_column_values(key, op, arg) is not None for op, arg in ops.items())
    return found


def _clause(filter: Mapping[str, Any], columns: bool = False) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for key, condition in filter.items():
        if key in ("$and", "$or"):
            if not isinstance(condition, list) or not condition:
                raise ValueError(f"{key} needs a non-empty list of filters")
            parts = [_clause(part, columns) for part in condition]
            joiner = " AND " if key == "$and" else " OR "
            clauses.append("(" + joiner.join(sql for sql, _ in parts) + ")")
            params.extend(p for _, ps in parts for p in ps)
            continue
        if key.startswith("$"):
            raise ValueError(f"unsupported filter operator {key!r}")
        ops = condition if isinstance(condition, Mapping) else {"$eq": condition}
        for op, arg in ops.items():
            if columns and (strings := _column_values(key, op, arg)) is not None:
                # Exactly the JSONB clause below for string values: the column holds the
                # field's string values (a string, or a list's string elements).
                clauses.append(f"{FILTER_COLUMNS[key]} && %s::text[]")
                params.append(strings)
            elif op in ("$eq", "$in"):
                values = [arg] if op == "$eq" else list(arg)
                if not values:
                    clauses.append("false")
                    continue
                ors = []
                for value in values:
                    # A scalar, or a list holding it (JSONB containment: an array never contains
                    # a bare scalar below the top level, so both shapes are asked for).
                    ors.append("metadata @> %s::jsonb OR metadata @> %s::jsonb")
                    params += [json.dumps({key: value}), json.dumps({key: [value]})]
                clauses.append("(" + " OR ".join(ors) + ")")
            elif op in _RANGE:
                if isinstance(arg, bool) or not isinstance(arg, int | float):
                    raise ValueError(f"{op} on {key!r} needs a number")
                clauses.append(
                    f"(jsonb_typeof(metadata -> %s) = 'number' AND (metadata ->> %s)::float8 {_RANGE[op]} %s)"
                )
                params += [key, key, float(arg)]
            else:
                raise ValueError(f"unsupported filter on {key!r}: {op!r}")
    return (" AND ".join(clauses) if clauses else "true"), params
